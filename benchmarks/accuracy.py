"""The accuracy section: every method at its own defaults, over seeds, scored on the whole test split.

- Contenders: the bare model (zero-shot); LAMP, prompt tuning and DPT at what a run gets when it leaves its settings
  unset (the method configs' defaults and core.spec.RECIPES: lr, lr scaling, prompt init), each through
  core.train.fit, which keeps the best validation checkpoint; PEFT's prompt tuning (the outside reference) by an
  explicit loop on exactly fit()'s batches, schedule, optimizer settings and validation schedule, keeping its best
  validation prompt the same way. Its loss is PEFT's, from logits at the answer positions only (PeftPromptTuning's
  `answers_only`: the same numbers, without the language-model head at every other position).
- Seeds: `seeds` runs of each (s.seed, s.seed + 1, ...). The seed moves the prompt's init and the data order; the
  split stays (DataConfig.split_seed), so every run is scored on the same test set.
- Budgets: `steps` gives each contender the default steps; `time` gives each of our methods the training time the
  slowest of them needed for those steps, as steps = that time / its own seconds per step (the median step of its
  `steps` runs, which a passing load on the machine barely moves). PEFT, the outside reference, is not one of the
  methods a user picks between here, so it sets no budget and keeps its `steps` runs; a run whose `time` steps equal
  its `steps` steps is the same run and is not repeated.
- Figures: mean, standard deviation and a 95% interval (Student's t over the seeds) of test accuracy, ranked label
  words.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from benchmarks.contenders import PeftPromptTuning
from core.artifact import load_artifact
from core.batching import length_bucketed_order
from core.evaluate import evaluate
from core.events import Event
from core.methods import METHODS, MethodConfig, PromptTuningConfig
from core.spec import RECIPES, DataConfig, ModelConfig, RunSpec, TrainConfig
from core.stats import interval95
from core.tasks import Example
from core.train import fit, lr_at

if TYPE_CHECKING:
    from benchmarks.run import Bench

PEFT = "peft-pt"
Row = dict[str, Any]
@dataclass(frozen=True)
class Run:
    accuracy: float
    step_s: float
    steps: int
    best_step: int


def method_defaults() -> list[MethodConfig]:
    """Each method as a run gets it with every knob unset."""
    return [cls() for cls in METHODS.values()]


KNOB_LETTERS = (("length", "l"), ("rank", "r"), ("pool", "p"), ("bottleneck", "m"), ("positions", "s"))


def contender_name(config: MethodConfig) -> str:
    """The method and its size knobs in its formula's letters: `lamp l=100 r=8 p=4`, `dept l=60 r=30 s=256`."""
    fields = config.__dataclass_fields__
    return " ".join([config.name, *(f"{letter}={getattr(config, name)}" for name, letter in KNOB_LETTERS
                                    if name in fields)])


class AccuracyProtocol:
    """One task on one loaded backbone: train and score each contender at each seed and budget."""

    def __init__(self, bench: Bench) -> None:
        self.bench, self.s = bench, bench.s
        self.data = DataConfig(task=self.s.task, max_train_examples=self.s.accuracy_train_examples,
                               max_test_examples=self.s.eval_examples)
        self.task = bench.task
        self.test = self.task.test[: self.s.eval_examples]
        self.validation = self.task.validation[: self.data.max_eval_examples]

    def score(self, prompt: torch.Tensor | None, examples: list[Example], offset: torch.Tensor | None = None
              ) -> float:
        metrics, _ = evaluate(self.bench.backbone, prompt, self.bench.codec, self.task, examples, generate=False,
                              offset=offset)
        return float(metrics["accuracy"])

    def train_settings(self, steps: int, seed: int) -> TrainConfig:
        s = self.s
        return TrainConfig(steps=steps, batch_size=s.accuracy_batch_size, max_length=s.max_length,
                           eval_every=min(50, steps), checkpoint_every=steps, seed=seed,
                           device=str(self.bench.device), threads=s.threads, generate_eval=False)

    def ours(self, config: MethodConfig, steps: int, seed: int) -> Run:
        spec = RunSpec(model=ModelConfig(self.s.model, self.s.dtype),  # type: ignore[arg-type]
                       method=config, data=self.data, train=self.train_settings(steps, seed))
        folder = self.bench.out / "accuracy" / f"{_slug(contender_name(config))}-{steps}-s{seed}"
        step_times: list[float] = []

        def on_event(event: Event) -> None:
            if event.kind == "step":
                step_times.append(event.data["step_seconds"])

        result = fit(spec, folder, on_event=on_event, backbone=self.bench.backbone)
        artifact = load_artifact(result.artifact)
        prompt, offset = artifact.prompt().to(self.bench.device), artifact.offset()
        score = self.score(prompt, self.test, None if offset is None else offset.to(self.bench.device))
        return Run(score, statistics.median(step_times), result.steps, result.best_step)

    def peft(self, steps: int, seed: int) -> Run:
        """PEFT prompt tuning at prompt tuning's recipe, on fit()'s batches, schedule and validation steps."""
        t, recipe = self.train_settings(steps, seed), RECIPES["prompt-tuning"]
        b = self.bench
        examples = self.task.train[: self.s.accuracy_train_examples]
        encoded = b.codec.encode_many([(e.source, e.target) for e in examples])
        lengths = [len(e.source) + len(e.target) for e in encoded]
        peft = PeftPromptTuning(b.backbone, PromptTuningConfig().length, seed, recipe.lr, recipe.lr_scaling,
                                answers_only=True)
        epoch, position, step_times = 0, 0, []
        best: tuple[float, int, torch.Tensor] | None = None
        batches = length_bucketed_order(lengths, t.batch_size, random.Random(seed))
        for step in range(steps):
            if position >= len(batches):  # as fit(): a new order from the seed and the epoch number
                epoch, position = epoch + 1, 0
                batches = length_bucketed_order(lengths, t.batch_size, random.Random(seed + epoch))
            for group in peft.optimizer.param_groups:
                group["lr"] = lr_at(step, group["base_lr"], t.warmup_steps, steps)
            tick = time.perf_counter()
            peft.step([encoded[i] for i in batches[position]])
            step_times.append(time.perf_counter() - tick)
            position += 1
            if (step + 1) % t.eval_every == 0 or step + 1 == steps:
                value = self.score(peft.prompt(), self.validation)
                b.log(f"    {PEFT} seed {seed} step {step + 1}/{steps}: validation {value:.3f} "
                      f"({statistics.median(step_times):.2f} s/step)")
                if best is None or value > best[0]:
                    best = (value, step + 1, peft.prompt().clone())
        assert best is not None
        peft.close()
        return Run(self.score(best[2], self.test), statistics.median(step_times), steps, best[1])

    def run(self, name: str, steps: int, seed: int) -> Run:
        configs = {contender_name(c): c for c in method_defaults()}
        return self.peft(steps, seed) if name == PEFT else self.ours(configs[name], steps, seed)


