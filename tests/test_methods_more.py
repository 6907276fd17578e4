"""Residual prompt tuning and ULPT: parameter counts, forwards against float64 references, starts, round trips."""

from __future__ import annotations

from typing import cast

import pytest
import torch
from torch.testing import assert_close

from core.errors import ConfigError
from core.methods import (
    ResidualPrompt,
    ResidualPtConfig,
    UlptConfig,
    UlptPrompt,
    build_prompt,
    method_config,
    prompt_module,
    trainable_param_counts,
)


def _vocab(hidden: int = 24, vocab: int = 400, seed: int = 0) -> torch.Tensor:
    return torch.randn(vocab, hidden, generator=torch.Generator().manual_seed(seed)) * 0.15 + 0.02


@pytest.mark.parametrize(("hidden", "expected"), [(512, 462_736), (768, 693_904)])
def test_residual_pt_counts_match_the_lamp_papers_table(hidden: int, expected: int) -> None:
    """Table 1 of the LAMP paper: Residual PT with a 400-wide bottleneck on T5-Small / T5-Base, l = 100."""
    assert ResidualPtConfig(length=100).trainable_params(hidden) == expected
    assert trainable_param_counts(hidden, 100, rank=8)["residual-pt"] == expected


def test_ulpt_counts_lr_plus_2d() -> None:
    assert UlptConfig(length=20, rank=4).trainable_params(576) == 20 * 4 + 2 * 576
    counts = trainable_param_counts(576, 20, rank=4)
    assert counts["ulpt"] == 1_232 and set(counts) >= {"lamp", "prompt-tuning", "dpt", "residual-pt", "ulpt"}


@pytest.mark.parametrize("config", [ResidualPtConfig(length=10, bottleneck=16), UlptConfig(length=12, rank=2)],
                         ids=lambda c: c.name)
def test_requires_grad_matches_the_formula(config: ResidualPtConfig | UlptConfig) -> None:
    table = _vocab()
    module, ids = build_prompt(config, table, list(range(10, 300)), torch.Generator().manual_seed(1))
    counted = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert counted == config.trainable_params(table.shape[1])
    assert module().shape == (config.length, table.shape[1])
    assert len(ids) == (config.length if isinstance(config, ResidualPtConfig) else 0)  # ULPT: Z is random


def test_residual_forward_matches_float64_reference_and_starts_at_p() -> None:
    table = _vocab()
    config = ResidualPtConfig(length=10, bottleneck=16)
    built, ids = build_prompt(config, table, list(range(400)), torch.Generator().manual_seed(2))
    module = cast(ResidualPrompt, built)
    assert_close(module(), table[torch.tensor(ids)])  # the branch starts closed: P' = P
    with torch.no_grad():  # open it to test the whole formula
        module.norm.weight.normal_(generator=torch.Generator().manual_seed(3))
        module.norm.bias.normal_(generator=torch.Generator().manual_seed(4))
    p = module.prompt.double()
    h = torch.relu(p @ module.down.weight.double().T + module.down.bias.double())  # (l, m)
    y = h @ module.up.weight.double().T + module.up.bias.double()  # (l, d)
    mean, var = y.mean(-1, keepdim=True), y.var(-1, unbiased=False, keepdim=True)
    expected = p + (y - mean) / torch.sqrt(var + module.norm.eps) * module.norm.weight.double() \
        + module.norm.bias.double()
    assert_close(module().double(), expected, rtol=1e-5, atol=1e-6)


def test_residual_gradients_reach_the_prompt_and_the_network() -> None:
    built, _ = build_prompt(ResidualPtConfig(length=6, bottleneck=8), _vocab(), list(range(400)),
                            torch.Generator().manual_seed(0))
    module = cast(ResidualPrompt, built)
    module().pow(2).sum().backward()
    assert module.prompt.grad is not None and module.norm.weight.grad is not None
    assert module.norm.weight.grad.abs().sum() > 0  # the closed branch still learns to open


def test_ulpt_forward_matches_float64_reference_and_keeps_the_vocabulary_statistics() -> None:
    table = _vocab(hidden=32, vocab=3000)
    config = UlptConfig(length=400, rank=2)
    built, _ = build_prompt(config, table, list(range(3000)), torch.Generator().manual_seed(5))
    module = cast(UlptPrompt, built)
    r = module.projection
    assert not r.requires_grad and r.shape == (2, 32)
    expected = (module.z.double() @ r.double()) * module.scale.double() + module.shift.double()
    assert_close(module().double(), expected, rtol=1e-5, atol=1e-6)
    prompt = module().detach()
    assert_close(prompt.mean(0), table.mean(0), atol=0.02, rtol=0.0)  # each dimension's mean, about
    ratio = (prompt.var(0) / table.var(0)).mean().item()  # the spread, over the dimensions: R's columns have
    assert ratio == pytest.approx(1.0, abs=0.35)  # expected squared norm 1 (N(0, 1/r) entries), not each exactly 1


def test_ulpt_text_start_is_the_least_squares_fit() -> None:
    table = _vocab()
    config = UlptConfig(length=6, rank=3)
    ids = [5, 6, 7, 5, 6, 7]
    built, got_ids = build_prompt(config, table, list(range(400)), torch.Generator().manual_seed(0), start_ids=ids)
    module = cast(UlptPrompt, built)
    assert got_ids == ids
    target = (table[torch.tensor(ids)].double() - module.shift.double()) / module.scale.double()
    z = module.z.detach().double()
    residual = z @ module.projection.double() - target
    # At a least-squares optimum the residual is orthogonal to R's rows (to float32 rounding: Z is stored so).
    assert_close(residual @ module.projection.double().T, torch.zeros(6, 3, dtype=torch.float64), atol=1e-5,
                 rtol=0.0)


@pytest.mark.parametrize("config", [ResidualPtConfig(length=5, bottleneck=7), UlptConfig(length=5, rank=2)],
                         ids=lambda c: c.name)
def test_saved_parameters_rebuild_the_same_prompt(config: ResidualPtConfig | UlptConfig) -> None:
    module, _ = build_prompt(config, _vocab(), list(range(400)), torch.Generator().manual_seed(9))
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01)
    again = prompt_module(config, {k: v.clone() for k, v in module.state_dict().items()})
    assert_close(again(), module())


@pytest.mark.parametrize(("name", "knobs", "needle"), [
    ("residual-pt", {"bottleneck": 0}, "bottleneck=0"),
    ("residual-pt", {"length": 0}, "length=0"),
    ("ulpt", {"rank": 0}, "rank=0"),
])
def test_bad_knobs_name_the_value_and_fix(name: str, knobs: dict[str, int], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        method_config(name, **knobs)
    with pytest.raises(ConfigError, match="hidden size 24"):
        build_prompt(UlptConfig(length=4, rank=30), _vocab(), list(range(400)), torch.Generator())
