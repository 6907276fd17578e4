"""Inside a tuned prompt: nearest tokens, norms, evaluation snapshots and Q over training, C and drift, `lamp inspect
--json`, and the Jobs tab's section on a real job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from safetensors.torch import load_file
from test_app_handlers import _store
from test_jobs_support import tiny_spec

from core.artifact import load_artifact, save_artifact, snapshot_files
from core.errors import ArtifactError, Cancelled
from core.inspection import inspect_prompt, load_vocabulary, nearest_tokens, norm_stats
from core.methods import DptConfig, LampConfig, PromptTuningConfig, method_config, prompt_module
from core.spec import DataConfig, ModelConfig, RunSpec, TrainConfig, spec_to_dict
from core.train import fit
from lamp.cli import main


class Tokens:
    """A tokenizer stand-in: token i decodes to "t<i>"; ids 0 and 1 are special."""

    all_special_ids: ClassVar[list[int]] = [0, 1]

    def decode(self, ids: list[int]) -> str:
        return f"t{ids[0]}"


def _table(vocab: int = 60, hidden: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(vocab, hidden, generator=torch.Generator().manual_seed(seed))


def _spec(model: Path, csv: Path, method: str = "lamp", **train: object) -> RunSpec:
    knobs = {"lamp": {"length": 8, "rank": 4, "pool": 2}, "prompt-tuning": {"length": 4},
             "dpt": {"length": 4, "rank": 2}}[method]
    settings = {"steps": 6, "batch_size": 4, "eval_every": 3, "checkpoint_every": 2, "lr": 0.05, "device": "cpu",
                "generate_eval": False, **train}
    return RunSpec(model=ModelConfig(str(model)), method=method_config(method, **knobs),
                   data=DataConfig(task=None, train_file=str(csv), text_column="review", label_column="verdict",
                                   max_eval_examples=8, max_test_examples=8),
                   train=TrainConfig(**settings))  # type: ignore[arg-type]


# ---- the pieces, on hand-made prompts ----

def test_a_prompt_made_of_token_embeddings_finds_those_tokens() -> None:
    table = _table()
    picks = [3, 17, 42, 59]
    vectors = table[picks] * torch.tensor([[1.0], [2.5], [0.3], [7.0]])  # cosine ignores the scale
    found = nearest_tokens(vectors, table, Tokens(), k=3)
    assert [row[0].token_id for row in found] == picks
    assert [row[0].token for row in found] == [f"t{i}" for i in picks]
    for row in found:
        assert row[0].cosine == pytest.approx(1.0, abs=1e-9)
        assert row[0].cosine >= row[1].cosine >= row[2].cosine
    # The runner-up is the true second best by cosine.
    cos = torch.nn.functional.normalize(table, dim=-1) @ torch.nn.functional.normalize(table[17], dim=0)
    cos[17] = -2
    assert found[1][1].token_id == int(cos.argmax())
    # Skipped ids are never picked, even when they match exactly.
    assert nearest_tokens(table[[3]], table, Tokens(), k=2, skip=[3])[0][0].token_id != 3


def test_norm_statistics() -> None:
    stats = norm_stats(torch.arange(1, 101, dtype=torch.float32))
    assert stats["mean"] == pytest.approx(50.5)
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p5"] == pytest.approx(5.95)
    assert stats["p95"] == pytest.approx(95.05)


def _hand_artifact(tmp_path: Path, config: LampConfig | PromptTuningConfig | DptConfig,
                   table: torch.Tensor) -> tuple[Path, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """An artifact written directly: init params from the table, trained = init + a known change."""
    from core.methods import build_prompt

    module, ids = build_prompt(config, table, list(range(2, 60)), torch.Generator().manual_seed(0))
    init = {k: v.detach().clone() for k, v in module.state_dict().items()}
    trained = {k: v + 0.1 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) for k, v in init.items()}
    with torch.no_grad():
        pooled = prompt_module(config, trained)()
    spec = RunSpec(method=config)
    manifest: dict[str, Any] = {
                "spec": spec_to_dict(spec), "model": {"id": "hand", "source": "hand", "family": "causal",
                                                      "hidden_size": table.shape[1], "hub_id": "hand"},
                "task": {"name": "t", "label_words": None, "template": None, "answer_cue": "", "metrics": [],
                         "split_note": ""},
                "init_token_ids": ids, "init_from": None, "steps": 4, "best_step": 4, "metrics": {}}
    save_artifact(tmp_path, manifest, trained, init, pooled)
    return tmp_path, init, trained


@pytest.mark.parametrize("config", [LampConfig(length=8, rank=3, pool=2), PromptTuningConfig(length=6),
                                    DptConfig(length=6, rank=2)], ids=lambda c: c.name)
def test_dense_prompt_norms_and_drift(config: LampConfig | PromptTuningConfig | DptConfig, tmp_path: Path) -> None:
    table = _table()
    path, init, trained = _hand_artifact(tmp_path, config, table)
    ins = inspect_prompt(load_artifact(path), table, Tokens(), list(range(2, 60)), top_k=4)
    if isinstance(config, LampConfig):
        u, q, v = trained["u"], trained["q"], trained["v"]
        dense = (u * q) @ (q[:, None] * v.T)
        u0, q0, v0 = init["u"], init["q"], init["v"]
        dense0 = (u0 * q0) @ (q0[:, None] * v0.T)
        pooled, pooled0 = (c.view(4, 2, 8).mean(1) for c in (dense, dense0))
    elif isinstance(config, DptConfig):
        dense, dense0 = trained["a"] @ trained["b"], init["a"] @ init["b"]
        pooled, pooled0 = dense, dense0
    else:
        dense, dense0 = trained["prompt"], init["prompt"]
        pooled, pooled0 = dense, dense0
    assert ins.dense.shape == (config.length, 8)
    torch.testing.assert_close(ins.dense, dense)
    assert ins.drift_dense == pytest.approx(float((dense - dense0).norm() / dense0.norm()), rel=1e-5)
    assert ins.drift_pooled == pytest.approx(float((pooled - pooled0).norm() / pooled0.norm()), rel=1e-5)
    assert ins.history[0].label == "init" and ins.history[0].drift_dense == 0 and ins.history[0].drift_pooled == 0
    assert ins.history[-1].drift_dense == pytest.approx(ins.drift_dense)
    torch.testing.assert_close(torch.tensor(ins.norms_trained), pooled.norm(dim=-1))
    torch.testing.assert_close(torch.tensor(ins.norms_init), pooled0.norm(dim=-1))
    common = table[2:60].norm(dim=-1)
    assert ins.vocab_norms["common"]["mean"] == pytest.approx(float(common.mean()), rel=1e-5)
    assert ins.vocab_norms["all"]["mean"] == pytest.approx(float(table.norm(dim=-1).mean()), rel=1e-5)
    assert ins.norm_ratio == pytest.approx(float(pooled.norm(dim=-1).mean() / common.mean()), rel=1e-5)
    assert len(ins.nearest_trained) == len(ins.nearest_init) == pooled.shape[0]
    assert all(len(row) == 4 and all(n.token_id not in (0, 1) for n in row) for row in ins.nearest_trained)
    assert (ins.history[0].q is not None) == isinstance(config, LampConfig)


def test_prompt_tuning_init_vectors_are_their_own_nearest_tokens(tmp_path: Path) -> None:
    table = _table()
    path, _, _ = _hand_artifact(tmp_path, PromptTuningConfig(length=6), table)
    artifact = load_artifact(path)
    ins = inspect_prompt(artifact, table, Tokens(), list(range(2, 60)), top_k=2)
    assert [row[0].token_id for row in ins.nearest_init] == artifact.manifest["init_token_ids"]


# ---- snapshots written by fit, Q read from them, resume ----

def test_fit_snapshots_every_evaluation_and_q_history_reads_them(tiny_llama_dir: Path, sentiment_csv: Path,
                                                                 tmp_path: Path) -> None:
    result = fit(_spec(tiny_llama_dir, sentiment_csv, steps=7, eval_every=3), tmp_path)
    out = Path(result.artifact)
    assert [step for step, _ in snapshot_files(out)] == [3, 6, 7]  # each eval, and the last step
    snap = load_file(str(out / "snapshots" / "step-000003.safetensors"))
    assert set(snap) == {"u", "q", "v"} and (out / "snapshots" / "step-000003.safetensors").stat().st_size < 4096
    table, tokenizer = load_vocabulary(str(tiny_llama_dir))
    from core.vocab import common_token_ids

    ins = inspect_prompt(load_artifact(out), table, tokenizer, common_token_ids(tokenizer))
    assert [s.step for s in ins.history] == [0, 3, 6, 7, result.best_step]
    init = load_file(str(out / "init_params.safetensors"))
    assert ins.history[0].q == init["q"].tolist()
    assert ins.history[1].q == snap["q"].tolist()
    assert ins.history[-1].q == load_file(str(out / "prompt_params.safetensors"))["q"].tolist()
    kept = next(s for s in ins.history[1:-1] if s.step == result.best_step)  # the kept prompt is a snapshot
    assert kept.q == ins.history[-1].q and kept.drift_dense == ins.history[-1].drift_dense
    assert all(s.drift_dense > 0 for s in ins.history[1:])
    pooled = load_artifact(out).prompt()
    torch.testing.assert_close(torch.tensor(ins.norms_trained), pooled.norm(dim=-1))


def test_resume_drops_snapshots_after_the_checkpoint(tiny_llama_dir: Path, sentiment_csv: Path,
                                                     tmp_path: Path) -> None:
    spec = _spec(tiny_llama_dir, sentiment_csv, steps=10, checkpoint_every=3, eval_every=5, batch_size=8)
    whole = fit(spec, tmp_path / "whole")
    calls = {"n": 0}

    def stop_after_seven() -> bool:
        calls["n"] += 1
        return calls["n"] > 7

    split = tmp_path / "split"
    with pytest.raises(Cancelled):
        fit(spec, split, should_stop=stop_after_seven)  # checkpoint at step 7, one snapshot (step 5)
    assert [s for s, _ in snapshot_files(split)] == [5]
    # A killed attempt may have evaluated past its checkpoint: that snapshot belongs to steps the resume redoes.
    stale = split / "snapshots" / "step-000009.safetensors"
    stale.write_bytes((split / "snapshots" / "step-000005.safetensors").read_bytes())
    resumed = fit(spec, split)
    assert resumed.resumed_from == 7
    assert [s for s, _ in snapshot_files(split)] == [s for s, _ in snapshot_files(Path(whole.artifact))] == [5, 10]
    for (_, a), (_, b) in zip(load_artifact(split).snapshots(), load_artifact(whole.artifact).snapshots(),
                              strict=True):
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # A fresh run in a directory without a checkpoint starts its snapshots over.
    (split / "checkpoint.pt").unlink()
    stale.write_bytes(b"not a snapshot")
    fit(_spec(tiny_llama_dir, sentiment_csv, steps=4, eval_every=4), split)
    assert [s for s, _ in snapshot_files(split)] == [4]


# ---- the vocabulary, the command line ----

@pytest.mark.parametrize("family", ["llama", "t5"])
def test_the_embedding_table_is_read_alone_from_the_weights_file(family: str, tiny_dirs: dict[str, Path]) -> None:
    from core.backbone import load_backbone

    table, tokenizer = load_vocabulary(str(tiny_dirs[family]))
    backbone = load_backbone(ModelConfig(str(tiny_dirs[family])), torch.device("cpu"))
    torch.testing.assert_close(table, backbone.embedding_table(), rtol=0, atol=0)
    assert len(tokenizer) == len(backbone.tokenizer)


@pytest.fixture(scope="module")
def trained(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    csv = tmp_path_factory.mktemp("data") / "reviews.csv"
    csv.write_text("review,verdict\n" + "".join(f"great {i},good\nawful {i},bad\n" for i in range(12)))
    return Path(fit(_spec(tiny_llama_dir, csv), tmp_path_factory.mktemp("run")).artifact)


def test_lamp_inspect_json(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--artifact", str(trained), "--top-k", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"]["name"] == "lamp" and data["dense_shape"] == [8, 32] and data["top_k"] == 3
    assert len(data["nearest_trained"]) == len(data["norms_trained"]) == 4  # l/p pooled vectors
    assert all(len(row) == 3 for row in data["nearest_init"])
    assert [s["step"] for s in data["history"]][:3] == [0, 3, 6]
    assert data["history"][0]["drift_dense"] == 0 and len(data["history"][0]["q"]) == 4
    assert data["origin"] is None
    assert main(["inspect", "--artifact", str(trained)]) == 0
    text = capsys.readouterr().out
    assert "nearest tokens" in text and "drift from init" in text and "x the common tokens' mean" in text
    assert main(["inspect", "--artifact", str(trained), "--top-k", "0"]) == 2
    assert main(["inspect", "--artifact", str(trained.parent / "nothing")]) == 2
    assert "not a LAMP Studio artifact" in capsys.readouterr().err


def test_inspect_refuses_a_vocabulary_of_another_width(trained: Path, tmp_path: Path) -> None:
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="width 32"):
        inspect_prompt(load_artifact(trained), _table(hidden=16), Tokens(), list(range(2, 60)))


# ---- the Jobs tab's section, on a real job ----

@pytest.fixture()
def store_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from _store(tmp_path, monkeypatch, "sqlite")


def test_jobs_tab_inside_the_prompt(store_env: Path, tiny_llama_dir: Path, sentiment_csv: Path) -> None:
    from app import inspection
    from jobs.queue import execute_next
    from jobs.tasks import submit

    job_id = submit(tiny_spec(tiny_llama_dir, sentiment_csv))
    queued = submit(tiny_spec(tiny_llama_dir, sentiment_csv))
    assert execute_next()
    summary, frame, norms, q, heat, drift = inspection.inside_prompt(job_id, top_k=2)
    assert "lamp" in summary and "x** the common tokens' mean" in summary
    assert list(frame.columns) == inspection.NEAREST_COLUMNS and len(frame) == 4
    assert frame["Nearest trained"].iloc[0].count("'") == 4  # two quoted tokens
    assert [t.name for t in norms.data][:2] == ["init", "trained"] and len(norms.data[1].y) == 4
    assert [t.name for t in q.data] == ["Q1", "Q2", "Q3", "Q4", "kept"]
    assert list(q.data[0].x) == [0, 3, 6]
    assert heat.data[0].z.shape == (8, 32)
    assert list(drift.data[0].x) == [0, 3, 6] and drift.data[0].y[0] == 0
    # Cached: the same object until the artifact changes.
    assert inspection.inspect_job(job_id, 2) is inspection.inspect_job(job_id, 2)
    with pytest.raises(ArtifactError, match="has not succeeded"):
        inspection.inside_prompt(queued)


def test_q_figure_says_why_it_is_empty_for_other_methods(tmp_path: Path) -> None:
    from app import inspection

    path, _, _ = _hand_artifact(tmp_path, DptConfig(length=6, rank=2), _table())
    ins = inspect_prompt(load_artifact(path), _table(), Tokens(), list(range(2, 60)))
    fig = inspection.q_figure(ins)
    assert not fig.data and "no Q" in fig.layout.annotations[0].text
    assert len(inspection.drift_figure(ins).data) == 3  # no snapshots: init -> trained, and the kept marker
    assert inspection.dense_heatmap(ins).data[0].z.shape == (6, 8)

