"""LAMP: prompt decomposition and compressed outer product (Lan et al., NAACL 2025, arXiv 2502.12200).

A soft prompt P (l x d) initialised from vocabulary embeddings is factorised by truncated SVD, P ~ U diag(S) V^T,
and only U[:, :r], Q[:r] and V[:, :r] are trained. The prompt the backbone sees is built as in the paper's
equations 3-6:

    M = U diag(Q)                       (l, r)     eq. 3
    I = diag(Q) V^T                     (r, d)     eq. 4
    C = sum_i M[:, i] (outer) I[i, :]   (l, d)     eq. 5, computed as the single matmul M @ I
    P' = avgpool_p(C)                   (l/p, d)   eq. 6, mean over blocks of p consecutive tokens

With Q = S (the paper read literally, init="paper") C starts at U S^2 V^T, several times larger than P; with
Q = sqrt(S) (init="balanced", the default) C starts at U S V^T, the rank-r P itself. The forward is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from core.errors import ConfigError
from core.methods.checks import check_rank_fits, length_rank_issues

LampInit = Literal["balanced", "paper"]


@dataclass(frozen=True)
class LampConfig:
    length: int = 100
    """l: soft-prompt tokens before pooling."""
    rank: int = 8
    """r: rank kept from the SVD; 1 <= r <= min(l, hidden size)."""
    pool: int = 2
    """p: average-pooling block; the backbone sees l/p prompt tokens. Must divide l."""
    init: LampInit = "balanced"
    """Starting Q: sqrt of the singular values ("balanced": C starts at the rank-r P) or the values themselves
    ("paper": C starts at U S^2 V^T)."""

    name: ClassVar[str] = "lamp"
    formula: ClassVar[str] = "l·r + r + r·d"
    """Its trainable parameters in the knobs' letters (d: the hidden size)."""

    def __post_init__(self) -> None:
        issues = length_rank_issues(self.length, self.rank)
        if self.pool < 1:
            issues.append(f"pool={self.pool}: pool must be at least 1 (1 = no pooling)")
        elif self.length >= 1 and self.length % self.pool:
            divisors = [p for p in range(1, min(self.length, 20) + 1) if self.length % p == 0]
            issues.append(f"pool={self.pool} does not divide length={self.length}; pick a pool in {divisors} "
                          f"or a length that is a multiple of {self.pool}")
        if self.init not in ("balanced", "paper"):
            issues.append(f"init={self.init!r}: choose 'balanced' or 'paper'")
        if issues:
            raise ConfigError("\n".join(issues))

    @property
    def prompt_tokens(self) -> int:
        return self.length // self.pool

    def check_hidden_size(self, hidden_size: int) -> None:
        check_rank_fits(self.rank, hidden_size)

    def trainable_params(self, hidden_size: int) -> int:
        """U (l x r) + Q (r) + V (d x r)."""
        return self.length * self.rank + self.rank + self.rank * hidden_size


class LampPrompt(nn.Module):
    """Trainable U (l, r), Q (r), V (d, r); forward() returns the pooled prompt P' (l/p, d)."""

    def __init__(self, config: LampConfig, init_prompt: torch.Tensor) -> None:
        super().__init__()
        length, hidden = init_prompt.shape
        if length != config.length:
            raise ConfigError(f"init prompt has {length} rows, config.length is {config.length}")
        config.check_hidden_size(hidden)
        self.config = config
        # Truncated SVD in float64 so the factors are orthonormal to rounding, whatever the backbone dtype.
        u, s, vh = torch.linalg.svd(init_prompt.detach().to(torch.float64), full_matrices=False)
        r = config.rank
        q = s[:r].sqrt() if config.init == "balanced" else s[:r]
        self.u = nn.Parameter(u[:, :r].float().contiguous())  # (l, r)
        self.q = nn.Parameter(q.float().contiguous())  # (r,)
        self.v = nn.Parameter(vh[:r].T.float().contiguous())  # (d, r)

    @property
    def num_tokens(self) -> int:
        return self.config.prompt_tokens

    def dense(self) -> torch.Tensor:
        """C = M @ I, the compressed outer product before pooling. (l, d)"""
        m = self.u * self.q  # (l, r)  eq. 3: U diag(Q)
        i = self.q[:, None] * self.v.T  # (r, d)  eq. 4: diag(Q) V^T
        return m @ i  # (l, d)  eq. 5: sum of r outer products as one matmul

    def forward(self) -> torch.Tensor:
        c = self.dense()
        p = self.config.pool
        return c.view(c.shape[0] // p, p, c.shape[1]).mean(dim=1)  # (l/p, d)  eq. 6
