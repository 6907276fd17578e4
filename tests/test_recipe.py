"""The training recipe's levers: per-tensor learning rates and a prompt that starts from a text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from core.errors import ConfigError
from core.methods import DptConfig, LampConfig, PromptTuningConfig, build_prompt, method_config
from core.methods.dpt import DptPrompt
from core.methods.lamp import LampPrompt
from core.spec import DataConfig, ModelConfig, RunSpec, TrainConfig, validate_spec
from core.train import fit, param_groups, set_lr


def _rms(t: torch.Tensor) -> float:
    return t.pow(2).mean().sqrt().item()


def _table(vocab: int = 400, hidden: int = 24) -> torch.Tensor:
    return torch.randn(vocab, hidden, generator=torch.Generator().manual_seed(0)) * 0.15


@pytest.mark.parametrize("config", [LampConfig(length=20, rank=4, pool=4), PromptTuningConfig(length=6),
                                    DptConfig(length=10, rank=3)], ids=lambda c: c.name)
def test_relative_rates_follow_each_tensors_starting_size(config: LampConfig | PromptTuningConfig | DptConfig) -> None:
    module, _ = build_prompt(config, _table(), list(range(10, 300)), torch.Generator().manual_seed(1))
    start = {k: v.clone() for k, v in module.state_dict().items()}
    groups = param_groups(module, 0.1, "relative", start, fallback_rms=0.5)
    assert {g["name"] for g in groups} == {n for n, p in module.named_parameters() if p.requires_grad}
    for group in groups:
        assert group["base_lr"] == pytest.approx(0.1 * _rms(start[group["name"]]))
    (single,) = param_groups(module, 0.1, "absolute", start, fallback_rms=0.5)
    assert single["base_lr"] == 0.1 and len(single["params"]) == len(groups)


def test_lamp_factors_start_tens_of_times_apart_and_relative_rates_even_them_out() -> None:
    """U's entries start near 1/sqrt(l), V's near 1/sqrt(d), Q near sqrt(S): under one rate, Adam moves U and V by
    a far larger fraction of their size than Q. Relative rates make one step the same fraction for all three."""
    module, _ = build_prompt(LampConfig(length=100, rank=8, pool=4), torch.randn(500, 64) * 0.12,
                             list(range(500)), torch.Generator().manual_seed(0))
    start = {k: v.clone() for k, v in module.state_dict().items()}
    assert _rms(start["q"]) / _rms(start["v"]) > 10
    rates = {g["name"]: g["base_lr"] for g in param_groups(module, 0.05, "relative", start, 1.0)}
    fractions = [rates[name] / _rms(start[name]) for name in ("u", "q", "v")]
    assert fractions == pytest.approx([0.05] * 3)


def test_zero_tensor_takes_the_fallback_size() -> None:
    module = torch.nn.Linear(3, 2)
    with torch.no_grad():
        module.bias.zero_()
    start = {k: v.clone() for k, v in module.state_dict().items()}
    rates = {g["name"]: g["base_lr"] for g in param_groups(module, 0.1, "relative", start, fallback_rms=0.25)}
    assert rates["bias"] == pytest.approx(0.025)


def test_schedule_scales_every_groups_own_peak() -> None:
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.AdamW([{"params": [params[0]], "lr": 0.2, "base_lr": 0.2},
                                   {"params": [params[1]], "lr": 0.01, "base_lr": 0.01}])
    set_lr(optimizer, 5, 0, 10, lr=1.0)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.005])
    restored = torch.optim.AdamW([params[0]], lr=0.3)  # a checkpoint from before per-group rates
    set_lr(restored, 5, 0, 10, lr=0.3)
    assert restored.param_groups[0]["lr"] == pytest.approx(0.15)


def _spec(model: Path, csv: Path, method: str, **train: object) -> RunSpec:
    knobs = {"lamp": {"length": 8, "rank": 4, "pool": 2}, "prompt-tuning": {"length": 4},
             "dpt": {"length": 4, "rank": 2}}[method]
    settings = {"steps": 3, "batch_size": 4, "eval_every": 3, "lr": 0.05, "device": "cpu", "generate_eval": False,
                **train}
    return RunSpec(model=ModelConfig(str(model)), method=method_config(method, **knobs),
                   data=DataConfig(task=None, train_file=str(csv), text_column="review", label_column="verdict"),
                   train=TrainConfig(**settings))  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["lamp", "prompt-tuning", "dpt"])
def test_a_text_start_begins_at_the_texts_embeddings(method: str, tiny_llama_dir: Path, sentiment_csv: Path,
                                                    tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = "good bad fine awful" if method == "lamp" else "good bad"  # as many distinct tokens as the rank
    spec = _spec(tiny_llama_dir, sentiment_csv, method, prompt_init="text", prompt_init_text=text)
    result = fit(spec, tmp_path)
    manifest = json.loads((Path(result.artifact) / "lamp_artifact.json").read_text())
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    words = tok(text, add_special_tokens=False)["input_ids"]
    assert len(set(words)) == getattr(spec.method, "rank", len(words))
    pool = getattr(spec.method, "pool", 1)
    expected = [words[(i // pool) % len(words)] for i in range(spec.method.length)]
    assert manifest["init_token_ids"] == expected
    layer = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).get_input_embeddings()
    assert isinstance(layer, torch.nn.Embedding)
    table = layer.weight.detach()
    module, _ = build_prompt(spec.method, table, [], torch.Generator(), start_ids=expected)
    module.load_state_dict(load_file(f"{result.artifact}/init_params.safetensors"))
    with torch.no_grad():
        start = module.dense()
    # The text's distinct tokens are as many as the rank, so the rank-r start is the text's embeddings exactly.
    assert_close(start, table[torch.tensor(expected)], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("config", [LampConfig(length=20, rank=8, pool=4), DptConfig(length=20, rank=8)],
                         ids=lambda c: c.name)
def test_a_short_text_start_keeps_every_component_of_the_rank_alive(config: LampConfig | DptConfig) -> None:
    """Two distinct tokens at rank 8: without a fill, six of the SVD's components start at zero, and every gradient
    of a component at zero is zero (LAMP: Q_i^2 u_i v_i^T; DPT: a_i b_i^T). The fill gives all eight a start."""
    table = _table()
    ids = [5, 5, 5, 5, 9, 9, 9, 9] * 2 + [5, 5, 5, 5]  # (20,): a two-token text, each token repeated p = 4 times
    text = table[torch.tensor(ids)]
    module, got = build_prompt(config, table, list(range(10, 300)), torch.Generator().manual_seed(3), start_ids=ids)
    assert got == ids
    with torch.no_grad():
        start = module.dense()
    assert 0.02 < _rms(start - text) / _rms(text) < 0.2  # near the text, not at it
    assert torch.linalg.matrix_rank(start.double(), rtol=1e-4).item() == 8
    # One gradient through a random loss reaches every component: each factor's column has a nonzero gradient.
    weights = torch.randn(20, 24, generator=torch.Generator().manual_seed(4))
    (weights * module.dense()).sum().backward()
    assert isinstance(module, LampPrompt | DptPrompt)
    left = module.u if isinstance(module, LampPrompt) else module.a  # (l, r)
    assert left.grad is not None and bool((left.grad.norm(dim=0) > 1e-6).all())
    unfilled = (LampPrompt(config, text) if isinstance(config, LampConfig)
                else DptPrompt.from_prompt(config, text))  # the start as it was: rank 2
    (weights * unfilled.dense()).sum().backward()
    left = unfilled.u if isinstance(unfilled, LampPrompt) else unfilled.a
    assert left.grad is not None and int((left.grad.norm(dim=0) > 1e-6).sum()) == 2


def test_a_text_start_of_full_rank_is_left_as_it_is() -> None:
    table = _table()
    ids = list(range(20, 40))  # twenty distinct tokens: rank 8 of them is the SVD's own truncation
    module, _ = build_prompt(LampConfig(length=20, rank=8, pool=4), table, list(range(10, 300)),
                             torch.Generator().manual_seed(3), start_ids=ids)
    reference = LampPrompt(LampConfig(length=20, rank=8, pool=4), table[torch.tensor(ids)])
    assert_close(module.dense(), reference.dense())


def test_text_start_from_the_task_when_no_text_is_given(tiny_llama_dir: Path, sentiment_csv: Path,
                                                        tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    result = fit(_spec(tiny_llama_dir, sentiment_csv, "prompt-tuning", prompt_init="text", lr_scaling="relative"),
                 tmp_path)
    ids = json.loads((Path(result.artifact) / "lamp_artifact.json").read_text())["init_token_ids"]
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert tok.decode(ids) == "Classify the answer"  # the first l = 4 tokens of "Classify the answer: bad or good."


def test_bad_recipe_settings_are_refused_with_their_fix(sentiment_csv: Path) -> None:
    spec = RunSpec(train=TrainConfig(prompt_init="words", lr_scaling="per-tensor", prompt_init_text=" "))  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as err:
        validate_spec(spec)
    text = str(err.value)
    assert "prompt_init='words': choose vocab or text" in text
    assert "lr_scaling='per-tensor': choose absolute or relative" in text
    assert "prompt_init_text: empty" in text
    with pytest.raises(ConfigError, match="give one"):
        validate_spec(RunSpec(train=TrainConfig(prompt_init="text", init_from=str(sentiment_csv.parent))))
