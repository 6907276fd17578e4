"""Cost before launch: the backbone's shape read without weights, the memory formula's parts, the time taken from
earlier jobs, and `lamp estimate` end to end (with a measured probe) on a tiny model."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_jobs_support import lamp_command, tiny_spec

from core.estimate import Widths, estimate, model_shape, tokens_per_step
from core.spec import ModelConfig


def test_shape_counts_the_parameters_the_loaded_model_has(tiny_dirs: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    for family, folder in tiny_dirs.items():
        shape = model_shape(str(folder))
        auto = AutoModelForSeq2SeqLM if family == "t5" else AutoModelForCausalLM
        model = auto.from_pretrained(folder)
        assert shape.params == sum(p.numel() for p in model.parameters())
        assert shape.hidden == 32 and shape.layers == (4 if family == "t5" else 2)
        assert shape.family == ("seq2seq" if family == "t5" else "causal")


def test_memory_grows_with_the_batch_and_shrinks_with_the_dtype(tiny_llama_dir: Path, sentiment_csv: Path) -> None:
    spec = tiny_spec(tiny_llama_dir, sentiment_csv)
    widths = Widths(mean=10.0, widest=20, longest=20, label_tokens=2.0, train_examples=48)
    base = estimate(spec, widths, device="cpu")
    shape = model_shape(str(tiny_llama_dir))
    assert base.weights_mb == pytest.approx(shape.params * 4 / 2**20)
    assert base.prompt_tokens == 4 and base.sequence_tokens == 14 and base.trainable_params == 8 * 4 + 4 + 4 * 32
    bigger = estimate(replace(spec, train=replace(spec.train, batch_size=8)), widths, device="cpu")
    assert bigger.activations_mb > 1.9 * base.activations_mb
    half = estimate(replace(spec, model=ModelConfig(str(tiny_llama_dir), "bfloat16")), widths, device="cpu")
    assert half.weights_mb == pytest.approx(base.weights_mb / 2) and half.activations_mb < base.activations_mb
    nf4 = estimate(replace(spec, model=ModelConfig(str(tiny_llama_dir), "float32", "4bit")), widths, device="cuda")
    assert nf4.weights_mb < base.weights_mb and nf4.runtime_mb == 0
    # On CUDA the prompt runs per row, on the CPU once for the batch.
    assert estimate(spec, widths, device="cuda").activations_mb > base.activations_mb * 0.99
    assert tokens_per_step(spec, widths) == 4 * (10 + 4)


def test_time_comes_from_earlier_jobs_on_the_same_model_and_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 tiny_llama_dir: Path, sentiment_csv: Path) -> None:
    from jobs.db import dispose_engines, upgrade_database
    from jobs.estimates import timed_from_history
    from jobs.queue import execute_next, use_queue
    from jobs.tasks import submit

    url = f"sqlite:///{tmp_path / 'lamp.db'}"
    monkeypatch.setenv("LAMP_DATABASE_URL", url)
    monkeypatch.setenv("LAMP_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    use_queue("memory://")
    upgrade_database(url)
    try:
        spec = tiny_spec(tiny_llama_dir, sentiment_csv)
        widths = Widths(mean=10.0, widest=20, longest=20, label_tokens=2.0, train_examples=48,
                        validation_examples=6, test_examples=6)
        est = estimate(spec, widths, device="cpu")
        assert timed_from_history(spec, widths, est).seconds_per_step is None  # nothing to learn from yet
        submit(spec)
        assert execute_next()
        timed = timed_from_history(spec, widths, est)
        assert timed.seconds_per_step is not None and timed.seconds_per_step > 0
        assert timed.run_seconds == pytest.approx(timed.seconds_per_step * 6) and "1 earlier job" in timed.timing
        # The whole job: training plus loading and evaluation at the earlier job's measured rate per scored example.
        from core.estimate import scored_examples
        from jobs import store
        from jobs.db import read

        (job,) = read(store.list_jobs)
        result = read(store.get_result, job_id=job.id)
        assert result is not None and timed.eval_seconds is not None and timed.job_seconds is not None \
            and timed.run_seconds is not None
        assert timed.eval_seconds == pytest.approx(result.total_seconds - result.train_seconds, rel=1e-6)
        assert timed.job_seconds == pytest.approx(timed.run_seconds + timed.eval_seconds)
        no_test = replace(spec, train=replace(spec.train, final_eval=False))
        fewer = timed_from_history(no_test, widths, estimate(no_test, widths, device="cpu"))
        assert fewer.eval_seconds == pytest.approx(timed.eval_seconds * scored_examples(no_test, widths)
                                                   / scored_examples(spec, widths))
        assert scored_examples(no_test, widths) < scored_examples(spec, widths)
        double = replace(spec, train=replace(spec.train, batch_size=8))
        scaled = timed_from_history(double, widths, estimate(double, widths, device="cpu"))
        assert scaled.seconds_per_step == pytest.approx(2 * timed.seconds_per_step)
        other_data = replace(spec, data=replace(spec.data, text_column=None, template="{review}"))
        assert timed_from_history(other_data, widths, est).seconds_per_step is None
    finally:
        dispose_engines()
        use_queue("memory://")


def test_lamp_estimate_with_a_probe(tiny_llama_dir: Path, sentiment_csv: Path, tmp_path: Path) -> None:
    args = ["estimate", "--model", str(tiny_llama_dir), "--train", str(sentiment_csv), "--text-column", "review",
            "--label-column", "verdict", "--length", "8", "--rank", "4", "--pool", "2", "--batch-size", "4",
            "--steps", "10", "--device", "cpu", "--threads", "1"]
    env_home = {"LAMP_DATABASE_URL": f"sqlite:///{tmp_path / 'lamp.db'}"}
    import os

    env = {**os.environ, **env_home}
    out = subprocess.run([*lamp_command(), *args, "--probe", "--probe-steps", "2", "--json"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["trainable_params"] == 8 * 4 + 4 + 4 * 32 and data["prompt_tokens"] == 4
    assert data["probe"]["seconds_per_step"] > 0 and data["run_seconds"] == pytest.approx(
        data["seconds_per_step"] * 10)
    assert data["peak_mb"] == pytest.approx(data["weights_mb"] + data["activations_mb"] + data["runtime_mb"])
    table = subprocess.run([*lamp_command(), *args], env=env, capture_output=True, text=True, timeout=300)
    assert table.returncode == 0 and "peak memory (cpu)" in table.stdout and "no earlier job" in table.stdout
    assert torch.cuda.is_available() or "cuda" not in table.stdout.split("peak memory")[1][:10]