def accuracy_section(bench: Bench) -> list[Row]:
    s = bench.s
    protocol = AccuracyProtocol(bench)
    seeds = [s.seed + i for i in range(s.seeds)]
    names = [n for n in (PEFT, *(contender_name(c) for c in method_defaults()))
             if not s.accuracy_methods or n.split()[0] in s.accuracy_methods]
    bench.log(f"accuracy: {s.task}, {len(protocol.test)} test examples ranked, seeds {seeds}, budgets "
              f"{list(s.budgets)}, {s.accuracy_steps} steps of batch {s.accuracy_batch_size}")
    bare = protocol.score(None, protocol.test)
    bench.log(f"  bare model: {bare:.3f}")
    rows: list[Row] = [_row("bare model: zero-shot", "floor", "-", [bare], [], [], [])]
    runs: dict[tuple[str, str], list[Run]] = {}
    for budget in s.budgets:
        for name in names:
            if budget == "time" and name == PEFT:
                continue  # the outside reference sets no budget and keeps its `steps` runs
            steps = _steps_for(budget, name, runs, s.accuracy_steps)
            for i, seed in enumerate(seeds):
                done = runs.get(("steps", name), [])
                same = i < len(done) and done[i].steps == steps  # the same run: not repeated
                run = done[i] if same else protocol.run(name, steps, seed)
                runs.setdefault((budget, name), []).append(run)
                bench.log(f"  {budget} {name} seed {seed}: {run.accuracy:.3f} after {run.steps} steps "
                          f"({run.step_s:.2f} s/step, best validation at step {run.best_step})")
            done = runs[(budget, name)]
            rows.append(_row(name, PEFT if name == PEFT else name.split()[0], budget, [r.accuracy for r in done],
                             [r.step_s for r in done], [r.steps for r in done], seeds))
    return with_peft_ratios(rows)


def _steps_for(budget: str, name: str, runs: dict[tuple[str, str], list[Run]], default_steps: int) -> int:
    """`steps`: the default. `time`: the slowest of our methods' training seconds for the default steps, over this
    one's own seconds per step (both the median step over the seeds of the `steps` runs)."""
    if budget == "steps":
        return default_steps
    step_s = {n: statistics.median(r.step_s for r in rs)
              for (b, n), rs in runs.items() if b == "steps" and n != PEFT}
    if not step_s:  # PEFT alone: the outside reference sets no budget
        return default_steps
    return max(1, math.floor(max(step_s.values()) * default_steps / step_s[name]))


def _row(name: str, method: str, budget: str, accuracies: list[float], step_s: list[float], steps: list[int],
         seeds: list[int]) -> Row:
    mean, std, half = interval95(accuracies)
    return {"contender": name, "method": method, "budget": budget, "seeds": len(accuracies), "accuracy": mean,
            "accuracy_std": std, "accuracy_ci95": half, "accuracy_low": mean - half, "accuracy_high": mean + half,
            "per_seed": [round(a, 4) for a in accuracies], "seed_list": seeds,
            "steps": steps[0] if steps else 0, "step_s": statistics.median(step_s) if step_s else None,
            "train_s": statistics.fmean(a * b for a, b in zip(step_s, steps, strict=True)) if step_s else None}


def with_peft_ratios(rows: list[Row]) -> list[Row]:
    """`accuracy_x_peft` and `step_s_x_peft` over the PEFT row of the same budget (the bare model: the `steps`
    budget's)."""
    base = {r["budget"]: r for r in rows if r["method"] == PEFT}
    for row in rows:
        peft = base.get(row["budget"]) or base.get("steps")
        for key in ("accuracy", "step_s"):
            mine, theirs = row.get(key), peft.get(key) if peft else None
            row[f"{key}_x_peft"] = mine / theirs if mine is not None and theirs else None
    return rows


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")

