"""The packed forward (core.packing): the prompt and the rows' tokens in one sequence give the loss, the gradients
and the scores of running [prompt][row] for every row, and leave the model as it was."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from core import packing, scoring
from core.backbone import Backbone, load_backbone
from core.batching import Batch, Codec, Encoded, collate, prompted_inputs
from core.spec import ModelConfig

TEXTS = ["a short one", "a somewhat longer input sentence with more words in it", "mid text", "x"]
ANSWERS = ["positive", "negative", "positive", "no thanks"]


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma3"])
def backbone(request: pytest.FixtureRequest) -> Backbone:
    return load_backbone(ModelConfig(str(request.getfixturevalue(f"tiny_{request.param}_dir"))), torch.device("cpu"))


def _loss_and_grads(backbone: Backbone, tokens: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    codec = Codec.for_backbone(backbone)
    batch = collate([codec.encode(t, a) for t, a in zip(TEXTS, ANSWERS, strict=True)], "causal",
                    backbone.tokenizer.pad_token_id, backbone.device)
    g = torch.Generator().manual_seed(0)
    prompt = (torch.randn(tokens, backbone.hidden_size, generator=g) * 0.5).requires_grad_(True)
    offset = (torch.randn(6, backbone.hidden_size, generator=g) * 0.3).requires_grad_(True)
    loss = scoring.loss_fn(backbone, prompt, batch, offset)
    loss.backward()
    assert prompt.grad is not None and offset.grad is not None
    return loss.item(), prompt.grad, offset.grad


def _count_packed_calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Wraps the packed attention so that each call records whether it got a pack; the list fills as the model runs.
    It is registered again with the wrapper (which delegates to the real one, so it may stay registered)."""
    calls: list[bool] = []
    real = packing.packed_attention

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(kwargs.get("lamp_pack") is not None)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(packing, "packed_attention", counted)
    monkeypatch.setattr(packing, "_REGISTERED", [])
    return calls


