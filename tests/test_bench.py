"""The benchmark end to end on a tiny random Llama: every file written, every row there, ratios against PEFT."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.cli import main
from benchmarks.measure import PeakMemory, Spread, time_calls, time_rounds
from benchmarks.settings import make_settings
from core.errors import ConfigError
from core.methods import trainable_param_counts

HIDDEN = 32  # the tiny models of conftest.py
LENGTH, RANK, POOLS, GROWTH = 20, 4, (1, 4), (8, 16)
FLAGS = ["--device", "cpu", "--threads", "1", "--length", str(LENGTH), "--rank", str(RANK), "--pools", "1,4",
         "--default-pool", "4", "--batch-size", "4", "--warmup", "1", "--repeats", "2", "--infer-batch-sizes", "1,4",
         "--growth-lengths", "8,16", "--growth-batch-size", "2", "--accuracy-steps", "2", "--accuracy-batch-size",
         "4", "--accuracy-train-examples", "32", "--eval-examples", "8", "--seeds", "2", "--budgets", "steps,time",
         "--serving-queries", "6",
         "--serving-batch-sizes", "1,4", "--sections", "steps,inference,accuracy,growth,serving"]


@pytest.fixture(scope="module")
def run(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench")
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["--model", str(tiny_llama_dir), *FLAGS, "--out", str(out), "--json"]) == 0
    summary = json.loads(stdout.getvalue().strip().splitlines()[-1])
    return out, summary


def _results(out: Path) -> dict[str, Any]:
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


def _rows(out: Path, section: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = _results(out)["sections"][section]["rows"]
    return rows


def test_every_file_is_written(run: tuple[Path, dict[str, Any]]) -> None:
    out, summary = run
    for name in ("report.md", "results.json", "charts.html", "steps.csv", "inference.csv", "accuracy.csv",
                 "growth.csv", "serving.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert summary["out"] == str(out)
    assert set(summary) >= {"steps", "inference", "accuracy", "growth", "serving", "environment", "files"}
    assert "plotly" in (out / "charts.html").read_text()[:200_000].lower()


def test_step_table_has_every_contender_and_ratios_against_peft(run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = run
    rows = {r["contender"]: r for r in _rows(out, "steps")}
    expected = [f"PEFT prompt tuning l={LENGTH}", f"prompt-tuning l={LENGTH}",
                *[f"lamp l={LENGTH} r={RANK} p={p}" for p in POOLS], f"dpt l={LENGTH} r={RANK}",
                f"residual-pt l={LENGTH} m=400", f"ulpt l={LENGTH} r=2", "dept l=60 r=30 s=256", "floor: no prompt"]
    assert list(rows) == expected
    peft = rows[expected[0]]
    for row in rows.values():
        assert row["step_s_min"] <= row["step_s"] <= row["step_s_max"]
        assert row["peak_mib"] >= 0
        for key in ("step_s", "examples_per_s", "peak_mib"):
            want = row[key] / peft[key] if peft[key] else None
            assert row[f"{key}_x_peft"] == pytest.approx(want) if want is not None else True
    assert peft["step_s_x_peft"] == peft["examples_per_s_x_peft"] == peft["trainable_params_x_peft"] == 1.0
    assert peft["examples_per_s"] == pytest.approx(4 / peft["step_s"])
    for row in rows.values():  # paired with the floor's step of the same round
        assert row["step_x_floor_min"] <= row["step_x_floor"] <= row["step_x_floor_max"]
        assert row["step_x_floor_min"] * rows["floor: no prompt"]["step_s_min"] <= row["step_s_max"]
    assert rows["floor: no prompt"]["step_x_floor"] == 1.0
    assert "x floor, same round" in (out / "report.md").read_text()


def test_trainable_params_equal_the_formulas(run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = run
    rows = {r["contender"]: r for r in _rows(out, "steps")}
    for pool in POOLS:
        counts = trainable_param_counts(HIDDEN, LENGTH, RANK, pool)
        assert rows[f"lamp l={LENGTH} r={RANK} p={pool}"]["trainable_params"] == counts["lamp"]
    assert rows[f"prompt-tuning l={LENGTH}"]["trainable_params"] == counts["prompt-tuning"] == LENGTH * HIDDEN
    assert rows[f"dpt l={LENGTH} r={RANK}"]["trainable_params"] == counts["dpt"]
    assert rows[f"PEFT prompt tuning l={LENGTH}"]["trainable_params"] == LENGTH * HIDDEN
    assert rows["floor: no prompt"]["trainable_params"] == 0
    assert rows[f"lamp l={LENGTH} r={RANK} p=4"]["prompt_tokens"] == LENGTH // 4
    for row in rows.values():
        assert row["trainable_params"] == row["formula_params"]


def test_artifacts_are_written_and_measured(run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = run
    rows = {r["contender"]: r for r in _rows(out, "steps")}
    folders = {p.name: p for p in (out / "artifacts").iterdir()}
    peft = folders[f"peft-prompt-tuning-l-{LENGTH}"]
    assert (peft / "adapter_model.safetensors").is_file() and (peft / "adapter_config.json").is_file()
    lamp = folders[f"lamp-l-{LENGTH}-r-{RANK}-p-4"]
    assert {"prompt.safetensors", "prompt_params.safetensors", "lamp_artifact.json"} <= {p.name for p in
                                                                                        lamp.iterdir()}
    assert rows["floor: no prompt"]["artifact_bytes"] is None
    size = sum(p.stat().st_size for p in lamp.iterdir())
    assert rows[f"lamp l={LENGTH} r={RANK} p=4"]["artifact_bytes"] == size


def test_inference_rows_per_batch_size_and_peft_scores_match_ours(run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = run
    rows = _rows(out, "inference")
    for batch in (1, 4):
        group = {r["contender"]: r for r in rows if r["batch_size"] == batch}
        assert set(group) == {f"PEFT prompt tuning l={LENGTH}", f"lamp l={LENGTH} r={RANK} p=1",
                              f"lamp l={LENGTH} r={RANK} p=4", f"prompt-tuning l={LENGTH}", "bare model: no prompt",
                              f"lamp l={LENGTH} r={RANK} p=4, keys and values cached (API)"}
        peft = group[f"PEFT prompt tuning l={LENGTH}"]
        assert peft["ms_per_example_x_peft"] == 1.0
        for row in group.values():
            assert row["ms_per_example_x_peft"] == pytest.approx(row["ms_per_example"] / peft["ms_per_example"])
    assert _results(out)["peft_score_gap"] < 1e-4  # scoring PEFT's prompt with our code gives PEFT's scores


def test_accuracy_over_seeds_and_budgets_at_each_methods_defaults(run: tuple[Path, dict[str, Any]]) -> None:
    import statistics

    from core.stats import interval95

    out, _ = run
    rows = _rows(out, "accuracy")
    # Each method at its own defaults, whatever the --length and --rank of the timing sections.
    names = ["peft-pt", "lamp l=100 r=8 p=2", "prompt-tuning l=100", "dpt l=100 r=8", "residual-pt l=100 m=400",
             "ulpt l=100 r=2", "dept l=60 r=30 s=256"]
    assert [(r["budget"], r["contender"]) for r in rows] == [("-", "bare model: zero-shot"),
                                                            *[("steps", n) for n in names],
                                                            *[("time", n) for n in names[1:]]]
    for row in rows[1:]:
        assert row["seeds"] == 2 and len(row["per_seed"]) == 2 and row["seed_list"] == [42, 43]
        assert row["accuracy"] == pytest.approx(statistics.fmean(row["per_seed"]), abs=1e-4)
        assert row["accuracy_low"] <= row["accuracy"] <= row["accuracy_high"]
        assert 0 <= row["accuracy"] <= 1 and row["step_s"] > 0
    steps = {r["contender"]: r for r in rows if r["budget"] == "steps"}
    timed = {r["contender"]: r for r in rows if r["budget"] == "time"}
    assert all(r["steps"] == 2 for r in steps.values())
    ours = [r for name, r in steps.items() if name != "peft-pt"]  # PEFT, the reference, sets no time budget
    slowest = max(ours, key=lambda r: r["step_s"])
    assert timed[slowest["contender"]]["steps"] == 2
    assert timed[slowest["contender"]]["per_seed"] == slowest["per_seed"]  # the same runs, not repeated
    for name, row in timed.items():  # the slowest one's training time, in this contender's own steps
        assert row["steps"] == max(1, int(slowest["step_s"] * 2 // steps[name]["step_s"]))
    assert steps["peft-pt"]["accuracy_x_peft"] == 1.0
    mean, std, half = interval95([0.8, 0.82, 0.84])
    assert (mean, std) == (pytest.approx(0.82), pytest.approx(0.02)) and half == pytest.approx(4.303 * 0.02 / 3**0.5)
    assert interval95([0.7]) == (0.7, 0.0, 0.0)


def test_growth_pairs_lamp_with_peft_at_each_length(run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = run
    rows = _rows(out, "growth")
    assert [(r["method"], r["length"]) for r in rows] == [(m, n) for n in GROWTH for m in ("peft-pt", "lamp")]
    for r in rows:
        assert r["prompt_tokens"] == (r["length"] if r["method"] == "peft-pt" else r["length"] // 4)
        assert r["step_s_x_peft"] == (1.0 if r["method"] == "peft-pt" else pytest.approx(r["step_s_x_peft"]))


def test_serving_rows_per_queries_per_call_and_batched_answers_equal_sequential(
        run: tuple[Path, dict[str, Any]]) -> None:
    out, summary = run
    rows = _rows(out, "serving")
    assert [(r["queries_per_call"], r["method"]) for r in rows] == [
        (n, m) for n in (1, 4) for m in ("mixed-batch", "sequential", "peft-pt")]
    for per_call in (1, 4):
        group = {r["method"]: r for r in rows if r["queries_per_call"] == per_call}
        assert group["mixed-batch"]["rows_per_forward"] == 4 * per_call  # 4 prompts in one forward
        assert group["sequential"]["rows_per_forward"] == group["peft-pt"]["rows_per_forward"] == per_call
        for r in group.values():
            assert r["prompts"] == 4 and r["answers_per_s"] == pytest.approx(4 * r["queries_per_s"])
            for base, suffix in (("sequential", "x_sequential"), ("peft-pt", "x_peft")):
                want = r["ms_per_query"] / group[base]["ms_per_query"]
                assert r[f"ms_per_query_{suffix}"] == pytest.approx(want)
    check = _results(out)["serving_check"]  # every contender ranked the same labels for every query and prompt
    assert check["answers_equal"] and check["peft_answers_equal"]
    assert check["max_score_diff"] < 1e-4 and check["peft_max_score_diff"] < 1e-4
    assert "x sequential" in (out / "report.md").read_text()
    assert [r["queries_per_call"] for r in summary["serving"]] == [1, 1, 1, 4, 4, 4]


def test_markdown_and_csv_carry_the_same_rows(run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = run
    report = (out / "report.md").read_text()
    assert "x PEFT" in report and "1.00x" in report and "python -m benchmarks" in report
    for section in ("steps", "inference", "accuracy", "growth", "serving"):
        with (out / f"{section}.csv").open() as f:
            table = list(csv.DictReader(f))
        assert [r["contender"] for r in table] == [r["contender"] for r in _rows(out, section)]
        for row in table:
            assert f"| {row['contender']} |" in report


def test_settings_name_every_bad_value() -> None:
    with pytest.raises(ConfigError) as exc:
        make_settings(pools=(3,), growth_lengths=(9,), repeats=0, sections=("speed",), accuracy_methods=("peft",))
    text = str(exc.value)
    assert "pools [3]" in text and "growth lengths [9]" in text and "repeats=0" in text and "speed" in text
    assert "accuracy methods ['peft']" in text and "peft-pt, lamp" in text
    quick = make_settings(quick=True, repeats=5)
    assert quick.repeats == 5 and quick.batch_size == 8  # explicit flags win over the quick preset


def test_accuracy_methods_pick_the_contenders(tiny_llama_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`--accuracy-methods peft-pt,dpt`: the bare model, PEFT's runs and DPT's (its `time` budget from itself);
    PEFT's loop reports its validation steps as it goes."""
    flags = ["--device", "cpu", "--threads", "1", "--length", "8", "--rank", "2", "--pools", "4", "--default-pool", "4",
             "--accuracy-steps", "2", "--accuracy-batch-size", "4", "--accuracy-train-examples", "16",
             "--eval-examples", "4", "--seeds", "1", "--budgets", "steps,time", "--sections", "accuracy",
             "--accuracy-methods", "peft-pt,dpt"]
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--model", str(tiny_llama_dir), *flags, "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path, "accuracy")
    assert sorted((r["method"], r["budget"]) for r in rows) == [("dpt", "steps"), ("dpt", "time"), ("floor", "-"),
                                                                 ("peft-pt", "steps")]
    assert {r["contender"].split()[0] for r in rows if r["method"] == "dpt"} == {"dpt"}
    assert "peft-pt seed 42 step 2/2: validation " in capsys.readouterr().err


