"""DePT, decomposed prompt tuning (Shi and Lipani, ICLR 2024): a shorter soft prompt, plus a low-rank update of the
input's own token embeddings.

    P         (m, d)    the soft prompt the backbone reads first (trained)
    O = A B   (s, d)    A (s, r) and B (r, d) trained; O[t] is added to the embedding of the input's t-th token, t < s

Trained: m*d + s*r + r*d. DePT's own defaults on T5-Base (m = 60, r = 30, s = 256) are 76,800, vanilla prompt tuning's
count with l = 100; on SmolLM2 (d = 576) they are 59,520 against its 57,600.

Which tokens get the offset: the input's (the encoder's input; for a decoder-only model the rendered text and its
answer cue), counted from the input's first token whatever the padding; answer tokens get none, in training as in
decoding, so a generated token is embedded as training saw the answer's. An input longer than s has its tokens from
s on unchanged. core.batching.embed_inputs adds it, for one prompt or one per row (core.serving's mixed batches).

A starts as LoRA's down-projection does (Kaiming uniform), B at zero: the offset starts at zero, so step 0 is
prompt tuning with m tokens. A and B train at their own rate, `pair_lr` times the run's (DePT's second learning
rate, 0.1 by default); under the relative lr scaling each tensor's rate also follows its own size (B, starting at
zero, the embeddings').
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from core.errors import ConfigError
from core.methods.checks import UnpooledPrompt, check_rank_fits, length_issues


@dataclass(frozen=True)
class DeptConfig(UnpooledPrompt):
    length: int = 60
    """m: soft-prompt tokens (DePT's 60)."""
    rank: int = 30
    """r: the inner dimension of the offset A B (DePT's 30); 1 <= r <= min(s, hidden size)."""
    positions: int = 256
    """s: input positions the offset covers (DePT's 256, the default max length)."""
    pair_lr: float = 0.1
    """The rate of A and B as a multiple of the run's learning rate (DePT trains them at their own, smaller rate):
    0.1 measured over 3 seeds against 1 (README, "Choosing defaults")."""

    name: ClassVar[str] = "dept"
    formula: ClassVar[str] = "l·d + s·r + r·d"
    """Its trainable parameters in the knobs' letters (d: the hidden size; l is DePT's m)."""

    def __post_init__(self) -> None:
        issues = length_issues(self.length)
        if self.positions < 1:
            issues.append(f"positions={self.positions}: the offset covers at least 1 input position; use e.g. "
                          "--positions 256 (the max length)")
        if self.rank < 1:
            issues.append(f"rank={self.rank}: rank must be at least 1; use e.g. --rank 30")
        elif self.positions >= 1 and self.rank > self.positions:
            issues.append(f"rank={self.rank} > positions={self.positions}: the offset's rank can be at most the "
                          f"positions it covers; lower --rank to {self.positions} or raise --positions")
        if not self.pair_lr > 0:
            issues.append(f"pair_lr={self.pair_lr}: A and B need a positive rate; use e.g. --pair-lr 1")
        if issues:
            raise ConfigError("\n".join(issues))

    def trainable_params(self, hidden_size: int) -> int:
        """P (m x d) + A (s x r) + B (r x d)."""
        return self.length * hidden_size + self.positions * self.rank + self.rank * hidden_size

    def check_hidden_size(self, hidden_size: int) -> None:
        check_rank_fits(self.rank, hidden_size)


class DeptPrompt(nn.Module):
    """Trainable P (m, d), A (s, r) and B (r, d): forward() returns P, offset() returns A B (s, d)."""

    def __init__(self, config: DeptConfig, init_prompt: torch.Tensor, generator: torch.Generator) -> None:
        super().__init__()
        if init_prompt.shape[0] != config.length:
            raise ConfigError(f"init prompt has {init_prompt.shape[0]} rows, config.length is {config.length}")
        hidden = int(init_prompt.shape[1])
        config.check_hidden_size(hidden)
        self.config = config
        s, r = config.positions, config.rank
        bound = 1 / math.sqrt(r)  # kaiming_uniform_(a=sqrt(5)) on a fan-in of r, as LoRA starts its A
        self.prompt = nn.Parameter(init_prompt.detach().float().clone())  # (m, d)
        self.a = nn.Parameter((torch.rand(s, r, generator=generator) * 2 - 1) * bound)  # (s, r)
        self.b = nn.Parameter(torch.zeros(r, hidden))  # (r, d)

    @property
    def num_tokens(self) -> int:
        return self.config.length

    @property
    def lr_factors(self) -> dict[str, float]:
        """Each parameter's rate as a multiple of the run's (core.train.param_groups)."""
        return {"a": self.config.pair_lr, "b": self.config.pair_lr}

    def dense(self) -> torch.Tensor:
        """The prompt the backbone reads first, P (m, d): nothing is pooled."""
        return self.prompt

    def offset(self) -> torch.Tensor:
        """O = A B (s, d), added to the input's first s token embeddings."""
        return self.a @ self.b  # (s, r) @ (r, d)

    def forward(self) -> torch.Tensor:
        return self.prompt
