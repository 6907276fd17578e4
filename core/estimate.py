"""What a run will cost, before it starts: trainable parameters, the sequence the model reads, peak training memory
and time per step.

Memory is a formula over the backbone's shape (read from its config on PyTorch's meta device: no weights loaded):
the weights at the chosen dtype (NF4 for `4bit`), plus the activations autograd keeps for the backward pass into the
prompt, per token and layer (Llama-style block):

    8 d + 4 kv + 4 ffn  values  (norm inputs and outputs, q/k/v and their rotated copies, attention output, the
                                 MLP's gate, up, activation and product)
    + heads x context   values  on the CPU, where scaled-dot-product attention keeps its score matrix

times the batch's tokens: B x (the widest batch's padded width) + the prompt's tokens (once on the CPU, where a
prompt shared by the batch runs through the model once; B times on CUDA), plus the LM head's log-probabilities at
the label positions, times a measured overhead factor. The CPU adds the process's own runtime (torch,
transformers). Checked against probes on the default model in README, "Cost before launch". Time per step comes
from earlier jobs on the same model and data (scaled by tokens per step) or from a short probe
(`lamp estimate --probe`).
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from core.spec import RunSpec

CPU_RUNTIME_MB = 364.0
"""Resident memory of a training process before the model is loaded (Python, torch, transformers and core
imported), measured on this project's CPU machine."""
ACTIVATION_OVERHEAD = 1.45
"""Measured activations over the formula's count: the allocator's slack and the backward pass's transient buffers.
Calibrated once (default model, LAMP l=100 r=8 p=4, batch 16, CPU: a probe measured 1,338 MiB where the formula
counts 910 MiB) and checked on other settings in README, "Cost before launch"."""
WIDTH_SAMPLE = 2000
"""Training examples tokenised to learn the data's batch widths."""


@dataclass(frozen=True)
class Shape:
    family: str
    layers: int
    """Decoder layers (decoder-only) or encoder + decoder layers (encoder-decoder)."""
    hidden: int
    ffn: int
    heads: int
    kv_dim: int
    vocab: int
    params: int
    linear_params: int
    """Weights inside nn.Linear layers: what 4-bit quantisation packs."""


def _config_value(config: Any, *names: str, default: int = 0) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return default


@lru_cache(maxsize=16)
def model_shape(name: str) -> Shape:
    """The backbone's shape from its config, its parameters counted on the meta device (nothing is loaded)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from core.backbone import resolve_model_source

    config = AutoConfig.from_pretrained(resolve_model_source(name))
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    hidden = _config_value(config, "hidden_size", "d_model", "n_embd")
    heads = _config_value(config, "num_attention_heads", "num_heads", "n_head", default=1)
    head_dim = _config_value(config, "head_dim", "d_kv", default=hidden // max(heads, 1))
    kv_heads = _config_value(config, "num_key_value_heads", default=heads)
    layers = _config_value(config, "num_hidden_layers", "num_layers", "n_layer")
    if seq2seq:
        layers += _config_value(config, "num_decoder_layers", default=layers)
    ffn = _config_value(config, "intermediate_size", "d_ff", "n_inner", default=4 * hidden)
    return Shape("seq2seq" if seq2seq else "causal", layers, hidden, ffn, heads, kv_heads * head_dim,
                 _config_value(config, "vocab_size"), params, linear)


@dataclass(frozen=True)
class Widths:
    """Tokens per row of the training batches, prompt excluded."""

    mean: float
    """Mean padded batch width (batches made as training makes them: sorted by length within windows)."""
    widest: int
    """The widest batch of the sampled epoch: the step that sets the memory peak."""
    longest: int
    label_tokens: float
    """Answer tokens per row (where the LM head runs)."""
    train_examples: int
    """The whole training split (for --epochs)."""
    validation_examples: int = 0
    """The validation split (each periodic evaluation scores up to max_eval_examples of it)."""
    test_examples: int = 0
    """The test split (scored once at the end, up to max_test_examples)."""


def data_widths(spec: RunSpec) -> Widths:
    """Tokenise (a sample of) the run's training data the way training does and measure its batch widths."""
    from transformers import AutoTokenizer

    from core.backbone import resolve_model_source
    from core.batching import Codec, length_bucketed_order
    from core.train import load_task

    task = load_task(spec.data)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(spec.model.name))
    shape = model_shape(spec.model.name)
    codec = Codec(tokenizer, shape.family, task.answer_cue, spec.train.max_length)  # type: ignore[arg-type]
    examples = task.train[:WIDTH_SAMPLE]
    encoded = codec.encode_many([(e.source, e.target) for e in examples])
    causal = shape.family == "causal"
    lengths = [len(e.source) + (len(e.target) if causal else 0) for e in encoded]
    batches = length_bucketed_order(lengths, spec.train.batch_size, random.Random(spec.train.seed))
    widths = [max(lengths[i] for i in batch) for batch in batches if batch]
    return Widths(statistics.fmean(widths), max(widths), max(lengths), statistics.fmean(len(e.target) for e in encoded),
                  len(task.train), len(task.validation), len(task.test))


