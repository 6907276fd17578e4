"""The settings of one tuning run, shared by the CLI, the job queue and the dashboard.

Every face builds the same frozen dataclasses; the store keeps `spec_to_dict()` as JSON. `validate_spec` collects
every problem with the settings alone (no file is read) and raises once, each problem under its setting's name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from core.errors import ConfigError, Problem
from core.methods import LampConfig, MethodConfig, method_from_dict, method_to_dict
from core.tasks.eval_labels import EvalLabels

Dtype = Literal["float32", "bfloat16", "float16"]
Quantize = Literal["none", "4bit"]
TaskKind = Literal["auto", "classification", "generation"]
PromptInit = Literal["vocab", "text"]
LrScaling = Literal["absolute", "relative"]


@dataclass(frozen=True)
class ModelConfig:
    name: str = "default"
    """Hub id, local folder, or `default` (the offline SmolLM2-135M-Instruct)."""
    dtype: Dtype = "float32"
    """Dtype of the frozen backbone. The prompt's own parameters are always float32."""
    quantize: Quantize = "none"
    """`4bit`: bitsandbytes NF4 with double quantization (CUDA only), as the paper did for 7B/11B models."""


@dataclass(frozen=True)
class DataConfig:
    task: str | None = "rotten_tomatoes"
    """Built-in task name; None when training on a user's own files."""
    data_dir: str | None = None
    """Local copy of a GLUE/SuperGLUE data set (save_to_disk folder or per-split files); None = the hub."""
    train_file: str | None = None
    """A user's training data: CSV, TSV, JSONL or Parquet."""
    eval_file: str | None = None
    text_column: str | None = None
    template: str | None = None
    """A format string over several columns, e.g. `question: {question} context: {context}`."""
    label_column: str | None = None
    kind: TaskKind = "auto"
    max_train_examples: int | None = None
    max_eval_examples: int | None = 200
    """Validation examples scored at each periodic evaluation (the final test uses all of the test split)."""
    max_test_examples: int | None = None
    split_seed: int = 42
    """Seed of the train / validation / test split (built-in tasks, and the hold-out of a file without --eval).
    Fixed apart from the run's seed, so runs with different seeds are scored on the same test set."""
    strict: bool = False
    """A user's file: refuse it for one row with an empty input or label. False: such rows are skipped and
    reported (how many, the first rows), unless they are more than a fifth of the file, which is refused."""
    eval_labels: EvalLabels | None = None
    """A label only the evaluation file has: `add` it to the label words (scored, never trained on) or `drop` those
    rows (reported). None: the file is refused, naming each such label and this choice."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int | None = None
    """Optimizer steps; if both steps and epochs are None, 150 steps."""
    epochs: float | None = None
    batch_size: int = 16
    lr: float | None = None
    """None: the method's default measured on the default model (see README, "Choosing defaults")."""
    weight_decay: float = 1e-5
    warmup_steps: int = 0
    grad_clip: float = 1.0
    max_length: int = 256
    """Longest input in tokens, prompt excluded; longer inputs are truncated from the left... of the source."""
    eval_every: int = 50
    checkpoint_every: int = 25
    seed: int = 42
    init_from: str | None = None
    """Warm start (prompt transfer): the artifact directory of a finished run whose prompt C (before pooling) this
    run starts from, on a backbone of the same hidden size and with the same length l. None: a fresh prompt from
    the vocabulary (LAMP, prompt tuning) or random factors (DPT)."""
    prompt_init: PromptInit | None = None
    """Where a fresh prompt P starts (None: the method's measured default, RECIPES). `vocab`: the embeddings of l
    tokens sampled from the 5,000 most common ones (the paper's init; DPT: random factors). `text`: the embeddings
    of `prompt_init_text`'s tokens, each repeated p times (the method's pool) and tiled to l, so that the pooled
    prompt reads the text; LAMP and DPT start at the best rank-r approximation of that P."""
    prompt_init_text: str | None = None
    """The text of `prompt_init=text`; None: an instruction built from the task (its answer cue and label words,
    e.g. `Classify the sentiment: negative or positive.`)."""
    lr_scaling: LrScaling | None = None
    """None: the method's measured default (RECIPES). `absolute`: every trainable tensor takes `lr`. `relative`:
    each tensor takes `lr` times the RMS of its starting values, so `lr` is the fraction of its own size a tensor
    moves per step, whatever the backbone's embedding scale and however a method splits its prompt into factors
    (LAMP's U, Q and V start at sizes tens of times apart)."""
    device: str = "auto"
    """`auto` (CUDA if present, else CPU), `cpu`, `cuda`, `cuda:N`."""
    threads: int | None = None
    """CPU threads for torch; None leaves torch's default."""
    final_eval: bool = True
    """Score the test split at the end (with the best checkpoint)."""
    generate_eval: bool = False
    """Also score the test split of a classification task by generation (exact match of the greedy answer), beside
    ranking its label words, which is the metric. Off by default: greedy decoding costs as much again as ranking."""
    mlflow_uri: str | None = None
    """An MLflow tracking URI the run logs to (`sqlite:///runs/mlflow.db` works offline; core.tracking)."""
    tensorboard_dir: str | None = None
    """A folder for TensorBoard event files (one subfolder per run)."""


