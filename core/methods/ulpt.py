"""ULPT, ultra-low-dimensional prompt tuning (Wu, Hao and Mou, 2025, arXiv 2502.04501): the prompt is learned in r
dimensions (r = 2, say) and lifted to the model's d by a frozen random matrix, then aligned by a learned scale and
shift per dimension.

    P = (Z R) * s + b            (l, d)    Z (l, r) trained, R (r, d) frozen, s and b (d) trained

Trained: l*r + 2d. R is drawn from the run's seed with entries N(0, 1/r) and kept in the artifact beside the trained
tensors (a buffer, not a parameter). Z starts N(0, 1), so Z R has entries of unit variance on average over the
dimensions; s and b start at the per-dimension standard deviation and mean of the common-token embeddings, so the
starting prompt vectors have the vocabulary's mean in every dimension and, on average, its spread. A start from a
given prompt (a text's tokens, a warm start) sets Z to the least-squares fit of (P - b) / s in R's row space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from core.errors import ConfigError
from core.methods.checks import UnpooledPrompt, length_issues


@dataclass(frozen=True)
class UlptConfig(UnpooledPrompt):
    length: int = 100
    """l: soft-prompt tokens."""
    rank: int = 2
    """r: the dimension Z is learned in (the paper's 2); 1 <= r <= hidden size."""

    name: ClassVar[str] = "ulpt"
    formula: ClassVar[str] = "l·r + 2·d"
    """Its trainable parameters in the knobs' letters (d: the hidden size)."""

    def __post_init__(self) -> None:
        issues = length_issues(self.length)
        if self.rank < 1:
            issues.append(f"rank={self.rank}: ULPT learns the prompt in at least 1 dimension; use e.g. --rank 2")
        if issues:
            raise ConfigError("\n".join(issues))

    def trainable_params(self, hidden_size: int) -> int:
        """Z (l x r) + scale s (d) + shift b (d); the projection R is frozen."""
        return self.length * self.rank + 2 * hidden_size


class UlptPrompt(nn.Module):
    """Trainable Z (l, r), s and b (d); frozen R (r, d); forward() returns P = (Z R) * s + b (l, d)."""

    def __init__(self, config: UlptConfig, scale: torch.Tensor, shift: torch.Tensor,
                 generator: torch.Generator) -> None:
        super().__init__()
        hidden = int(scale.shape[0])
        config.check_hidden_size(hidden)
        self.config = config
        r = config.rank
        self.projection: torch.Tensor
        self.register_buffer("projection", torch.randn(r, hidden, generator=generator) / r**0.5)  # (r, d)
        self.z = nn.Parameter(torch.randn(config.length, r, generator=generator))  # (l, r)
        self.scale = nn.Parameter(scale.detach().float().clone())  # (d,)
        self.shift = nn.Parameter(shift.detach().float().clone())  # (d,)

    @classmethod
    def fitted(cls, config: UlptConfig, prompt: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
               generator: torch.Generator) -> UlptPrompt:
        """A start at `prompt` (l, d) as near as r dimensions allow: Z = argmin ||(Z R) * s + b - P||."""
        module = cls(config, scale, shift, generator)
        if prompt.shape[0] != config.length:
            raise ConfigError(f"init prompt has {prompt.shape[0]} rows, config.length is {config.length}")
        s = module.scale.detach().double()
        s = torch.where(s.abs() < 1e-6, torch.full_like(s, 1e-6), s)  # a dimension with no spread: no division by 0
        target = (prompt.double() - module.shift.detach().double()) / s  # (l, d)
        z = torch.linalg.lstsq(module.projection.double().T, target.T).solution.T  # (l, r): Z R ~ target
        with torch.no_grad():
            module.z.copy_(z.float())
        return module

    @property
    def num_tokens(self) -> int:
        return self.config.length

    def dense(self) -> torch.Tensor:
        """The prompt the backbone reads, P (l, d): nothing is pooled."""
        return (self.z @ self.projection) * self.scale + self.shift  # (l, r) @ (r, d) -> (l, d)

    def forward(self) -> torch.Tensor:
        return self.dense()
