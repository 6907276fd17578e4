"""A short measured probe of one run's settings (`lamp estimate --probe`): load the backbone, build the prompt as
fit() does, take a few real training steps on the run's own batches, and report seconds per step and peak memory."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from core.backbone import Backbone, load_backbone, resolve_device
from core.batching import Codec, Encoded, collate, length_bucketed_order
from core.events import peak_memory_mb
from core.measure import PeakMemory, time_calls
from core.methods import build_prompt
from core.scoring import loss_fn
from core.spec import RunSpec
from core.train import load_task, optimizer_step, param_groups
from core.vocab import common_token_ids


@dataclass(frozen=True)
class Probe:
    seconds_per_step: float
    activations_mb: float
    """Peak above the loaded model during the steps (CUDA: allocated; CPU: resident high-water mark)."""
    peak_mb: float
    """The whole process's peak (CUDA: allocated, model included; CPU: resident)."""
    memory_how: str
    steps: int


def probe(spec: RunSpec, *, steps: int = 3) -> Probe:
    """Time `steps` training steps (after one untimed) on batches of median width from the run's training data."""
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    task = load_task(spec.data)
    backbone = load_backbone(spec.model, resolve_device(spec.train.device))
    codec = Codec.for_backbone(backbone, task.answer_cue, spec.train.max_length)
    encoded = codec.encode_many([(e.source, e.target) for e in task.train[:2000]])
    lengths = [len(e.source) + len(e.target) for e in encoded]
    batches = length_bucketed_order(lengths, spec.train.batch_size, random.Random(spec.train.seed))
    batches = sorted((b for b in batches if len(b) == spec.train.batch_size),
                     key=lambda b: max(lengths[i] for i in b)) or batches
    batch = [encoded[i] for i in batches[len(batches) // 2]]  # a batch of median width
    step = _training_step(spec, backbone)
    with PeakMemory(backbone.device) as memory:
        spread = time_calls(lambda: step(batch), backbone.device, warmup=1, repeats=steps)
    return Probe(spread.median, memory.mib, peak_memory_mb(backbone.device), memory.how, steps)


def _training_step(spec: RunSpec, backbone: Backbone) -> Any:
    """One optimizer step of the run's prompt on a batch, built as fit() builds it (prompt, AdamW groups)."""
    table = backbone.embedding_table()
    common = common_token_ids(backbone.tokenizer)
    prompt, _ = build_prompt(spec.method, table, common, torch.Generator().manual_seed(spec.train.seed))
    rms = table[torch.tensor(common)].pow(2).mean().sqrt().item()
    del table
    start = {n: p.detach().clone() for n, p in prompt.named_parameters() if p.requires_grad}
    prompt.to(backbone.device)
    params = [p for p in prompt.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(prompt, spec.lr, spec.lr_scaling, start, rms),
                                  weight_decay=spec.train.weight_decay)

    def step(items: list[Encoded]) -> None:
        batch = collate(items, backbone.family, backbone.tokenizer.pad_token_id, backbone.device)
        optimizer_step(loss_fn(backbone, prompt(), batch), params, optimizer, spec.train.grad_clip)

    return step