@dataclass(frozen=True)
class Recipe:
    """A method's measured training defaults (README, "Choosing defaults"): what a run gets for the settings it
    leaves at None. The paper's lr 0.3 was tuned on T5 and blows the prompt up on small-embedding decoder-only
    models; a rate relative to each tensor's starting RMS follows the backbone's embedding scale (SmolLM2's rows
    have RMS 0.12, Gemma 3's 1.03) and moves LAMP's U, Q and V by the same fraction of their size."""

    lr: float
    lr_scaling: LrScaling
    prompt_init: PromptInit


MLFLOW_ENV, TENSORBOARD_ENV = "LAMP_MLFLOW_URI", "LAMP_TENSORBOARD_DIR"
"""Where every run logs unless it says otherwise (the CLI's and the dashboard's default)."""

MEASURED = Recipe(lr=0.08, lr_scaling="relative", prompt_init="text")
"""Measured over seeds on two tasks and two backbone families (README, "Choosing defaults")."""
RECIPES = {
    "lamp": MEASURED,
    "prompt-tuning": MEASURED,
    "dpt": MEASURED,
    "residual-pt": Recipe(lr=0.08, lr_scaling="relative", prompt_init="vocab"),
    "ulpt": Recipe(lr=0.08, lr_scaling="relative", prompt_init="vocab"),
    "dept": MEASURED,
}
PAPER = Recipe(lr=0.3, lr_scaling="absolute", prompt_init="vocab")
"""The paper's T5 recipe, for comparison: one absolute rate, the start sampled from common tokens."""


def recipe_words(method: str) -> str:
    """A method's recipe in a few words, for forms and help texts."""
    r = RECIPES[method]
    rate = (f"lr {r.lr} x each tensor's starting RMS" if r.lr_scaling == "relative" else f"lr {r.lr}")
    start = "started from the task's words" if r.prompt_init == "text" else "started from common tokens"
    return f"{rate}, {start}"


DEFAULT_LR = {name: recipe.lr for name, recipe in RECIPES.items()}
DEFAULT_STEPS = 150
"""Optimizer steps of a run that gives neither steps nor epochs."""
DEFAULT_METHOD = LampConfig.name


@dataclass(frozen=True)
class RunSpec:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=LampConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def recipe(self) -> Recipe:
        return RECIPES[self.method.name]

    @property
    def lr(self) -> float:
        return self.train.lr if self.train.lr is not None else self.recipe.lr

    @property
    def lr_scaling(self) -> LrScaling:
        return self.train.lr_scaling or self.recipe.lr_scaling

    @property
    def prompt_init(self) -> PromptInit:
        """Where a fresh prompt starts; a warm start (`init_from`) replaces it."""
        return self.train.prompt_init or self.recipe.prompt_init


def spec_to_dict(spec: RunSpec) -> dict[str, Any]:
    return {
        "model": asdict(spec.model),
        "method": method_to_dict(spec.method),
        "data": asdict(spec.data),
        "train": asdict(spec.train),
    }


def _build(cls: Any, data: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**data)


def spec_from_dict(data: dict[str, Any]) -> RunSpec:
    return RunSpec(
        model=_build(ModelConfig, data.get("model", {}), "model"),
        method=method_from_dict(data.get("method", {"name": "lamp"})),
        data=_build(DataConfig, data.get("data", {}), "data"),
        train=_build(TrainConfig, data.get("train", {}), "train"),
    )


def with_train(spec: RunSpec, **changes: Any) -> RunSpec:
    return replace(spec, train=replace(spec.train, **changes))


def validate_spec(spec: RunSpec) -> None:
    """Raise ConfigError listing every problem with the settings alone, each under its setting's name. Pure: it
    reads no file (core.inputs.check_inputs checks what a run reads, once per submission)."""
    problems = [*_model_problems(spec.model), *_data_problems(spec.data), *_train_problems(spec)]
    if problems:
        raise ConfigError(*problems)


