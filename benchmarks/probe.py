"""A short measured probe of one run's settings: load the backbone, build the prompt, take a few real training
steps on the run's own batches, and report seconds per step and peak memory (`lamp estimate --probe`)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from benchmarks.contenders import Ours
from benchmarks.measure import PeakMemory, time_calls
from core.backbone import load_backbone, resolve_device
from core.batching import Codec, length_bucketed_order
from core.spec import RunSpec
from core.train import load_task
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
    table = backbone.embedding_table()
    ours = Ours(backbone, spec.method, table, common_token_ids(backbone.tokenizer), spec.train.seed, spec.lr)
    del table
    with PeakMemory(backbone.device) as memory:
        spread = time_calls(lambda: ours.step(batch), backbone.device, warmup=1, repeats=steps)
    from core.events import peak_memory_mb

    return Probe(spread.median, memory.mib, peak_memory_mb(backbone.device), memory.how, steps)
