"""One benchmark run: load the backbone once, measure every section, return plain rows for the report."""

from __future__ import annotations

import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch

from benchmarks.contenders import Floor, Ours, PeftPromptTuning, our_label_scores
from benchmarks.measure import PeakMemory, dir_bytes, time_calls
from benchmarks.serving import serving
from benchmarks.settings import BenchSettings
from core.artifact import load_artifact
from core.backbone import Backbone, load_backbone, resolve_device
from core.batching import Codec, Encoded, length_bucketed_order
from core.evaluate import evaluate
from core.methods import DptConfig, LampConfig, MethodConfig, PromptTuningConfig
from core.spec import DataConfig, ModelConfig, RunSpec, TrainConfig
from core.tasks import TaskData, load_builtin_task
from core.train import fit, lr_at
from core.vocab import common_token_ids

TASK = "rotten_tomatoes"
PEFT = "peft-pt"
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
        self.task: TaskData = load_builtin_task(TASK, seed=s.seed)
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
        rows += [(f"dpt l={s.length} r={s.rank}", lambda: self.ours(DptConfig(length=s.length, rank=s.rank))),
                 ("floor: no prompt", lambda: Floor(self.backbone))]
        return rows

    # -- measuring one training contender ---------------------------------------------------------------------
    def measure_steps(self, name: str, contender: Any, items: Sequence[Encoded]) -> Row:
        with PeakMemory(self.device) as mem:
            spread = time_calls(lambda: contender.step(items), self.device, self.s.warmup, self.s.repeats)
        self.memory_how = mem.how
        row: Row = {
            "contender": name, "method": contender.method, "prompt_tokens": contender.prompt_tokens,
            "batch_size": len(items), "step_s": spread.median, "step_s_min": spread.low, "step_s_max": spread.high,
            "examples_per_s": len(items) / spread.median, "peak_mib": mem.mib,
        }
        self.log(f"  {name}: {spread.median:.3f} s/step [{spread.low:.3f}-{spread.high:.3f}], "
                 f"{mem.mib:.0f} MiB above start")
        return row

    # -- sections ---------------------------------------------------------------------------------------------
    def steps(self) -> list[Row]:
        s = self.s
        items = self.train_items[: s.batch_size]
        self.log(f"training steps: batch {len(items)}, {s.warmup} warm-up + {s.repeats} timed each")
        Floor(self.backbone).step(items)  # one untimed step first: one-off allocations go to no contender
        rows = []
        for name, make in self.step_contenders():
            contender = make()
            row = self.measure_steps(name, contender, items)
            row["trainable_params"] = contender.trainable_params
            row["formula_params"] = contender.formula_params
            row["artifact_bytes"] = None
            if contender.method != "floor":
                folder = self.out / "artifacts" / _slug(name)
                contender.save(folder)
                row["artifact_bytes"] = dir_bytes(folder)
            if isinstance(contender, PeftPromptTuning):
                contender.close()
            rows.append(row)
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
        s = self.s
        test = self.task.test[: s.eval_examples]
        self.log(f"accuracy: {s.accuracy_steps} steps of batch {s.accuracy_batch_size}, lr {s.lr}, "
                 f"{len(test)} test examples ranked")

        def score(prompt: torch.Tensor | None) -> tuple[float, float]:
            """Test accuracy and the seconds its evaluation took."""
            tick = time.perf_counter()
            metrics, _ = evaluate(self.backbone, prompt, self.codec, self.task, test, generate=False)
            return metrics["accuracy"], time.perf_counter() - tick

        accuracy, seconds = score(None)
        rows: list[Row] = [{"contender": "bare model: zero-shot", "method": "floor", "accuracy": accuracy,
                            "step_s": None, "steps": 0, "eval_s": seconds}]
        self.log(f"  zero-shot: {rows[0]['accuracy']:.3f}")
        peft_row = self._peft_accuracy(score)
        rows.insert(0, peft_row)
        for config in (self.lamp(s.length, s.default_pool), PromptTuningConfig(length=s.length),
                       DptConfig(length=s.length, rank=s.rank)):
            name = _config_name(config)
            spec = RunSpec(
                model=ModelConfig(s.model, s.dtype),  # type: ignore[arg-type]
                method=config,
                data=DataConfig(task=TASK, max_train_examples=s.accuracy_train_examples,
                                max_eval_examples=s.accuracy_batch_size),
                train=TrainConfig(steps=s.accuracy_steps, batch_size=s.accuracy_batch_size, lr=s.lr,
                                  max_length=s.max_length, eval_every=s.accuracy_steps,
                                  checkpoint_every=s.accuracy_steps, seed=s.seed, device=str(self.device),
                                  threads=s.threads, final_eval=False, generate_eval=False),
            )
            result = fit(spec, self.out / "accuracy" / _slug(name), backbone=self.backbone)
            prompt = load_artifact(result.artifact).prompt().to(self.device)
            accuracy, seconds = score(prompt)
            rows.append({"contender": name, "method": config.name, "accuracy": accuracy,
                         "step_s": result.train_seconds / result.steps, "steps": result.steps, "eval_s": seconds,
                         "fit_other_s": result.total_seconds - result.train_seconds})
            self.log(f"  {name}: {rows[-1]['accuracy']:.3f} ({rows[-1]['step_s']:.2f} s/step in fit)")
        return with_ratios(rows, ["accuracy", "step_s", "eval_s"])

    def _peft_accuracy(self, score: Callable[[torch.Tensor | None], tuple[float, float]]) -> Row:
        """PEFT trained by an explicit loop on exactly fit()'s batches, learning-rate schedule and optimizer."""
        s = self.s
        examples = self.task.train[: s.accuracy_train_examples]
        encoded = self.codec.encode_many([(e.source, e.target) for e in examples])
        lengths = [len(e.source) + len(e.target) for e in encoded]
        peft = self.peft(s.length)
        epoch, position, seconds = 0, 0, 0.0
        batches = length_bucketed_order(lengths, s.accuracy_batch_size, random.Random(s.seed))
        for step in range(s.accuracy_steps):
            if position >= len(batches):  # as fit(): a new order from the seed and the epoch number
                epoch, position = epoch + 1, 0
                batches = length_bucketed_order(lengths, s.accuracy_batch_size, random.Random(s.seed + epoch))
            for group in peft.optimizer.param_groups:
                group["lr"] = lr_at(step, s.lr, 0, s.accuracy_steps)
            items = [encoded[i] for i in batches[position]]
            spread = time_calls(partial(peft.step, items), self.device, 0, 1)
            seconds += spread.median
            position += 1
        accuracy, eval_seconds = score(peft.prompt())
        row = {"contender": f"PEFT prompt tuning l={s.length}", "method": PEFT, "accuracy": accuracy,
               "step_s": seconds / s.accuracy_steps, "steps": s.accuracy_steps, "eval_s": eval_seconds}
        peft.close()
        self.log(f"  {row['contender']}: {row['accuracy']:.3f} ({row['step_s']:.2f} s/step)")
        return row

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
            group = []
            for name, make in pair:
                contender = make()
                row = self.measure_steps(name, contender, items)
                row["length"] = length
                if isinstance(contender, PeftPromptTuning):
                    contender.close()
                group.append(row)
            rows += with_ratios(group, ["step_s", "peak_mib"])
        return rows

    def serving(self) -> list[Row]:
        """K prompts answering the same queries: mixed batches against one prompt at a time (benchmarks.serving)."""
        rows, self.serving_check = serving(self)
        return rows


def with_ratios(rows: list[Row], keys: Sequence[str], group: str | None = None) -> list[Row]:
    """Add `<key>_x_peft`: each figure over the PEFT row's (of the same `group` value) from this run."""
    for row in rows:
        base = next(r for r in rows if r["method"] == PEFT and (group is None or r[group] == row[group]))
        for key in keys:
            mine, theirs = row.get(key), base.get(key)
            ok = isinstance(mine, int | float) and isinstance(theirs, int | float) and theirs
            row[f"{key}_x_peft"] = mine / theirs if ok else None  # type: ignore[operator]
    return rows


def _config_name(config: MethodConfig) -> str:
    if isinstance(config, LampConfig):
        return f"lamp l={config.length} r={config.rank} p={config.pool}"
    if isinstance(config, DptConfig):
        return f"dpt l={config.length} r={config.rank}"
    return f"prompt-tuning l={config.length}"


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
        rows = getattr(bench, section)()
        result["sections"][section] = {"rows": rows, "seconds": round(time.perf_counter() - tick, 1)}
    result["memory_method"] = bench.memory_how
    result["peft_score_gap"] = getattr(bench, "peft_score_gap", None)
    result["serving_check"] = getattr(bench, "serving_check", None)
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    return result

