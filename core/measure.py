"""Timing and peak memory, measured the same way for every benchmark contender and for `lamp estimate --probe`.

Time: `time.perf_counter` around each call, with `torch.cuda.synchronize` before and after on a GPU (CUDA kernels
run asynchronously). Memory, above what was resident when the window opened:
- CUDA: `torch.cuda.max_memory_allocated` minus `memory_allocated` at the start, after `reset_peak_memory_stats`;
- CPU on Linux: the process's resident high-water mark (VmHWM) minus its resident size (VmRSS) at the start, after
  `malloc_trim(0)` hands freed heap pages back to the OS and writing "5" to /proc/self/clear_refs resets the
  high-water mark. This counts everything the process touched (tensors, allocator slack, oneDNN scratch), so it is
  a little above what torch alone allocated;
- elsewhere: growth of ru_maxrss, which never goes down: coarse, and zero for a window smaller than an earlier one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Spread:
    """Median of repeated measurements and their range."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values), len(values))

    def scaled(self, factor: float) -> Spread:
        return Spread(self.median * factor, self.low * factor, self.high * factor, self.n)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> Spread:
    """Seconds per call of `fn`: `warmup` untimed calls, then `repeats` timed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        tick = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - tick)
    return Spread.of(times)


def time_rounds(fns: Sequence[Callable[[], Any]], device: torch.device, repeats: int) -> list[list[float]]:
    """Seconds per call of each of `fns`, timed in `repeats` rounds of one call each (no warm-up: the caller's).

    Round k starts at fns[k % n] and goes round in order, so a drift of the machine (another process, the clock,
    the heap) falls on every fn alike instead of on whichever was timed during it. Returns each fn's seconds, round by
    round (times[i][k]: fn i in round k), in the order of `fns`.
    """
    times: list[list[float]] = [[] for _ in fns]
    for k in range(repeats if fns else 0):
        for i in (*range(k % len(fns), len(fns)), *range(k % len(fns))):
            sync(device)
            tick = time.perf_counter()
            fns[i]()
            sync(device)
            times[i].append(time.perf_counter() - tick)
    return times


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim_heap() -> None:
    name = ctypes.util.find_library("c")
    if name and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def _reset_high_water_mark() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _ru_maxrss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


class PeakMemory:
    """`with PeakMemory(device) as m: ...` then `m.mib`: the peak above the start of the window, in MiB."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib = 0.0
        self.how = ""
        self._start = 0.0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
            self.how = "cuda max_memory_allocated - memory_allocated at start"
            return self
        _trim_heap()
        rss = _proc_status_kib("VmRSS")
        if rss is not None and _reset_high_water_mark():
            self._start = rss / 1024
            self.how = "cpu VmHWM - VmRSS at start (after malloc_trim, high-water mark reset)"
        else:
            self._start = _ru_maxrss_mib()
            self.how = "cpu ru_maxrss growth (coarse: never goes down)"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.how.startswith("cpu VmHWM"):
            peak = (_proc_status_kib("VmHWM") or 0) / 1024
        else:
            peak = _ru_maxrss_mib()
        self.mib = max(0.0, peak - self._start)
