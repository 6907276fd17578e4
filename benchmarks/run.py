"""One benchmark run: load the backbone once, measure every section, return plain rows for the report."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch

from benchmarks.accuracy import PEFT, accuracy_section, contender_name
from benchmarks.contenders import Floor, Ours, PeftPromptTuning, our_label_scores
from benchmarks.measure import PeakMemory, Spread, dir_bytes, time_calls, time_rounds
from benchmarks.serving import serving
from benchmarks.settings import BenchSettings
from core.backbone import Backbone, load_backbone, resolve_device
from core.batching import Codec, Encoded
from core.methods import (
    DeptConfig,
    DptConfig,
    LampConfig,
    MethodConfig,
    PromptTuningConfig,
    ResidualPtConfig,
    UlptConfig,
)
from core.serving import Lane, PromptKV, Query, rank_mixed
from core.spec import DataConfig, ModelConfig
from core.tasks import TaskData, load_builtin_task
from core.vocab import common_token_ids

Log = Callable[[str], None]
Row = dict[str, Any]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Bench:
    """What every section shares: the settings, the frozen backbone, the task, its codec and the output folder."""

    def __init__(self, s: BenchSettings, out: Path, log: Log = _stderr) -> None:
        self.s, self.out, self.log = s, out, log
        if s.threads is not None:
            torch.set_num_threads(s.threads)
        self.device = resolve_device(s.device)
        tick = time.perf_counter()
        self.backbone: Backbone = load_backbone(ModelConfig(s.model, s.dtype), self.device)  # type: ignore[arg-type]
        self.load_seconds = time.perf_counter() - tick
        # The split is the one every run uses (DataConfig.split_seed), whatever the benchmark's seed.
        self.task: TaskData = load_builtin_task(s.task, seed=DataConfig().split_seed)
        self.codec = Codec.for_backbone(self.backbone, self.task.answer_cue, s.max_length)
        self.common = common_token_ids(self.backbone.tokenizer)
        self.table = self.backbone.embedding_table()
        count = max(s.batch_size, s.growth_batch_size)
        # The same examples, in the same (seeded) order, for every contender of a section.
        self.train_items: list[Encoded] = self.codec.encode_many([(e.source, e.target)
                                                                  for e in self.task.train[:count]])
        self.memory_how = ""

    # -- contenders -------------------------------------------------------------------------------------------
    def ours(self, config: MethodConfig) -> Ours:
        return Ours(self.backbone, config, self.table, self.common, self.s.seed, self.s.lr)

    def peft(self, length: int) -> PeftPromptTuning:
        return PeftPromptTuning(self.backbone, length, self.s.seed, self.s.lr)

    def _our_scores(self, prompt: torch.Tensor | None, words: list[str], sources: list[str]) -> Any:
        return our_label_scores(self.backbone, prompt, self.codec, sources, words)

    def lamp(self, length: int, pool: int) -> LampConfig:
        return LampConfig(length=length, rank=self.s.rank, pool=pool)

    def step_contenders(self) -> list[tuple[str, Callable[[], Any]]]:
        s = self.s
        rows: list[tuple[str, Callable[[], Any]]] = [
            (f"PEFT prompt tuning l={s.length}", lambda: self.peft(s.length)),
            (f"prompt-tuning l={s.length}", lambda: self.ours(PromptTuningConfig(length=s.length))),
        ]
        rows += [(f"lamp l={s.length} r={s.rank} p={p}", partial(self.ours, self.lamp(s.length, p)))
                 for p in s.pools]
        rows += [(f"dpt l={s.length} r={s.rank}", lambda: self.ours(DptConfig(length=s.length, rank=s.rank)))]
        others: list[MethodConfig] = [ResidualPtConfig(length=s.length), UlptConfig(length=s.length),
                                      DeptConfig()]  # DePT at its own knobs
        rows += [(contender_name(c), partial(self.ours, c)) for c in others]
        rows += [("floor: no prompt", lambda: Floor(self.backbone))]
        return rows

    # -- measuring training contenders ------------------------------------------------------------------------
    def measure_steps(self, named: Sequence[tuple[str, Any]], items: Sequence[Encoded]) -> list[Row]:
        """Step time and memory of each contender on the same batch.

        Memory: each contender's warm-up steps (at least one) in a window of their own. Time: `repeats` rounds of
        one step of every contender, interleaved (core.measure.time_rounds), so that a drift of the machine during
        the run falls on every contender alike rather than on one contender's block of steps. Where the floor is
        among them, `step_x_floor` is each step over the floor's step of the same round (median [min-max]).
        """
        rows: list[Row] = []
        for name, contender in named:
            with PeakMemory(self.device) as mem:
                for _ in range(max(1, self.s.warmup)):
                    contender.step(items)
            self.memory_how = mem.how
            rows.append({"contender": name, "method": contender.method, "prompt_tokens": contender.prompt_tokens,
                         "batch_size": len(items), "peak_mib": mem.mib})
        times = time_rounds([partial(c.step, items) for _, c in named], self.device, self.s.repeats)
        floor = next((t for t, (_, c) in zip(times, named, strict=True) if c.method == "floor"), None)
        for row, mine in zip(rows, times, strict=True):
            spread = Spread.of(mine)
            row.update({"step_s": spread.median, "step_s_min": spread.low, "step_s_max": spread.high,
                        "examples_per_s": len(items) / spread.median})
            if floor is not None:  # paired: each step over the floor's step of the same round
                paired = Spread.of([a / b for a, b in zip(mine, floor, strict=True)])
                row.update({"step_x_floor": paired.median, "step_x_floor_min": paired.low,
                            "step_x_floor_max": paired.high})
            self.log(f"  {row['contender']}: {spread.median:.3f} s/step [{spread.low:.3f}-{spread.high:.3f}], "
                     f"{row['peak_mib']:.0f} MiB above start")
        return rows

    # -- sections ---------------------------------------------------------------------------------------------
    def steps(self) -> list[Row]:
        s = self.s
        items = self.train_items[: s.batch_size]
        self.log(f"training steps: batch {len(items)}, {max(1, s.warmup)} warm-up each, then {s.repeats} "
                 "interleaved rounds of one timed step per contender")
        Floor(self.backbone).step(items)  # one untimed step first: one-off allocations go to no contender
        named = [(name, make()) for name, make in self.step_contenders()]
        rows = self.measure_steps(named, items)
        for row, (name, contender) in zip(rows, named, strict=True):
            row["trainable_params"] = contender.trainable_params
            row["formula_params"] = contender.formula_params
            row["artifact_bytes"] = None
            if contender.method != "floor":
                folder = self.out / "artifacts" / _slug(name)
                contender.save(folder)
                row["artifact_bytes"] = dir_bytes(folder)
            if isinstance(contender, PeftPromptTuning):
                contender.close()
        return with_ratios(rows, ["step_s", "examples_per_s", "peak_mib", "trainable_params", "artifact_bytes"])

    def inference(self) -> list[Row]:
        s = self.s
        words = list(self.task.label_words or ())
        token_ids = [self.codec.target(w, eos=False)[0] for w in words]
        peft = self.peft(s.length)
        lamp1, lamp_default = self.ours(self.lamp(s.length, 1)), self.ours(self.lamp(s.length, s.default_pool))
        pt = self.ours(PromptTuningConfig(length=s.length))
        scorers: list[tuple[str, str, int, Callable[[list[str]], Any]]] = [
            (f"PEFT prompt tuning l={s.length}", PEFT, s.length,
             lambda src: peft.label_scores(self.codec, src, token_ids)),
        ]
        for name, contender in ((f"lamp l={s.length} r={s.rank} p=1", lamp1),
                                (f"lamp l={s.length} r={s.rank} p={s.default_pool}", lamp_default),
                                (f"prompt-tuning l={s.length}", pt)):
            prompt = contender.prompt()  # stored in the artifact: built once, not per call
            scorers.append((name, contender.method, contender.prompt_tokens,
                            partial(self._our_scores, prompt, words)))
        cache, lane = PromptKV(), Lane(lamp_default.prompt(), self.codec, key="lamp-default")

        def cached(sources: list[str]) -> Any:  # the API's path: the prompt's keys and values kept between calls
            return rank_mixed(self.backbone, [lane], [Query(0, src, tuple(words)) for src in sources],
                              batch_size=len(sources), kv_cache=cache)

        scorers.append((f"lamp l={s.length} r={s.rank} p={s.default_pool}, keys and values cached (API)",
                        lamp_default.method, lamp_default.prompt_tokens, cached))
        scorers.append(("bare model: no prompt", "floor", 0, partial(self._our_scores, None, words)))
        # Scoring PEFT's prompt through our code must give PEFT's own scores, or the accuracy table is unfair.
        check = [e.source for e in self.task.test[: max(s.infer_batch_sizes)]]
        agree = (peft.label_scores(self.codec, check, token_ids).cpu()
                 - torch.tensor(our_label_scores(self.backbone, peft.prompt(), self.codec, check, words))).abs().max()
        self.peft_score_gap = float(agree)
        self.log(f"inference: label-word scoring, batch sizes {list(s.infer_batch_sizes)}; PEFT's prompt scored "
                 f"by PEFT and by our code differs by at most {self.peft_score_gap:.2e}")
        rows = []
        for batch in s.infer_batch_sizes:
            sources = [e.source for e in self.task.test[:batch]]
            for name, method, tokens, score in scorers:
                spread = time_calls(partial(score, sources), self.device, s.warmup, s.repeats)
                per = spread.scaled(1 / len(sources))
                rows.append({"contender": name, "method": method, "prompt_tokens": tokens,
                             "batch_size": len(sources), "ms_per_example": per.median * 1e3,
                             "ms_min": per.low * 1e3, "ms_max": per.high * 1e3})
                self.log(f"  batch {len(sources)} {name}: {per.median * 1e3:.1f} ms/example")
        peft.close()
        return with_ratios(rows, ["ms_per_example"], group="batch_size")

    def accuracy(self) -> list[Row]:
        """Each method at its own defaults, over seeds, on the whole test split (benchmarks.accuracy)."""
        return accuracy_section(self)

    def growth(self) -> list[Row]:
        s = self.s
        items = self.train_items[: s.growth_batch_size]
        self.log(f"growth: l in {list(s.growth_lengths)}, batch {len(items)}")
        rows = []
        for length in s.growth_lengths:
            pair: list[tuple[str, Callable[[], Any]]] = [
                (f"PEFT prompt tuning l={length}", partial(self.peft, length)),
                (f"lamp l={length} r={s.rank} p={s.default_pool}",
                 partial(self.ours, self.lamp(length, s.default_pool))),
            ]
            named = [(name, make()) for name, make in pair]
            group = self.measure_steps(named, items)
            for row, (_, contender) in zip(group, named, strict=True):
                row["length"] = length
                if isinstance(contender, PeftPromptTuning):
                    contender.close()
            rows += with_ratios(group, ["step_s", "peak_mib"])
        return rows

    def serving(self) -> list[Row]:
        """K prompts answering the same queries: mixed batches against one prompt at a time (benchmarks.serving)."""
        rows, self.serving_check = serving(self)
        return rows

    def serving_http(self) -> list[Row]:
        """The API as clients meet it: a real `lamp api` process (benchmarks.serving_http)."""
        from benchmarks.serving_http import serving_http

        return serving_http(self)


def with_ratios(rows: list[Row], keys: Sequence[str], group: str | None = None) -> list[Row]:
    """Add `<key>_x_peft`: each figure over the PEFT row's (of the same `group` value) from this run."""
    for row in rows:
        base = next(r for r in rows if r["method"] == PEFT and (group is None or r[group] == row[group]))
        for key in keys:
            mine, theirs = row.get(key), base.get(key)
            ok = isinstance(mine, int | float) and isinstance(theirs, int | float) and theirs
            row[f"{key}_x_peft"] = mine / theirs if ok else None  # type: ignore[operator]
    return rows


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def environment(bench: Bench) -> dict[str, Any]:
    import peft
    import transformers

    device = bench.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=False).stdout.strip() or None
    except OSError:
        commit = None
    return {
        "model": bench.backbone.source, "hidden_size": bench.backbone.hidden_size, "device": str(device),
        "device_name": name, "dtype": bench.s.dtype, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "python": platform.python_version(), "commit": commit, "model_load_s": round(bench.load_seconds, 2),
        "batch_width_tokens": max(len(e.source) + len(e.target) for e in bench.train_items[: bench.s.batch_size]),
    }


def run_benchmark(s: BenchSettings, out: Path, log: Log = _stderr) -> dict[str, Any]:
    """Every requested section, in one process, on one backbone. Returns what the report writes."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(s, out, log)
    result: dict[str, Any] = {"settings": asdict(s), "environment": environment(bench), "sections": {}}
    log(f"{bench.backbone.source} on {bench.device} ({s.dtype}, {torch.get_num_threads()} threads), "
        f"loaded in {bench.load_seconds:.1f} s")
    for section in s.sections:
        tick = time.perf_counter()
        rows = getattr(bench, section.replace("-", "_"))()
        result["sections"][section] = {"rows": rows, "seconds": round(time.perf_counter() - tick, 1)}
    result["memory_method"] = bench.memory_how
    result["peft_score_gap"] = getattr(bench, "peft_score_gap", None)
    result["serving_check"] = getattr(bench, "serving_check", None)
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    return result

