"""Validation shared by the method configs: each problem named with its value and its fix."""

from __future__ import annotations


def length_issues(length: int) -> list[str]:
    if length < 1:
        return [f"length={length}: the prompt needs at least 1 token; use e.g. --length 100"]
    return []


def length_rank_issues(length: int, rank: int) -> list[str]:
    issues = length_issues(length)
    if rank < 1:
        issues.append(f"rank={rank}: rank must be at least 1; use e.g. --rank 8")
    elif length >= 1 and rank > length:
        issues.append(f"rank={rank} > length={length}: rank can be at most the prompt length; "
                      f"lower --rank to {length} or raise --length")
    return issues
