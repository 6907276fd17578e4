"""The training loop on tiny random models: every method x family, resume, repeatability, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.errors import Cancelled, ConfigError, TrainingDiverged
from core.events import Event
from core.methods import method_config
from core.spec import (
    RECIPES,
    DataConfig,
    ModelConfig,
    RunSpec,
    TrainConfig,
    spec_from_dict,
    spec_to_dict,
    validate_spec,
)
from core.train import fit, lr_at


def _spec(model: Path, csv: Path, method: str = "lamp", **train: object) -> RunSpec:
    knobs = {"lamp": {"length": 8, "rank": 4, "pool": 2}, "prompt-tuning": {"length": 4},
             "dpt": {"length": 4, "rank": 2}, "residual-pt": {"length": 4, "bottleneck": 8},
             "ulpt": {"length": 4, "rank": 2}, "dept": {"length": 4, "rank": 2, "positions": 16}}[method]
    settings = {"steps": 6, "batch_size": 4, "eval_every": 3, "checkpoint_every": 2, "lr": 0.05, "device": "cpu",
                "generate_eval": True, **train}
    return RunSpec(model=ModelConfig(str(model)), method=method_config(method, **knobs),
                   data=DataConfig(task=None, train_file=str(csv), text_column="review", label_column="verdict"),
                   train=TrainConfig(**settings))  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["lamp", "prompt-tuning", "dpt", "residual-pt", "ulpt", "dept"])
@pytest.mark.parametrize("family", ["llama", "t5"])
def test_fit_writes_a_complete_artifact(family: str, method: str, tiny_dirs: dict[str, Path], sentiment_csv: Path,
                                        tmp_path: Path) -> None:
    events: list[Event] = []
    spec = _spec(tiny_dirs[family], sentiment_csv, method)
    result = fit(spec, tmp_path / "run", on_event=events.append)
    out = Path(result.artifact)
    for name in ("lamp_artifact.json", "prompt.safetensors", "prompt_params.safetensors", "init_params.safetensors",
                 "history.jsonl", "result.json", "checkpoint.pt"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "lamp_artifact.json").read_text())
    assert manifest["task"]["label_words"] == ["bad", "good"]
    assert manifest["model"]["family"] == ("seq2seq" if family == "t5" else "causal")
    assert manifest["trainable_params"] == result.trainable_params == spec.method.trainable_params(32)
    prompt = load_file(str(out / "prompt.safetensors"))["prompt"]
    assert prompt.shape == (spec.method.prompt_tokens, 32)
    text_start = RECIPES[method].prompt_init == "text"  # a text start records its l ids; DPT's and ULPT's random
    expected = spec.method.length if text_start or method not in ("dpt", "ulpt") else 0  # starts none
    assert len(manifest["init_token_ids"]) == expected
    kinds = [e.kind for e in events if e.kind != "phase"]  # phases: test_phases_say_what_the_run_is_doing
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("step") == 6 and kinds.count("eval") == 2 and kinds.count("test") == 1
    step = next(e for e in events if e.kind == "step")
    assert {"loss", "lr", "examples_per_second", "peak_memory_mb", "prompt_norm", "vocab_norm",
            "norm_ratio"} <= set(step.data)
    assert set(result.metrics) == {"accuracy", "gen_accuracy"}
    assert result.scoring == {"accuracy": "rank", "gen_accuracy": "generation"}
    assert 0 <= result.metrics["accuracy"] <= 1 and result.peak_memory_mb > 0


def test_the_prompt_learns(tiny_llama_dir: Path, sentiment_csv: Path, tmp_path: Path) -> None:
    losses: list[float] = []
    spec = _spec(tiny_llama_dir, sentiment_csv, "prompt-tuning", steps=30, lr=0.1, eval_every=30)
    fit(spec, tmp_path, on_event=lambda e: losses.append(e.data["loss"]) if e.kind == "step" else None)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1


def test_same_seed_same_prompt_other_seed_other_prompt(tiny_llama_dir: Path, sentiment_csv: Path,
                                                       tmp_path: Path) -> None:
    prompts = []
    for i, seed in enumerate((1, 1, 2)):
        result = fit(_spec(tiny_llama_dir, sentiment_csv, seed=seed), tmp_path / str(i))
        prompts.append(load_file(f"{result.artifact}/prompt.safetensors")["prompt"])
    assert torch.equal(prompts[0], prompts[1])
    assert not torch.equal(prompts[0], prompts[2])


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_a_stopped_run_resumes_to_the_same_prompt(family: str, tiny_dirs: dict[str, Path], sentiment_csv: Path,
                                                  tmp_path: Path) -> None:
    """Stop after a checkpoint, start again: the result equals one uninterrupted run (data order, optimizer...)."""
    spec = _spec(tiny_dirs[family], sentiment_csv, steps=10, checkpoint_every=3, eval_every=5, batch_size=8)
    whole = fit(spec, tmp_path / "whole")
    calls = {"n": 0}

    def stop_after_seven() -> bool:
        calls["n"] += 1
        return calls["n"] > 7

    with pytest.raises(Cancelled):
        fit(spec, tmp_path / "split", should_stop=stop_after_seven)
    resumed = fit(spec, tmp_path / "split")
    assert resumed.resumed_from == 7
    a = load_file(f"{whole.artifact}/prompt_params.safetensors")
    b = load_file(f"{resumed.artifact}/prompt_params.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert whole.metrics == resumed.metrics
    logged = [json.loads(line) for line in (tmp_path / "split" / "history.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged if e["kind"] == "step"] == list(range(1, 11))


def test_a_checkpoint_of_other_settings_is_not_resumed(tiny_llama_dir: Path, sentiment_csv: Path,
                                                      tmp_path: Path) -> None:
    fit(_spec(tiny_llama_dir, sentiment_csv, steps=2), tmp_path)
    with pytest.raises(ConfigError, match="other settings"):
        fit(_spec(tiny_llama_dir, sentiment_csv, steps=3), tmp_path)


def test_nan_loss_stops_with_a_clear_error(tiny_llama_dir: Path, sentiment_csv: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    broken = tmp_path / "broken"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    for f in tiny_llama_dir.glob("tokenizer*"):
        (broken / f.name).write_bytes(f.read_bytes())
    with pytest.raises(TrainingDiverged, match="lower --lr"):
        fit(_spec(broken, sentiment_csv), tmp_path / "run")


def test_norm_warning_when_the_prompt_blows_up(tiny_llama_dir: Path, sentiment_csv: Path, tmp_path: Path) -> None:
    events: list[Event] = []
    spec = _spec(tiny_llama_dir, sentiment_csv, "prompt-tuning", lr=5.0, lr_scaling="absolute", steps=4,
                 grad_clip=0.0)
    fit(spec, tmp_path, on_event=events.append)
    warnings = [e for e in events if e.kind == "warning"]
    assert warnings and "norm" in warnings[0].data["message"]


def test_validation_collects_every_problem_with_its_fix(sentiment_csv: Path) -> None:
    bad = RunSpec(data=DataConfig(task="rotten_tomatoes", train_file=str(sentiment_csv)),
                  train=TrainConfig(steps=0, batch_size=0, lr=-1, device="tpu"))
    with pytest.raises(ConfigError) as info:
        validate_spec(bad)
    message = str(info.value)
    for needle in ("pick one", "steps=0", "batch_size=0", "lr=-1", "device='tpu'"):
        assert needle in message


def test_spec_round_trips_through_json() -> None:
    spec = RunSpec(method=method_config("dpt", length=20, rank=4), train=TrainConfig(steps=9, lr=0.02))
    again = spec_from_dict(json.loads(json.dumps(spec_to_dict(spec))))
    assert again == spec
    with pytest.raises(ConfigError, match="unknown setting"):
        spec_from_dict({**spec_to_dict(spec), "train": {"stpes": 3}})


def test_lr_schedule() -> None:
    assert lr_at(0, 1.0, 4, 20) == pytest.approx(0.25)
    assert lr_at(3, 1.0, 4, 20) == pytest.approx(1.0)
    assert lr_at(12, 1.0, 4, 20) == pytest.approx(0.5)
    assert lr_at(20, 1.0, 4, 20) == 0.0


def test_bfloat16_backbone_trains_a_float32_prompt(tiny_llama_dir: Path, sentiment_csv: Path, tmp_path: Path) -> None:
    spec = _spec(tiny_llama_dir, sentiment_csv, steps=2, eval_every=2)
    spec = RunSpec(model=ModelConfig(str(tiny_llama_dir), dtype="bfloat16"), method=spec.method, data=spec.data,
                   train=spec.train)
    result = fit(spec, tmp_path)
    params = load_file(f"{result.artifact}/prompt_params.safetensors")
    assert all(t.dtype == torch.float32 for t in params.values())
    assert all(torch.isfinite(t).all() for t in params.values())


def test_4bit_needs_cuda(tiny_llama_dir: Path) -> None:
    from core.backbone import load_backbone
    from core.errors import DeviceError

    with pytest.raises(ConfigError, match="4bit needs a CUDA device"):
        validate_spec(RunSpec(model=ModelConfig("default", quantize="4bit"), train=TrainConfig(device="cpu")))
    with pytest.raises(DeviceError, match="CUDA"):
        load_backbone(ModelConfig(str(tiny_llama_dir), quantize="4bit"), torch.device("cpu"))
    if not torch.cuda.is_available():
        from core.backbone import resolve_device

        with pytest.raises(DeviceError, match="no CUDA device"):
            resolve_device("cuda:0")


def test_phases_say_what_the_run_is_doing(tiny_llama_dir: Path, sentiment_csv: Path, tmp_path: Path) -> None:
    events: list[Event] = []
    fit(_spec(tiny_llama_dir, sentiment_csv, steps=4, eval_every=2), tmp_path, on_event=events.append)
    phases = [e.data["phase"] for e in events if e.kind == "phase"]
    # Each phase once in a row: loading, training, validating at steps 2 and 4, the test, the artifact.
    changes = [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]]
    assert changes == ["loading", "training", "validating", "training", "validating", "testing", "writing"]
    testing = [e.data for e in events if e.kind == "phase" and e.data["phase"] == "testing"]
    total = testing[0]["total"]
    assert total > 0 and [d["done"] for d in testing] == [0, *range(0, total, 64)[1:], total]
    assert all(e.step == 4 for e in events if e.kind == "phase" and e.data["phase"] in ("testing", "writing"))
