"""Timing and peak memory for the benchmark (core.measure, which `lamp estimate --probe` shares), and disk size."""

from __future__ import annotations

from pathlib import Path

from core.measure import PeakMemory, Spread, sync, time_calls, time_rounds

__all__ = ["PeakMemory", "Spread", "dir_bytes", "sync", "time_calls", "time_rounds"]


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
