"""The tuning methods: each a frozen config dataclass and an nn.Module whose forward() returns the prompt."""

from __future__ import annotations

from typing import Any

import torch

from core.errors import ConfigError
from core.methods.dept import DeptConfig, DeptPrompt
from core.methods.dpt import DptConfig, DptPrompt
from core.methods.lamp import LampConfig, LampPrompt
from core.methods.prompt_tuning import PromptTuningConfig, SoftPrompt
from core.methods.residual_pt import ResidualPrompt, ResidualPtConfig
from core.methods.ulpt import UlptConfig, UlptPrompt
from core.vocab import sample_token_ids

MethodConfig = LampConfig | PromptTuningConfig | DptConfig | ResidualPtConfig | UlptConfig | DeptConfig
METHODS: dict[str, type[MethodConfig]] = {
    "lamp": LampConfig,
    "prompt-tuning": PromptTuningConfig,
    "dpt": DptConfig,
    "residual-pt": ResidualPtConfig,
    "ulpt": UlptConfig,
    "dept": DeptConfig,
}

__all__ = [
    "METHODS",
    "DeptConfig",
    "DptConfig",
    "LampConfig",
    "MethodConfig",
    "PromptModule",
    "PromptTuningConfig",
    "ResidualPtConfig",
    "UlptConfig",
    "build_prompt",
    "input_offset",
    "method_config",
    "method_to_dict",
    "prompt_module",
    "trainable_param_counts",
]


def method_config(name: str, **knobs: Any) -> MethodConfig:
    """Build a method's config from its name and the knobs that apply to it (others are ignored)."""
    if name not in METHODS:
        raise ConfigError(f"method={name!r}: unknown method; choose one of {', '.join(METHODS)}")
    cls = METHODS[name]
    fields = cls.__dataclass_fields__
    return cls(**{k: v for k, v in knobs.items() if k in fields and v is not None})


