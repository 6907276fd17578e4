"""End to end through the `lamp` command: train, predict, eval, params, export, and PEFT loading the export."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch


def lamp(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "lamp", *args], capture_output=True, text=True,
                          env={**os.environ}, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"lamp {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def trained(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    data = tmp_path_factory.mktemp("data") / "reviews.jsonl"
    rows = [{"review": f"{w} {i}", "verdict": v} for i in range(6)
            for w, v in (("great film", "good"), ("awful film", "bad"), ("loved it", "good"), ("hated it", "bad"))]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path_factory.mktemp("run") / "artifact"
    proc = lamp("train", "--model", str(tiny_llama_dir), "--train", str(data), "--text-column", "review",
                "--label-column", "verdict", "--method", "lamp", "--length", "8", "--rank", "2", "--pool", "4",
                "--steps", "4", "--batch-size", "4", "--eval-every", "2", "--device", "cpu", "--out", str(out),
                "--json")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return out, summary


def test_train_json_summary_and_files(trained: tuple[Path, dict[str, object]]) -> None:
    out, summary = trained
    for key in ("trainable_params", "steps", "train_seconds", "examples_per_second", "peak_memory_mb", "metrics",
                "artifact"):
        assert key in summary, key
    assert summary["steps"] == 4
    assert summary["trainable_params"] == 8 * 2 + 2 + 2 * 32
    assert summary["artifact"] == str(out)
    assert isinstance(summary["metrics"], dict) and "accuracy" in summary["metrics"]
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "checkpoint.pt", "history.jsonl", "init_params.safetensors", "lamp_artifact.json", "prompt.safetensors",
        "prompt_params.safetensors", "result.json", "snapshots"])
    snapshots = sorted(p.name for p in (out / "snapshots").iterdir())
    assert snapshots == ["step-000002.safetensors", "step-000004.safetensors"]  # one per evaluation


def test_train_skips_a_stray_empty_row_and_says_so_and_strict_refuses(tiny_llama_dir: Path, tmp_path: Path) -> None:
    rows = [{"review": f"{w} {i}", "verdict": v} for i in range(6)
            for w, v in (("great film", "good"), ("awful film", "bad"), ("loved it", "good"), ("hated it", "bad"))]
    rows[2]["review"] = "  "
    data = tmp_path / "reviews.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    flags = ["--model", str(tiny_llama_dir), "--train", str(data), "--text-column", "review", "--label-column",
             "verdict", "--length", "8", "--rank", "2", "--steps", "2", "--batch-size", "4", "--device", "cpu",
             "--no-generate-eval"]
    proc = lamp("train", *flags, "--out", str(tmp_path / "run"), "--json")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["data"]["skipped"] == [{"file": "reviews.jsonl", "rows": 24, "count": 1, "first": ["row 3"],
                                           "why": "an empty input or label"}]
    assert "warning: reviews.jsonl: 1 of 24 rows skipped (an empty input or label): row 3" in proc.stderr
    refused = lamp("train", *flags, "--out", str(tmp_path / "strict"), "--strict", check=False)
    assert refused.returncode == 2 and "row 3: empty column 'review'" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_predict_answers_with_label_scores(trained: tuple[Path, dict[str, object]]) -> None:
    out, _ = trained
    proc = lamp("predict", "--artifact", str(out), "--text", "great film", "--text", "hated it", "--json",
                "--device", "cpu")
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["answer"] in ("bad", "good")
        assert set(row["scores"]) == {"bad", "good"}
        assert math.isclose(sum(row["scores"].values()), 1.0, rel_tol=1e-6)
        assert row["answer"] == max(row["scores"], key=row["scores"].get)
        assert row["input"] in ("great film", "hated it")  # a user file's template is the text column alone


def test_params_json() -> None:
    proc = lamp("params", "--hidden-size", "4096", "--length", "10000", "--rank", "8", "--json")
    # residual-pt: l*d + (d*m + m) + (m*d + d) + 2d with m = 400; ulpt: l*r + 2d; dept: l*d + s*r + r*d, s = 256
    assert json.loads(proc.stdout) == {"lamp": 112_776, "prompt-tuning": 40_960_000, "dpt": 112_768,
                                       "residual-pt": 44_249_488, "ulpt": 88_192, "dept": 40_994_816}
    small = json.loads(lamp("params", "--hidden-size", "576", "--length", "20", "--rank", "4", "--json").stdout)
    assert small == {"lamp": 2_388, "prompt-tuning": 11_520, "dpt": 2_384, "residual-pt": 474_448, "ulpt": 1_232,
                     "dept": 14_848}


def test_bad_settings_exit_with_a_message_not_a_traceback(tiny_llama_dir: Path) -> None:
    proc = lamp("train", "--model", str(tiny_llama_dir), "--length", "10", "--pool", "3", check=False)
    assert proc.returncode == 2
    assert "pool=3 does not divide length=10" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = lamp("predict", "--artifact", "/nonexistent", "--text", "x", check=False)
    assert proc.returncode == 2 and "not a LAMP Studio artifact" in proc.stderr


def _peft_matches_predict(backbone_dir: Path, artifact: Path, export_dir: Path, text: str) -> None:
    """PEFT loading our export gives the same label scores and the same greedy answer as our own predict."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from core.inference import Predictor

    pred = Predictor.load(artifact, device="cpu")
    ours = pred.predict([text], max_new_tokens=4)[0]
    seq2seq = pred.backbone.family == "seq2seq"
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    peft_model = PeftModel.from_pretrained(auto.from_pretrained(backbone_dir), str(export_dir)).eval()
    codec, words = pred.codec, pred.label_words
    assert words is not None
    src = torch.tensor([codec.source(text)])
    logps = []
    with torch.no_grad():
        for word in words:
            tgt = torch.tensor([codec.target(word, eos=False)])
            if seq2seq:
                logits = peft_model(input_ids=src, attention_mask=torch.ones_like(src), labels=tgt).logits[0]
                logp = torch.log_softmax(logits, -1)[torch.arange(tgt.shape[1]), tgt[0]].sum()
            else:
                ids = torch.cat([src, tgt], dim=1)
                logits = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
                n = logits.shape[0] - ids.shape[1]  # PEFT returns the virtual tokens' positions too
                pos = torch.arange(src.shape[1] - 1, ids.shape[1] - 1) + n
                logp = torch.log_softmax(logits[pos], -1)[torch.arange(tgt.shape[1]), tgt[0]].sum()
            logps.append(logp)
        probs = torch.softmax(torch.stack(logps), 0)
        torch.testing.assert_close(probs, torch.tensor([ours.scores[w] for w in words]), rtol=1e-4, atol=1e-5)
        new = _peft_greedy(peft_model, src, seq2seq, steps=4)
    assert pred.backbone.tokenizer.decode(new, skip_special_tokens=True).strip() == ours.generated


