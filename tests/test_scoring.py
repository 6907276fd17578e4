"""Prompt insertion and the forward passes, checked against the plain model on equivalent token ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from core.backbone import Backbone, load_backbone
from core.batching import Codec, collate, length_bucketed_order
from core.scoring import generate, loss_fn, rank_candidates, sequence_logprobs
from core.spec import ModelConfig

TEXTS = ["a short one", "a somewhat longer input sentence with more words in it", "mid length text here"]


def _backbone(path: Path) -> Backbone:
    return load_backbone(ModelConfig(str(path)), torch.device("cpu"))


@pytest.fixture(scope="module", params=["llama", "gpt2", "t5"])
def backbone(request: pytest.FixtureRequest) -> Backbone:
    return _backbone(request.getfixturevalue(f"tiny_{request.param}_dir"))


def test_family_detection(backbone: Backbone) -> None:
    assert backbone.family == ("seq2seq" if backbone.model.config.is_encoder_decoder else "causal")
    assert not any(p.requires_grad for p in backbone.model.parameters())


def test_prompt_of_real_token_embeddings_equals_those_tokens_as_input(backbone: Backbone) -> None:
    """A prompt made of token embeddings must act exactly like those tokens written before the source."""
    codec = Codec.for_backbone(backbone)
    prefix = [300, 301, 302, 303, 304]
    prompt = backbone.input_embeddings.weight[torch.tensor(prefix)]  # (5, d)
    items = [codec.encode(t, "positive") for t in TEXTS]
    with_prompt = sequence_logprobs(backbone, prompt, collate(items, backbone.family, 2, backbone.device))
    shifted = [type(e)(prefix + e.source, e.target) for e in items]
    as_tokens = sequence_logprobs(backbone, prompt[:0], collate(shifted, backbone.family, 2, backbone.device))
    assert_close(with_prompt, as_tokens, rtol=1e-4, atol=1e-4)


def test_lm_head_only_on_labels_gives_the_models_own_loss(backbone: Backbone) -> None:
    codec = Codec.for_backbone(backbone)
    batch = collate([codec.encode(t, "negative") for t in TEXTS], backbone.family, 2, backbone.device)
    ours = loss_fn(backbone, torch.zeros(0, backbone.hidden_size), batch)
    ref = backbone.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
    assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_batched_answers_equal_one_at_a_time(backbone: Backbone) -> None:
    codec = Codec.for_backbone(backbone)
    prompt = torch.randn(4, backbone.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.05
    batched = generate(backbone, prompt, codec, TEXTS, max_new_tokens=5)
    single = [generate(backbone, prompt, codec, [t], max_new_tokens=5)[0] for t in TEXTS]
    assert batched == single
    words = [["negative", "positive"], ["no", "yes please"], ["one", "two words", "three"]]
    ranked = rank_candidates(backbone, prompt, codec, TEXTS, words)
    alone = [rank_candidates(backbone, prompt, codec, [t], [w])[0] for t, w in zip(TEXTS, words, strict=True)]
    assert_close(torch.tensor(ranked[0]), torch.tensor(alone[0]), rtol=1e-4, atol=1e-4)
    assert [len(r) for r in ranked] == [2, 2, 3]


def test_single_token_shortcut_equals_full_scoring(backbone: Backbone) -> None:
    """Ranking one-token answers by one forward over the source gives the same scores as teacher forcing."""
    codec = Codec.for_backbone(backbone)
    words = ["negative", "positive"]
    assert all(len(codec.target(w, eos=False)) == 1 for w in words)
    fast = rank_candidates(backbone, None, codec, TEXTS, [words] * 3)
    items = [codec.encode(t, w, eos=False) for t in TEXTS for w in words]
    full = sequence_logprobs(backbone, torch.zeros(0, backbone.hidden_size),
                             collate(items, backbone.family, 2, backbone.device))
    assert_close(torch.tensor(fast).flatten(), full, rtol=1e-4, atol=1e-4)


def test_length_bucketed_order_covers_every_example_once() -> None:
    import random

    rng = random.Random(1)
    lengths = [rng.randint(1, 50) for _ in range(203)]
    batches = length_bucketed_order(lengths, 16, random.Random(0))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(203))
    assert batches == length_bucketed_order(lengths, 16, random.Random(0))


def test_generate_and_rank_in_one_pass_equals_the_two_passes(backbone: Backbone) -> None:
    from core.scoring import generate_and_rank

    codec = Codec.for_backbone(backbone)
    prompt = torch.randn(3, backbone.hidden_size, generator=torch.Generator().manual_seed(1)) * 0.05
    words = [["negative", "positive"]] * len(TEXTS)
    texts, scores = generate_and_rank(backbone, prompt, codec, TEXTS, words, max_new_tokens=4)
    assert texts == generate(backbone, prompt, codec, TEXTS, max_new_tokens=4)
    assert_close(torch.tensor(scores), torch.tensor(rank_candidates(backbone, prompt, codec, TEXTS, words)),
                 rtol=1e-4, atol=1e-4)


def test_a_prompt_shared_by_the_batch_runs_once_with_the_same_loss_and_gradient(backbone: Backbone) -> None:
    """A shared (n, d) prompt goes through a decoder-only model once and the rows read its cached keys and values;
    the same prompt given per row (B, n, d) takes the plain route. Both must give the same loss and gradient."""
    codec = Codec.for_backbone(backbone)
    batch = collate([codec.encode(t, "positive") for t in TEXTS], backbone.family, 2, backbone.device)
    base = torch.randn(4, backbone.hidden_size, generator=torch.Generator().manual_seed(3)) * 0.05
    shared, per_row = base.clone().requires_grad_(), base.clone().requires_grad_()
    loss_shared = loss_fn(backbone, shared, batch)
    loss_shared.backward()
    loss_rows = loss_fn(backbone, per_row.expand(batch.size, -1, -1), batch)
    loss_rows.backward()
    assert_close(loss_shared, loss_rows, rtol=1e-5, atol=1e-5)
    assert shared.grad is not None and per_row.grad is not None
    assert_close(shared.grad, per_row.grad, rtol=1e-4, atol=1e-6)


def test_encoding_many_at_once_equals_one_at_a_time(backbone: Backbone) -> None:
    codec = Codec.for_backbone(backbone, max_length=12)  # short: truncation included
    pairs = [(t, w) for t in TEXTS for w in ("negative", "yes please")]
    assert codec.encode_many(pairs) == [codec.encode(s, t) for s, t in pairs]
    assert codec.encode_many(pairs, eos=False) == [codec.encode(s, t, eos=False) for s, t in pairs]
    assert codec.encode_many([]) == []