def method_to_dict(config: MethodConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return {"name": config.name, **asdict(config)}


def method_from_dict(data: dict[str, Any]) -> MethodConfig:
    data = dict(data)
    return method_config(data.pop("name"), **data)


def trainable_param_counts(hidden_size: int, length: int, rank: int, pool: int = 1) -> dict[str, int]:
    """Trainable parameters of each method at these knobs, from the formulas alone."""
    return {
        "lamp": LampConfig(length=length, rank=rank, pool=pool).trainable_params(hidden_size),
        "prompt-tuning": PromptTuningConfig(length=length).trainable_params(hidden_size),
        "dpt": DptConfig(length=length, rank=rank).trainable_params(hidden_size),
        "residual-pt": ResidualPtConfig(length=length).trainable_params(hidden_size),
        "ulpt": UlptConfig(length=length, rank=rank).trainable_params(hidden_size),
        "dept": DeptConfig(length=length, rank=rank).trainable_params(hidden_size),
    }


PromptModule = LampPrompt | SoftPrompt | DptPrompt | ResidualPrompt | UlptPrompt | DeptPrompt


def input_offset(module: PromptModule) -> torch.Tensor | None:
    """What the method adds to the input's own token embeddings (DePT's A B, (s, d)); None for the others."""
    return module.offset() if isinstance(module, DeptPrompt) else None


def build_prompt(
    config: MethodConfig, embeddings: torch.Tensor, common_ids: list[int], generator: torch.Generator,
    warm: torch.Tensor | None = None, start_ids: list[int] | None = None,
) -> tuple[PromptModule, list[int]]:
    """The method's prompt module for a backbone whose input embedding table is `embeddings` (vocab, d).

    `warm` (l, d), another run's prompt C before pooling, replaces the vocabulary sample (a warm start): LAMP and
    DPT start at its best rank-r approximation, prompt tuning at a copy. `start_ids` (l token ids, e.g. a text's:
    core.vocab.text_start_ids) start from those tokens' embeddings the same way. Returns the module and the
    vocabulary ids its initial prompt was drawn from (empty for DPT's random init and for a warm start).
    """
    hidden = embeddings.shape[1]
    config.check_hidden_size(hidden)
    if start_ids is not None:
        if len(start_ids) != config.length:
            raise ConfigError(f"start_ids: {len(start_ids)} tokens for a prompt of length {config.length}")
        start = embeddings.detach()[torch.tensor(start_ids)].float()  # (l, d)
        start = _fill_rank(config, start, embeddings, common_ids, generator)
        return _warm_prompt(config, start, embeddings, common_ids, generator), list(start_ids)
    if warm is not None:
        if tuple(warm.shape) != (config.length, hidden):
            raise ConfigError(f"init_from: the source prompt is {tuple(warm.shape)}, this run needs "
                              f"({config.length}, {hidden}) (length, hidden size)")
        return _warm_prompt(config, warm.detach().float(), embeddings, common_ids, generator), []
    if isinstance(config, DptConfig):
        scale = embeddings.detach().float().pow(2).mean().sqrt().item()
        return DptPrompt(config, hidden, scale, generator), []
    if isinstance(config, UlptConfig):
        return UlptPrompt(config, *_vocab_stats(embeddings, common_ids), generator), []
    ids = sample_token_ids(common_ids, config.length, generator)
    init = embeddings.detach()[torch.tensor(ids)].float()  # (l, d)
    if isinstance(config, LampConfig):
        return LampPrompt(config, init), ids
    if isinstance(config, ResidualPtConfig):
        return ResidualPrompt(config, init, generator), ids
    if isinstance(config, DeptConfig):
        return DeptPrompt(config, init, generator), ids
    return SoftPrompt(config, init), ids


def _vocab_stats(embeddings: torch.Tensor, common_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension standard deviation and mean of the common tokens' embeddings: ULPT's starting s and b."""
    rows = embeddings.detach().float()[torch.tensor(common_ids)] if common_ids else embeddings.detach().float()
    return rows.std(dim=0), rows.mean(dim=0)  # (d,), (d,)


FILL_SCALE = 0.1
"""The size, against a token embedding's, of the common tokens added to a text start that has fewer distinct
directions than the method's rank (_fill_rank)."""


def _fill_rank(config: MethodConfig, start: torch.Tensor, embeddings: torch.Tensor, common_ids: list[int],
               generator: torch.Generator) -> torch.Tensor:
    """A text start (l, d) for a factorised prompt (LAMP, DPT) that keeps all of its rank alive.

    A text of k distinct tokens gives a start of rank k. Below the method's rank r, the SVD's last r - k singular
    values are zero, and a component at zero never trains: LAMP's C holds it as Q_i^2 u_i v_i^T and DPT's as
    a_i b_i^T, so every gradient of the component carries a factor that is zero. `Give the answer:` (4 tokens) would
    train a rank-8 LAMP at rank 4. There, l common tokens at FILL_SCALE of their size are added: the text stays the
    start's leading directions and the others start small but alive. A start of rank r or more is left as it is."""
    if not isinstance(config, LampConfig | DptConfig):
        return start
    s = torch.linalg.svdvals(start.double())
    alive = int((s > s[0] * 1e-6).sum())
    if alive >= config.rank:
        return start
    pool = common_ids or list(range(embeddings.shape[0]))
    fill = embeddings.detach()[torch.tensor(sample_token_ids(pool, config.length, generator))].float()  # (l, d)
    return start + FILL_SCALE * fill


def _warm_prompt(config: MethodConfig, warm: torch.Tensor, embeddings: torch.Tensor, common_ids: list[int],
                 generator: torch.Generator) -> PromptModule:
    """A module that starts at the given prompt (l, d), or as near as its form allows."""
    if isinstance(config, LampConfig):
        # validate_spec refuses init="paper" for a warm start: Q = S would start C at U S^2 V^T, not at the source.
        return LampPrompt(config, warm)
    if isinstance(config, DptConfig):
        return DptPrompt.from_prompt(config, warm)
    if isinstance(config, ResidualPtConfig):
        return ResidualPrompt(config, warm, generator)
    if isinstance(config, UlptConfig):
        return UlptPrompt.fitted(config, warm, *_vocab_stats(embeddings, common_ids), generator)
    if isinstance(config, DeptConfig):  # the prompt from the source, the offset at zero as a fresh run starts it
        return DeptPrompt(config, warm, generator)
    return SoftPrompt(config, warm)


def prompt_module(config: MethodConfig, params: dict[str, torch.Tensor]) -> PromptModule:
    """The method's module holding saved parameters (an artifact's, a snapshot's): `.dense()` gives C (l, d),
    calling it the pooled prompt P' the backbone sees."""
    module: PromptModule
    placeholder = torch.Generator().manual_seed(0)  # every tensor is replaced by the saved one below
    if isinstance(config, DptConfig):
        module = DptPrompt(config, params["b"].shape[1], 1.0, placeholder)
    elif isinstance(config, LampConfig):
        module = LampPrompt(config, torch.zeros(config.length, params["v"].shape[0]))  # v: (d, r)
    elif isinstance(config, ResidualPtConfig):
        module = ResidualPrompt(config, torch.zeros_like(params["prompt"]), placeholder)
    elif isinstance(config, UlptConfig):
        hidden = params["scale"].shape[0]
        module = UlptPrompt(config, torch.ones(hidden), torch.zeros(hidden), placeholder)
    elif isinstance(config, DeptConfig):
        module = DeptPrompt(config, torch.zeros_like(params["prompt"]), placeholder)
    else:
        module = SoftPrompt(config, params["prompt"])
    module.load_state_dict(params)
    return module