def test_lamp_bench_is_a_plugin_command() -> None:
    from lamp.cli import build_parser

    args = build_parser().parse_args(["bench", "--quick", "--out", "x"])
    assert args.command == "bench" and args.quick and callable(args.handler)


def test_measuring_helpers() -> None:
    calls: list[int] = []
    spread = time_calls(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=3)
    assert len(calls) == 5 and spread.n == 3 and spread.low <= spread.median <= spread.high
    assert Spread.of([1.0, 3.0, 2.0]).scaled(2) == Spread(4.0, 2.0, 6.0, 3)
    with PeakMemory(torch.device("cpu")) as mem:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert mem.how and mem.mib >= 32


def test_timed_rounds_interleave_the_contenders_and_rotate_who_goes_first() -> None:
    """Each round times one call of every function; round k starts at the k-th (mod n), so a slow stretch of the
    machine is shared rather than landing on one contender's block."""
    order: list[str] = []
    fns = [lambda n=n: order.append(n) for n in "abc"]
    times = time_rounds(fns, torch.device("cpu"), repeats=4)
    assert order == list("abc" "bca" "cab" "abc")
    assert [len(t) for t in times] == [4, 4, 4]
    slow = time_rounds([lambda: None, lambda: time_calls(lambda: sum(range(20_000)), torch.device("cpu"), 0, 20)],
                       torch.device("cpu"), repeats=3)
    assert min(slow[1]) > max(slow[0])  # each list belongs to its own function
    assert time_rounds([], torch.device("cpu"), repeats=3) == []


