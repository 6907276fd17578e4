"""The "5,000 most common tokens" rule on the real default tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from core.vocab import common_token_ids, sample_token_ids, task_instruction, text_start_ids


def _whitespace_only(tok: object, ids: list[int]) -> list[int]:
    return [i for i in ids if not tok.convert_tokens_to_string([tok.convert_ids_to_tokens(i)]).strip()]  # type: ignore[attr-defined]


def test_common_tokens_of_the_default_tokenizer(default_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(default_dir)
    ids = common_token_ids(tok)
    assert len(ids) == 5000 == len(set(ids))
    # ids 0-16 are markers (<|endoftext|>, <repo_name>, ...), 17-251 the byte-level alphabet: the rule skips both,
    # then takes ordinary merged tokens, leaving out the 29 whitespace runs among them ('ĠĠ', 'ĊĠĠĠ', ...).
    skipped = _whitespace_only(tok, list(range(252, 5285)))
    assert ids[0] == 252 and ids[-1] == 5284 and len(skipped) == 33
    assert ids == [i for i in range(252, 5285) if i not in skipped]
    assert tok.convert_ids_to_tokens(256) == "ĠĠ" and 256 in skipped
    pieces = tok.convert_ids_to_tokens(ids)
    assert all(len(p) > 1 for p in pieces)
    assert not set(ids) & set(tok.all_special_ids)
    assert not set(ids) & set(tok.added_tokens_decoder)
    assert tok.convert_ids_to_tokens(251) not in pieces


@pytest.mark.real_model
def test_common_tokens_of_the_gemma_tokenizer(gemma_dir: Path) -> None:
    """SentencePiece with byte pieces and a 262k vocabulary: markers, <unusedN> and HTML tags are added tokens, then
    whitespace runs (ids 138-...), then the <0x00>-<0xFF> byte pieces; ordinary pieces start at 494."""
    tok = AutoTokenizer.from_pretrained(gemma_dir)
    ids = common_token_ids(tok)
    assert len(ids) == 5000 == len(set(ids)) and ids[0] == 494
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[:3] == ["▁t", "in", "▁a"]
    assert not [p for p in pieces if p.startswith("<0x")]
    assert not _whitespace_only(tok, ids)
    assert not set(ids) & (set(tok.all_special_ids) | set(tok.added_tokens_decoder))
    assert tok.convert_ids_to_tokens(493) == "<0xFF>" and tok.convert_ids_to_tokens(138) == "▁▁"


def test_sampling_is_seeded_and_without_replacement() -> None:
    pool = list(range(1000, 6000))
    a = sample_token_ids(pool, 100, torch.Generator().manual_seed(7))
    b = sample_token_ids(pool, 100, torch.Generator().manual_seed(7))
    c = sample_token_ids(pool, 100, torch.Generator().manual_seed(8))
    assert a == b != c
    assert len(set(a)) == 100 and set(a) <= set(pool)
    assert len(sample_token_ids(pool[:10], 25, torch.Generator())) == 25  # longer than the pool: with replacement


def test_text_start_reads_the_text_after_pooling(default_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(default_dir)
    text = task_instruction("sentiment", ("negative", "positive"))
    assert text == "Classify the sentiment: negative or positive."
    assert task_instruction("party", ("republican", "democratic", "moderator")) == \
        "Classify the party: republican, democratic or moderator."
    words = tok(text, add_special_tokens=False)["input_ids"]
    ids = text_start_ids(tok, text, length=100, pool=4)
    assert len(ids) == 100
    blocks = [ids[i : i + 4] for i in range(0, 100, 4)]
    assert all(len(set(b)) == 1 for b in blocks)  # each text token p times: pooling gives it back
    assert [b[0] for b in blocks] == [words[i % len(words)] for i in range(25)]  # the text, tiled
    assert text_start_ids(tok, text, length=10, pool=1) == [words[i % len(words)] for i in range(10)]
    assert len(text_start_ids(tok, text, length=10, pool=4)) == 10
