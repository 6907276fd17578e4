"""Events that the training loop emits through one callback (progress bar, job writer, UI are all listeners)."""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

EventKind = Literal["start", "step", "eval", "warning", "checkpoint", "test", "done"]


@dataclass(frozen=True)
class Event:
    kind: EventKind
    step: int
    total_steps: int
    data: dict[str, Any] = field(default_factory=dict)
    """step: loss, lr, examples_per_second, peak_memory_mb, prompt_norm, vocab_norm, norm_ratio;
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
