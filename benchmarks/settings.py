"""What one benchmark run measures and on what: a frozen dataclass shared by `python -m benchmarks` and `lamp bench`."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from core.errors import ConfigError
from core.methods import METHODS, LampConfig
from core.spec import DEFAULT_STEPS, RECIPES, DataConfig, ModelConfig, TrainConfig
from core.tasks import BUILTIN_TASKS

SECTIONS = ("steps", "inference", "accuracy", "growth", "serving", "serving-http")
BUDGETS = ("steps", "time")


@dataclass(frozen=True)
class BenchSettings:
    model: str = ModelConfig.name
    """Hub id, local folder, or `default` (the offline SmolLM2-135M-Instruct)."""
    device: str = TrainConfig.device
    dtype: str = ModelConfig.dtype
    """Backbone dtype; the prompts' own parameters stay float32 (ours and PEFT's)."""
    threads: int | None = None
    """torch CPU threads; None leaves torch's default (recorded in the report either way)."""
    seed: int = TrainConfig.seed
    """Prompt init, data order and the batches every contender sees."""
    batch_size: int = TrainConfig.batch_size
    """Training examples per step for the step-time and memory table."""
    max_length: int = TrainConfig.max_length
    """Longest input in tokens, prompt excluded."""
    warmup: int = 1
    """Untimed steps before timing each contender."""
    repeats: int = 3
    """Timed steps (or inference calls) per contender; the report gives the median and the min-max spread."""
    length: int = LampConfig.length
    """l for every prompt in the step, inference and accuracy tables (PEFT's num_virtual_tokens)."""
    rank: int = LampConfig.rank
    pools: tuple[int, ...] = (1, 2, 4, 5, 10)
    """LAMP's pools p in the step table; each must divide `length`."""
    default_pool: int = LampConfig.pool
    """Our default p: used for inference, accuracy and growth."""
    infer_batch_sizes: tuple[int, ...] = (1, 16)
    growth_lengths: tuple[int, ...] = (20, 100, 500, 1000)
    growth_batch_size: int = 4
    """Smaller than `batch_size` so that PEFT at l=1000 fits a CPU's time budget."""
    task: str = str(DataConfig.task)
    """The built-in task every section reads (the offline ones: rotten_tomatoes, presidential_debates)."""
    accuracy_steps: int = DEFAULT_STEPS
    """Steps of the `steps` budget: a run's default."""
    accuracy_batch_size: int = TrainConfig.batch_size
    accuracy_train_examples: int | None = None
    """Cap on the training examples tokenised for the accuracy runs (None: the whole training split)."""
    eval_examples: int | None = None
    """Test examples scored (by ranking the label words) for each accuracy figure; None: the whole test split."""
    seeds: int = 3
    """Accuracy runs per contender and budget (seeds `seed`, `seed` + 1, ...): mean, spread and a 95% interval."""
    budgets: tuple[str, ...] = BUDGETS
    accuracy_methods: tuple[str, ...] = ()
    """The accuracy section's contenders by method name (`peft-pt` and core.methods.METHODS' names); empty: all of
    them. The bare model is always scored; the `time` budget comes from the slowest method that runs."""
    """`steps`: every contender trains the default steps; `time`: the training time the slowest needed for them."""
    lr: float = RECIPES["lamp"].lr
    """AdamW learning rate for every method in the accuracy runs (our measured default)."""
    serving_prompts: int = 4
    """K prompts answering the same queries in the serving section: by turns LAMP (l, r, default p) and prompt
    tuning (l), untrained, each from its own seed."""
    serving_queries: int = 64
    """Test inputs answered by each of the K prompts."""
    serving_batch_sizes: tuple[int, ...] = (1, 16)
    """Queries per call: each call answers them with all K prompts (batched: one forward of queries x K rows)."""
    http_prompts: tuple[int, ...] = (1, 4, 16)
    """K succeeded jobs the serving-http section's clients call by turns."""
    http_clients: tuple[int, ...] = (1, 8, 32)
    """Concurrent clients of the serving-http section."""
    http_requests: int = 64
    """Requests per (K, clients) setting (at least one per client)."""
    http_max_batch: int = 32
    http_max_wait_ms: float = 10.0
    """The batched server's `--max-batch` and `--max-wait-ms`."""
    sections: tuple[str, ...] = SECTIONS