def _model_problems(m: ModelConfig) -> list[Problem]:
    out: list[Problem] = []
    if not m.name:
        out.append(("model", "model: empty; give a hub id, a local folder or `default`"))
    if m.dtype not in ("float32", "bfloat16", "float16"):
        out.append(("dtype", f"dtype={m.dtype!r}: choose float32, bfloat16 or float16"))
    if m.quantize not in ("none", "4bit"):
        out.append(("quantize", f"quantize={m.quantize!r}: choose none or 4bit"))
    return out


def _data_problems(d: DataConfig) -> list[Problem]:
    out: list[Problem] = []
    if d.task is None and d.train_file is None:
        out.append(("task", "data: give a built-in --task or your own --train FILE"))
    if d.task is not None and d.train_file is not None:
        out.append(("task", f"data: both --task {d.task} and --train {d.train_file} given; pick one"))
    if d.text_column and d.template:
        out.append(("text_column", "data: give --text-column or --template, not both"))
    if d.kind not in ("auto", "classification", "generation"):
        out.append(("kind", f"kind={d.kind!r}: choose auto, classification or generation"))
    if d.eval_labels not in (None, "add", "drop"):
        out.append(("eval_labels", f"eval_labels={d.eval_labels!r}: choose add or drop"))
    for name in ("max_train_examples", "max_eval_examples", "max_test_examples"):
        value = getattr(d, name)
        if value is not None and value < 1:
            out.append((name, f"{name}={value}: must be at least 1 (or unset for all)"))
    return out


def _train_problems(spec: RunSpec) -> list[Problem]:
    t, out = spec.train, list[Problem]()
    if t.steps is not None and t.steps < 1:
        out.append(("steps", f"steps={t.steps}: must be at least 1"))
    if t.epochs is not None and t.epochs <= 0:
        out.append(("epochs", f"epochs={t.epochs}: must be positive"))
    if t.steps is not None and t.epochs is not None:
        out.append(("steps", "give --steps or --epochs, not both"))
    if t.batch_size < 1:
        out.append(("batch_size", f"batch_size={t.batch_size}: must be at least 1; the paper uses 16"))
    if t.lr is not None and not 0 < t.lr < 10:
        out.append(("lr", f"lr={t.lr}: must be in (0, 10); the default for {spec.method.name} is {spec.recipe.lr}"))
    if t.weight_decay < 0:
        out.append(("weight_decay", f"weight_decay={t.weight_decay}: must be >= 0; the paper uses 1e-5"))
    if t.warmup_steps < 0:
        out.append(("warmup_steps", f"warmup_steps={t.warmup_steps}: must be >= 0"))
    if t.grad_clip < 0:
        out.append(("grad_clip", f"grad_clip={t.grad_clip}: must be >= 0 (0 turns clipping off)"))
    if t.max_length < 8:
        out.append(("max_length", f"max_length={t.max_length}: must be at least 8 tokens; the paper uses 256"))
    for name in ("eval_every", "checkpoint_every"):
        if getattr(t, name) < 1:
            out.append((name, f"{name}={getattr(t, name)}: must be at least 1 step"))
    if not (t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:")):
        out.append(("device", f"device={t.device!r}: choose auto, cpu, cuda or cuda:N"))
    if t.threads is not None and t.threads < 1:
        out.append(("threads", f"threads={t.threads}: must be at least 1"))
    if spec.model.quantize == "4bit" and t.device == "cpu":
        out.append(("quantize", "quantize=4bit needs a CUDA device (bitsandbytes NF4); drop --quantize or use "
                                "--device cuda"))
    return out + _start_problems(spec)


def _start_problems(spec: RunSpec) -> list[Problem]:
    """Where the prompt starts and how fast each of its tensors moves."""
    t, out = spec.train, list[Problem]()
    if t.prompt_init not in (None, "vocab", "text"):
        out.append(("prompt_init", f"prompt_init={t.prompt_init!r}: choose vocab or text"))
    if t.prompt_init_text is not None and not t.prompt_init_text.strip():
        out.append(("prompt_init_text", "prompt_init_text: empty; give a text or leave it out for one built from "
                                        "the task"))
    if t.prompt_init == "text" and t.init_from is not None:
        out.append(("prompt_init", "prompt_init=text and init_from both choose the starting prompt; give one"))
    if t.init_from is not None and isinstance(spec.method, LampConfig) and spec.method.init == "paper":
        out.append(("init_from", "init_from with init=paper: Q = S would start C at U S^2 V^T, not at the source "
                                 "prompt; use --init balanced"))
    if t.lr_scaling not in (None, "absolute", "relative"):
        out.append(("lr_scaling", f"lr_scaling={t.lr_scaling!r}: choose absolute or relative"))
    return out