def _peft_greedy(peft_model: Any, src: torch.Tensor, seq2seq: bool, steps: int) -> list[int]:
    """Greedy decoding through the PEFT model's forward, no cache: each step re-reads the whole sequence.

    Not `peft_model.generate`: with peft 0.21.2 and transformers 5.24 its cached decoding of a prompt-tuning model
    leaves this uncached greedy path after the first token (our own decoding agrees with the uncached path)."""
    out: list[int] = []
    eos = peft_model.base_model.config.eos_token_id  # our decoding stops there too
    if seq2seq:
        start = peft_model.base_model.config.decoder_start_token_id
        dec = torch.tensor([[start]])
        for _ in range(steps):
            logits = peft_model(input_ids=src, attention_mask=torch.ones_like(src), decoder_input_ids=dec).logits
            token = int(logits[0, -1].argmax())
            out.append(token)
            if token == eos:
                break
            dec = torch.cat([dec, torch.tensor([[token]])], dim=1)
        return out
    ids = src
    for _ in range(steps):
        token = int(peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax())
        out.append(token)
        if token == eos:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


@pytest.mark.parametrize(("method", "knobs"), [("lamp", {"length": 8, "rank": 4, "pool": 2}),
                                               ("residual-pt", {"length": 4, "bottleneck": 8}),
                                               ("ulpt", {"length": 4, "rank": 2})])
@pytest.mark.parametrize("family", ["llama", "t5"])
def test_peft_export_loads_and_matches_predict(family: str, method: str, knobs: dict[str, int],
                                               tiny_dirs: dict[str, Path], sentiment_csv: Path,
                                               tmp_path: Path) -> None:
    """Every method whose prompt PEFT can hold: LAMP's pooled P', Residual PT's and ULPT's folded prompts."""
    from core.methods import method_config
    from core.spec import DataConfig, ModelConfig, RunSpec, TrainConfig
    from core.train import fit

    spec = RunSpec(model=ModelConfig(str(tiny_dirs[family])), method=method_config(method, **knobs),
                   data=DataConfig(task=None, train_file=str(sentiment_csv), text_column="review",
                                   label_column="verdict"),
                   train=TrainConfig(steps=3, batch_size=4, lr=0.05, device="cpu", final_eval=False))
    fit(spec, tmp_path / "art")
    lamp("export", "--artifact", str(tmp_path / "art"), "--format", "peft", "--out", str(tmp_path / "peft"))
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["num_virtual_tokens"] == 4 and config["token_dim"] == 32
    assert config["num_transformer_submodules"] == 1 and config["peft_type"] == "PROMPT_TUNING"
    _peft_matches_predict(tiny_dirs[family], tmp_path / "art", tmp_path / "peft", "a joy to watch 1")