QUICK: dict[str, Any] = {
    "batch_size": 8, "repeats": 2, "pools": (1, 4), "infer_batch_sizes": (1, 8), "growth_lengths": (20, 100, 500),
    "growth_batch_size": 2, "accuracy_steps": 10, "accuracy_batch_size": 4, "accuracy_train_examples": 2000,
    "eval_examples": 64, "seeds": 2, "budgets": ("steps",), "serving_queries": 32, "serving_batch_sizes": (1, 8),
    "http_prompts": (1, 4), "http_clients": (1, 8), "http_requests": 16,
}
"""`--quick`: a few minutes on a 2-core CPU; explicit flags still win."""


def make_settings(quick: bool = False, **given: Any) -> BenchSettings:
    """Defaults, then the quick preset, then every flag the user gave (None means not given)."""
    base = replace(BenchSettings(), **QUICK) if quick else BenchSettings()
    known = {f.name for f in fields(BenchSettings)}
    settings = replace(base, **{k: v for k, v in given.items() if k in known and v is not None})
    validate(settings)
    return settings


def validate(s: BenchSettings) -> None:
    """Raise ConfigError naming every bad value and its fix."""
    issues: list[str] = []
    if s.dtype not in ("float32", "bfloat16", "float16"):
        issues.append(f"dtype={s.dtype!r}: choose float32, bfloat16 or float16")
    for name in ("batch_size", "repeats", "length", "rank", "growth_batch_size", "accuracy_steps",
                 "accuracy_batch_size", "eval_examples", "default_pool", "serving_prompts", "serving_queries",
                 "seeds"):
        if getattr(s, name) is not None and getattr(s, name) < 1:
            issues.append(f"{name}={getattr(s, name)}: must be at least 1")
    if s.task not in BUILTIN_TASKS:
        issues.append(f"task={s.task!r}: choose a built-in task ({', '.join(BUILTIN_TASKS[:2])}, ...)")
    bad_budgets = [b for b in s.budgets if b not in BUDGETS] or ([] if s.budgets else ["(none)"])
    if bad_budgets:
        issues.append(f"budgets {bad_budgets}: choose from {', '.join(BUDGETS)}")
    known_methods = ("peft-pt", *METHODS)
    unknown_methods = [m for m in s.accuracy_methods if m not in known_methods]
    if unknown_methods:
        issues.append(f"accuracy methods {unknown_methods}: choose from {', '.join(known_methods)}")
    if s.warmup < 0:
        issues.append(f"warmup={s.warmup}: must be >= 0")
    if s.threads is not None and s.threads < 1:
        issues.append(f"threads={s.threads}: must be at least 1")
    bad = [p for p in (*s.pools, s.default_pool) if p < 1 or s.length % p]
    if bad:
        issues.append(f"pools {bad} do not divide length={s.length}; pick divisors of {s.length}")
    bad = [n for n in s.growth_lengths if n < s.rank or n % s.default_pool]
    if bad:
        issues.append(f"growth lengths {bad}: each must be a multiple of the default pool {s.default_pool} and at "
                      f"least the rank {s.rank}")
    if s.rank > s.length:
        issues.append(f"rank={s.rank} > length={s.length}: lower --rank")
    if any(b < 1 for b in s.infer_batch_sizes) or not s.infer_batch_sizes:
        issues.append(f"infer batch sizes {list(s.infer_batch_sizes)}: give positive sizes, e.g. 1,16")
    if any(b < 1 for b in s.serving_batch_sizes) or not s.serving_batch_sizes:
        issues.append(f"serving batch sizes {list(s.serving_batch_sizes)}: give positive sizes, e.g. 1,16")
    unknown = [x for x in s.sections if x not in SECTIONS]
    if unknown:
        issues.append(f"sections {unknown}: choose from {', '.join(SECTIONS)}")
    if not 0 < s.lr < 10:
        issues.append(f"lr={s.lr}: must be in (0, 10)")
    if issues:
        raise ConfigError("\n".join(issues))
