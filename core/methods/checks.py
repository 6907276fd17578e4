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


def check_rank_fits(rank: int, hidden_size: int) -> None:
    """ConfigError when a rank cannot be had at this hidden size (a factor of width d has rank at most d)."""
    from core.errors import ConfigError

    if rank > hidden_size:
        raise ConfigError(f"rank={rank} > hidden size {hidden_size}: rank can be at most the hidden size; "
                          f"lower --rank to {hidden_size}")


class UnpooledPrompt:
    """What the configs of methods without a pool share: the model reads `length` tokens, and a `rank`, where the
    method has one, must fit the hidden size."""

    length: int

    @property
    def prompt_tokens(self) -> int:
        return self.length

    def check_hidden_size(self, hidden_size: int) -> None:
        rank = getattr(self, "rank", None)
        if rank is not None:
            check_rank_fits(rank, hidden_size)