@pytest.mark.parametrize("split", [False, True], ids=["one-group", "by-length"])
@pytest.mark.parametrize("tokens", [5, 0], ids=["prompt", "no-prompt"])
def test_packed_loss_and_gradients_equal_every_row_with_its_prompt(backbone: Backbone, tokens: int, split: bool,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if split:  # every row its own attention batch (a split costs nothing), the outputs put back in packed order
        monkeypatch.setattr(packing, "GROUP_COST", 0)
    calls = _count_packed_calls(monkeypatch)
    packed = _loss_and_grads(backbone, tokens)
    assert calls and all(calls)  # every layer's attention ran packed
    monkeypatch.setattr(scoring, "can_pack", lambda *args: False)
    monkeypatch.setattr(scoring, "shared_prompt_cache", lambda *args: None)
    plain = _loss_and_grads(backbone, tokens)
    assert packed[0] == pytest.approx(plain[0], rel=1e-5)
    assert_close(packed[1], plain[1], rtol=1e-4, atol=1e-6)
    assert_close(packed[2], plain[2], rtol=1e-4, atol=1e-6)
    assert backbone.model.config._attn_implementation == "sdpa"  # the model is left as it was


def test_rows_split_by_length_where_it_saves_attention_work(monkeypatch: pytest.MonkeyPatch) -> None:
    lengths = [20, 67, 21, 27, 62, 53, 32, 34]
    groups = packing.split_by_length(lengths, 25)
    assert sorted(r for g in groups for r in g) == list(range(8))  # every row once
    assert 1 < len(groups) <= packing.MAX_GROUPS
    longest = [max(lengths[r] for r in g) for g in groups]
    assert longest == sorted(longest) and all(max(lengths[r] for r in g) < min(lengths[r] for r in h)
                                              for g, h in itertools.pairwise(groups))
    one = len(lengths) * 67 * (25 + 67)
    split = sum(len(g) * w * (25 + w) for g, w in zip(groups, longest, strict=True))
    assert split + packing.GROUP_COST * len(groups) < one + packing.GROUP_COST
    assert packing.split_by_length([36, 35, 36, 34, 36], 25) == [[0, 1, 2, 3, 4]]  # a bucketed batch: one group
    assert packing.split_by_length([5], 0) == [[0]]


def test_packed_ranking_equals_the_plain_route(backbone: Backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    codec = Codec.for_backbone(backbone)
    prompt = torch.randn(7, backbone.hidden_size, generator=torch.Generator().manual_seed(1)) * 0.5
    words = [["negative", "positive"]] * len(TEXTS), [["no", "yes please"]] * len(TEXTS)
    packed = [scoring.rank_candidates(backbone, prompt, codec, TEXTS, w) for w in words]
    monkeypatch.setattr(scoring, "can_pack", lambda *args: False)
    monkeypatch.setattr(scoring, "shared_prompt_cache", lambda *args: None)
    for got, w in zip(packed, words, strict=True):
        assert_close(torch.tensor(got), torch.tensor(scoring.rank_candidates(backbone, prompt, codec, TEXTS, w)),
                     rtol=1e-4, atol=1e-4)


def test_a_call_without_a_pack_meanwhile_gets_plain_attention(backbone: Backbone) -> None:
    """Another thread on the same backbone while a packed call runs: its padded batch is answered as under sdpa."""
    codec = Codec.for_backbone(backbone)
    batch = collate([codec.encode(t, a) for t, a in zip(TEXTS, ANSWERS, strict=True)], "causal",
                    backbone.tokenizer.pad_token_id, backbone.device)
    prompt = torch.randn(3, backbone.hidden_size, generator=torch.Generator().manual_seed(2))
    embeds, mask = prompted_inputs(backbone, prompt, batch)
    with torch.no_grad():
        want = backbone.model.base_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        with packing._packed(backbone.model.config):
            assert backbone.model.config._attn_implementation == packing.PACKED
            got = backbone.model.base_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    assert_close(got, want)
    assert backbone.model.config._attn_implementation == "sdpa"


def test_only_models_whose_every_layer_sees_whole_rows_pack(backbone: Backbone,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    codec = Codec.for_backbone(backbone)
    batch = collate([codec.encode(t, a) for t, a in zip(TEXTS, ANSWERS, strict=True)], "causal",
                    backbone.tokenizer.pad_token_id, backbone.device)
    prompt = torch.zeros(4, backbone.hidden_size)
    span = 4 + batch.input_ids.shape[1]  # the prompt and the widest row
    assert packing.can_pack(backbone, prompt, batch)
    assert not packing.can_pack(backbone, prompt, collate(batch_rows(codec, 1), "causal", 0, backbone.device))
    assert not packing.can_pack(backbone, prompt[None].expand(2, -1, -1), batch)  # a prompt per row
    monkeypatch.setattr(backbone.model.config, "sliding_window", span, raising=False)
    assert packing.can_pack(backbone, prompt, batch)  # a window as wide as the row: the same as full attention
    monkeypatch.setattr(backbone.model.config, "sliding_window", span - 1, raising=False)
    assert not packing.can_pack(backbone, prompt, batch)  # a layer that sees part of a row
    monkeypatch.setattr(backbone.model.config, "sliding_window", None, raising=False)
    monkeypatch.setattr(backbone.model.config, "layer_types", ["full_attention", "linear_attention"], raising=False)
    assert not packing.can_pack(backbone, prompt, batch)


def batch_rows(codec: Codec, rows: int) -> list[Encoded]:
    return [codec.encode(t, a) for t, a in list(zip(TEXTS, ANSWERS, strict=True))[:rows]]


def test_a_sliding_window_narrower_than_a_row_takes_the_plain_route_with_the_same_loss(
        tiny_gemma3_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemma 3's local layers where a row is wider than their window: no packing, and the loss is still that of
    [prompt][row] for every row under the model's own sliding attention."""
    backbone = load_backbone(ModelConfig(str(tiny_gemma3_dir)), torch.device("cpu"))
    monkeypatch.setattr(backbone.model.config, "sliding_window", 6)
    calls = _count_packed_calls(monkeypatch)
    narrow = _loss_and_grads(backbone, 5)
    assert not any(calls)
    monkeypatch.setattr(scoring, "shared_prompt_cache", lambda *args: None)
    plain = _loss_and_grads(backbone, 5)
    assert narrow[0] == pytest.approx(plain[0], rel=1e-5)
    assert_close(narrow[1], plain[1], rtol=1e-4, atol=1e-6)
    monkeypatch.setattr(backbone.model.config, "sliding_window", 512)
    assert _loss_and_grads(backbone, 5)[0] != pytest.approx(plain[0], rel=1e-3)  # the window bites at 6


def test_mixed_prompts_pack_with_their_cached_keys_and_score_as_the_cache_route(
        backbone: Backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    """core.serving's batches of several prompts (and a DePT offset, and the bare model) run packed, each row over
    its own lane's cached keys and values, and score what the unpacked cache route scores: one-token answers and
    several-token ones (teacher forcing)."""
    from core import serving
    from core.serving import Lane, PromptKV, Query, rank_mixed

    g = torch.Generator().manual_seed(1)
    d, codec = backbone.hidden_size, Codec.for_backbone(backbone)
    lanes = [Lane(torch.randn(5, d, generator=g) * 0.5, codec, key="a"), Lane(None, codec),
             Lane(torch.randn(12, d, generator=g) * 0.5, codec, key="b",
                  offset=torch.randn(4, d, generator=g) * 0.3),
             Lane(torch.randn(3, d, generator=g) * 0.5, Codec.for_backbone(backbone, "label", 64))]
    queries = [Query(k, t, ("yes please", "no") if k == 2 else ("positive", "negative"))
               for t in TEXTS for k in range(len(lanes))]
    calls = _count_packed_calls(monkeypatch)
    monkeypatch.setattr(packing, "GROUP_COST", 0)  # rows of each batch split by length too
    packed = rank_mixed(backbone, lanes, queries, batch_size=5, kv_cache=PromptKV())
    if "sliding_attention" in (getattr(backbone.model.config, "layer_types", None) or []):
        assert not any(calls)  # a sliding-window model's prompt cache is not the plain one: served unpacked
    else:
        assert calls and all(calls)
    monkeypatch.setattr(serving, "packs", lambda backbone, span: False)
    cached = rank_mixed(backbone, lanes, queries, batch_size=5, kv_cache=PromptKV())
    assert_close(torch.tensor(packed), torch.tensor(cached), rtol=1e-4, atol=1e-4)
    assert backbone.model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("split", [False, True], ids=["one-group", "by-length"])
def test_a_row_without_tokens_gathers_inside_the_sequence(split: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last row has no tokens, so its start is one past the packed sequence's end: every gather of its group
    must still name a real position (an index past the end fails in index_select)."""
    if split:
        monkeypatch.setattr(packing, "GROUP_COST", 0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    batch = Batch(torch.zeros_like(mask), mask, torch.full_like(mask, -100))
    pack = packing.pack_rows(batch, 3)
    total = 3 + int(mask.sum())  # the prompt's 3 tokens, then the rows' 5
    assert len(pack.groups) == (3 if split else 1)
    assert int(pack.index.max()) < total
    assert all(int(g.gather.min()) >= 0 and int(g.gather.max()) < total for g in pack.groups)