def test_serving_http_ratios_and_table() -> None:
    """The serving-http rows' ratios (over the one-at-a-time server at the same K and clients, over PEFT at the same
    K) and their Markdown table (a real run needs server processes: README, "API", has its figures)."""
    from benchmarks.report import markdown_table
    from benchmarks.serving_http import BATCHED, BY_PROMPT, ONE, PEFT, with_http_ratios

    rows = with_http_ratios([
        {"contender": "batched", "method": BATCHED, "prompts": 16, "clients": 32, "requests_per_s": 12.0,
         "p50_ms": 900.0, "p99_ms": 1500.0, "tokens_per_s": 480.0, "failed": 0, "codes": {200: 64}},
        {"contender": "by prompt", "method": BY_PROMPT, "prompts": 16, "clients": 32, "requests_per_s": 6.0,
         "p50_ms": 1500.0, "p99_ms": 2500.0, "tokens_per_s": 240.0, "failed": 0, "codes": {200: 64}},
        {"contender": "one", "method": ONE, "prompts": 16, "clients": 32, "requests_per_s": 4.0, "p50_ms": 2000.0,
         "p99_ms": 4000.0, "tokens_per_s": 160.0, "failed": 0, "codes": {200: 64}},
        {"contender": "peft", "method": PEFT, "prompts": 16, "clients": 1, "requests_per_s": 6.0, "p50_ms": 150.0,
         "p99_ms": 200.0, "failed": 0},
        {"contender": "batch 1", "method": BATCHED, "prompts": 1, "clients": 1, "p50_ms": 110.0, "bare_p50_ms": 100.0,
         "x_bare": 1.1},
    ])
    assert rows[0]["requests_per_s_x_one"] == pytest.approx(3.0) and rows[0]["requests_per_s_x_peft"] == 2.0
    assert rows[0]["requests_per_s_x_by_prompt"] == pytest.approx(2.0)
    assert rows[2]["requests_per_s_x_one"] == 1.0 and rows[3]["requests_per_s_x_one"] is None
    assert "requests_per_s_x_one" not in rows[4]
    table = markdown_table("serving-http", rows)
    assert "| batched | 16 | 32 | 900 | 1500 | 12.00 | 2.00x | 2.00 | 3.00 |" in table and "200: 64" in table


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_peft_loss_at_the_answers_equals_peft_labels_loss(family: str, request: pytest.FixtureRequest) -> None:
    """The accuracy section's PEFT reference keeps logits at the answer positions only: the same loss and prompt
    gradient as PEFT's own `labels=` path, on rows of different lengths and answers of one and two tokens."""
    from benchmarks.contenders import PeftPromptTuning
    from core.backbone import load_backbone
    from core.batching import Encoded
    from core.spec import ModelConfig

    backbone = load_backbone(ModelConfig(str(request.getfixturevalue(f"tiny_{family}_dir"))), torch.device("cpu"))
    items = [Encoded([5, 9, 14, 20, 31], [40]), Encoded([7, 8], [41, 42]), Encoded([11, 12, 13, 14, 15, 16, 17], [43])]
    results = []
    for answers_only in (False, True):
        peft = PeftPromptTuning(backbone, 6, seed=3, lr=0.01, answers_only=answers_only)
        loss = peft.loss(items)
        loss.backward()
        grad = peft.params[0].grad
        assert grad is not None
        results.append((loss.detach(), grad.clone()))
        peft.close()
    (full, full_grad), (kept, kept_grad) = results
    assert float(full) > 0
    torch.testing.assert_close(kept, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kept_grad, full_grad, rtol=1e-4, atol=1e-7)
    assert float(full_grad.abs().sum()) > 0