@dataclass(frozen=True)
class Estimate:
    trainable_params: int
    prompt_tokens: int
    """l/p for LAMP, l otherwise: what the model reads."""
    sequence_tokens: float
    """Prompt tokens + the mean padded width of a training batch (memory is estimated at the widest batch)."""
    longest_sequence: int
    """Prompt tokens + the longest training input (capped by max_length)."""
    weights_mb: float
    activations_mb: float
    runtime_mb: float
    peak_mb: float
    device: str
    seconds_per_step: float | None = None
    run_seconds: float | None = None
    """Training steps alone."""
    eval_seconds: float | None = None
    """Everything else a job does (loading, the validations, the test), from earlier jobs' measured rate."""
    job_seconds: float | None = None
    """The whole job's wall time: run_seconds + eval_seconds."""
    timing: str = "no timing: no earlier job on this model and data; `lamp estimate --probe` measures one"

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _dtype_bytes(spec: RunSpec) -> tuple[float, float]:
    """(bytes per weight outside 4-bit linears, bytes per activation value)."""
    size = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}[spec.model.dtype]
    return size, 2.0 if spec.model.quantize == "4bit" else size


def estimate(spec: RunSpec, widths: Widths, *, device: str | None = None) -> Estimate:
    """Peak training memory of `spec` with batches of these widths. `device`: cpu or cuda (default: the spec's,
    `auto` meaning CUDA when this machine has it)."""
    shape = model_shape(spec.model.name)
    kind = device or spec.train.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    kind = "cuda" if kind.startswith("cuda") else "cpu"
    method = spec.method
    n = int(getattr(method, "prompt_tokens", method.length))
    weight_bytes, act_bytes = _dtype_bytes(spec)
    if spec.model.quantize == "4bit":  # NF4: 4 bits a weight plus double-quantised block scales (~0.13 bit)
        weights = shape.linear_params * (0.5 + 0.13 / 8) + (shape.params - shape.linear_params) * weight_bytes
    else:
        weights = shape.params * weight_bytes
    b, width = spec.train.batch_size, widths.widest  # memory peaks at the widest batch
    # A prompt shared by the batch runs once on the CPU (core.scoring.shared_prompt_cache), per row on CUDA.
    tokens = b * width + (n if kind == "cpu" and shape.family == "causal" else b * n)
    per_token = float(8 * shape.hidden + 4 * shape.kv_dim + 4 * shape.ffn)
    if kind == "cpu":
        per_token += shape.heads * (width + n)  # the score matrix the CPU attention keeps
    activations = tokens * shape.layers * per_token * act_bytes
    activations += 3 * b * widths.label_tokens * shape.vocab * 4  # float32 logits, log-softmax and its gradient
    activations *= ACTIVATION_OVERHEAD
    runtime = CPU_RUNTIME_MB if kind == "cpu" else 0.0
    mb = 2**20
    return Estimate(
        trainable_params=method.trainable_params(shape.hidden), prompt_tokens=n, sequence_tokens=n + widths.mean,
        longest_sequence=n + min(widths.longest, spec.train.max_length), weights_mb=weights / mb,
        activations_mb=activations / mb, runtime_mb=runtime, peak_mb=weights / mb + activations / mb + runtime,
        device=kind,
    )


def tokens_per_step(spec: RunSpec, widths: Widths) -> float:
    n = int(getattr(spec.method, "prompt_tokens", spec.method.length))
    return spec.train.batch_size * (widths.mean + n)


def scored_examples(spec: RunSpec, widths: Widths) -> int:
    """Examples a job scores besides training: each periodic validation and the test split at the end."""
    from core.train import total_steps

    steps = total_steps(spec, widths.train_examples)
    every = spec.train.eval_every or steps
    evaluations = steps // every + (0 if steps % every == 0 else 1)
    validation = min(widths.validation_examples, spec.data.max_eval_examples or widths.validation_examples)
    test = min(widths.test_examples, spec.data.max_test_examples or widths.test_examples) if spec.train.final_eval \
        else 0
    return evaluations * validation + test


def with_eval_timing(est: Estimate, eval_seconds: float) -> Estimate:
    """`est` with the job's time beyond training, and the whole job's."""
    from dataclasses import replace

    job = (est.run_seconds or 0.0) + eval_seconds if est.run_seconds is not None else None
    return replace(est, eval_seconds=eval_seconds, job_seconds=job)


def with_timing(spec: RunSpec, widths: Widths, est: Estimate, seconds_per_step: float, how: str) -> Estimate:
    """`est` with a time per step, and the whole run's training time at the spec's number of steps."""
    from dataclasses import replace

    from core.train import total_steps

    steps = total_steps(spec, widths.train_examples)
    return replace(est, seconds_per_step=seconds_per_step, run_seconds=seconds_per_step * steps, timing=how)
