"""The three methods: parameter counts, LAMP's forward against a float64 reference, validation messages."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from core.errors import ConfigError
from core.methods import DptConfig, LampConfig, PromptTuningConfig, build_prompt, method_config, trainable_param_counts

# The paper's Table 8 (r = 8): trainable parameters of LAMP and vanilla prompt tuning.
TABLE_8 = [
    # hidden, length, lamp, prompt-tuning
    (1024, 20, 8_360, 20_480),
    (1024, 100, 9_000, 102_400),
    (1024, 1000, 16_200, 1_024_000),
    (1024, 5000, 48_200, 5_120_000),
    (1024, 10000, 88_200, 10_240_000),
    (4096, 20, 32_936, 81_920),
    (4096, 100, 33_576, 409_600),
    (4096, 1000, 40_776, 4_096_000),
    (4096, 5000, 72_776, 20_480_000),
    (4096, 10000, 112_776, 40_960_000),
]


@pytest.mark.parametrize(("hidden", "length", "lamp", "pt"), TABLE_8)
def test_param_formulas_reproduce_table_8(hidden: int, length: int, lamp: int, pt: int) -> None:
    counts = trainable_param_counts(hidden, length, rank=8)
    assert counts["lamp"] == lamp
    assert counts["prompt-tuning"] == pt
    assert counts["dpt"] == length * 8 + 8 * hidden


def _vocab(hidden: int = 24, vocab: int = 400, seed: int = 0) -> torch.Tensor:
    return torch.randn(vocab, hidden, generator=torch.Generator().manual_seed(seed)) * 0.15


@pytest.mark.parametrize("config", [
    LampConfig(length=20, rank=4, pool=5), LampConfig(length=12, rank=12, pool=1), PromptTuningConfig(length=7),
    DptConfig(length=10, rank=3),
], ids=lambda c: f"{c.name}")
def test_requires_grad_matches_formula(config: LampConfig | PromptTuningConfig | DptConfig) -> None:
    table = _vocab()
    module, ids = build_prompt(config, table, list(range(10, 300)), torch.Generator().manual_seed(1))
    counted = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert counted == config.trainable_params(table.shape[1])
    prompt = module()
    assert prompt.shape == (config.prompt_tokens, table.shape[1])
    assert len(ids) == (0 if isinstance(config, DptConfig) else config.length)
    assert all(10 <= i < 300 for i in ids)
    assert len(set(ids)) == len(ids)  # drawn without replacement


def _reference_lamp(p: torch.Tensor, rank: int, pool: int, init: str) -> torch.Tensor:
    """Equations 2-6 in float64 with explicit loops: SVD, M, I, the sum of outer products, average pooling."""
    u, s, vh = torch.linalg.svd(p.double(), full_matrices=False)  # eq. 2
    q = s[:rank].sqrt() if init == "balanced" else s[:rank]
    m = u[:, :rank] * q  # eq. 3: U diag(Q)
    i_mat = q[:, None] * vh[:rank]  # eq. 4: diag(Q) V^T
    c = torch.zeros(p.shape, dtype=torch.float64)
    for k in range(rank):  # eq. 5: sum_k M[:, k] (outer) I[k, :]
        c += torch.outer(m[:, k], i_mat[k])
    pooled = torch.stack([c[j : j + pool].mean(0) for j in range(0, p.shape[0], pool)])  # eq. 6
    return pooled


@pytest.mark.parametrize("init", ["balanced", "paper"])
@pytest.mark.parametrize(("length", "rank", "pool"), [(20, 8, 4), (12, 3, 1), (30, 5, 10), (8, 8, 2)])
def test_lamp_forward_matches_float64_reference(length: int, rank: int, pool: int, init: str) -> None:
    table = _vocab()
    config = LampConfig(length=length, rank=rank, pool=pool, init=init)  # type: ignore[arg-type]
    module, ids = build_prompt(config, table, list(range(400)), torch.Generator().manual_seed(3))
    expected = _reference_lamp(table[torch.tensor(ids)], rank, pool, init)
    assert_close(module().double(), expected, rtol=1e-5, atol=1e-6)


def test_balanced_init_starts_at_rank_r_prompt_and_paper_init_at_u_s2_v() -> None:
    table = _vocab()
    r = 6
    for init, power in (("balanced", 1), ("paper", 2)):
        module, ids = build_prompt(LampConfig(length=20, rank=r, pool=1, init=init),  # type: ignore[arg-type]
                                   table, list(range(50, 70)), torch.Generator().manual_seed(0))
        u, s, vh = torch.linalg.svd(table[torch.tensor(ids)].double(), full_matrices=False)
        got = module.dense().double()
        assert_close(got, u[:, :r] @ torch.diag(s[:r] ** power) @ vh[:r], rtol=1e-5, atol=1e-6)


def test_full_rank_balanced_lamp_starts_at_the_sampled_embeddings() -> None:
    table = _vocab()
    module, ids = build_prompt(LampConfig(length=20, rank=20, pool=1), table, list(range(400)),
                               torch.Generator().manual_seed(0))
    assert_close(module().double(), table[torch.tensor(ids)].double(), rtol=1e-5, atol=1e-6)


def test_lamp_gradients_reach_only_u_q_v() -> None:
    module, _ = build_prompt(LampConfig(length=20, rank=4, pool=4), _vocab(), list(range(400)),
                             torch.Generator().manual_seed(0))
    module().pow(2).sum().backward()
    names = {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert names == {"u", "q", "v"}


def test_dpt_random_init_has_the_vocabulary_scale() -> None:
    table = _vocab(hidden=64, vocab=2000)
    module, _ = build_prompt(DptConfig(length=200, rank=8), table, [], torch.Generator().manual_seed(0))
    rms = module().pow(2).mean().sqrt().item()
    assert rms == pytest.approx(table.pow(2).mean().sqrt().item(), rel=0.25)


@pytest.mark.parametrize(("knobs", "needle"), [
    ({"length": 100, "pool": 3}, "pool=3 does not divide length=100"),
    ({"length": 10, "rank": 11}, "rank=11 > length=10"),
    ({"rank": 0}, "rank=0"),
    ({"length": 0}, "length=0"),
    ({"init": "svd"}, "init='svd'"),
])
def test_lamp_config_errors_name_the_value_and_fix(knobs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        method_config("lamp", **knobs)


def test_lamp_config_collects_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        LampConfig(length=10, rank=11, pool=3)
    assert "rank=11" in str(info.value) and "pool=3" in str(info.value)


def test_rank_above_hidden_size_is_rejected_when_the_model_is_known() -> None:
    with pytest.raises(ConfigError, match="hidden size 24"):
        build_prompt(LampConfig(length=40, rank=30, pool=1), _vocab(), list(range(400)), torch.Generator())


def test_unknown_method() -> None:
    with pytest.raises(ConfigError, match="unknown method"):
        method_config("lora")