def test_the_step_profile_compares_lamp_and_the_floor_phase_by_phase_and_by_operator(tiny_llama_dir: Path) -> None:
    """scripts/profile_step.py on the tiny Llama: every phase of both, and the operator table of --ops, which lists
    LAMP's own operators (its optimizer step, absent from the floor's step) with the floor's time at zero."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("profile_step", Path(__file__).parents[1] / "scripts/profile_step.py")
    assert spec is not None and spec.loader is not None
    profile_step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile_step)
    result = profile_step.main(["--model", str(tiny_llama_dir), "--threads", "1", "--repeats", "1", "--warmup", "0",
                                "--pool", "4", "--ops", "1", "--top", "1000"])
    assert result["pool"] == 4 and result["tokens"] > 0
    phases = [p["phase"] for p in result["phases"]]
    assert phases[0].startswith("prompt module") and phases[-1] == "clip + AdamW"
    ops = result["ops"]
    assert ops[0]["op"] == "all operators"
    assert ops[0]["lamp_ms"] == pytest.approx(sum(o["lamp_ms"] for o in ops[1:]))
    extras = [abs(o["extra_ms"]) for o in ops[1:]]
    assert extras == sorted(extras, reverse=True)
    own = [o["op"] for o in ops[1:] if o["floor_ms"] == 0 and o["lamp_ms"] > 0]
    assert any("adam" in op.lower() or "foreach" in op.lower() or "addcdiv" in op for op in own), own
