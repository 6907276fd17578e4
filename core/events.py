"""Events that the training loop emits through one callback (progress bar, job writer, UI are all listeners)."""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

EventKind = Literal["start", "phase", "step", "eval", "warning", "checkpoint", "test", "done"]
Phase = Literal["loading", "training", "validating", "testing", "writing"]
"""What a run is doing: a `phase` event says so when it changes, and while it evaluates, how far it is
(`done` of `total` examples)."""


@dataclass(frozen=True)
class Event:
    kind: EventKind
    step: int
    total_steps: int
    data: dict[str, Any] = field(default_factory=dict)
    """phase: phase (and done, total while evaluating); step: loss, lr, examples_per_second, step_seconds,
    peak_memory_mb, prompt_norm, vocab_norm, norm_ratio;
    eval/test: metric values by name; warning: message; checkpoint: path; start: trainable_params, ..."""


Callback = Callable[[Event], None]


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max allocated on the device. CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20  # Linux reports KiB, macOS bytes


def current_rss_mb() -> float:
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_memory_mb(torch.device("cpu"))
