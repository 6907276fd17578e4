"""The "5,000 most common tokens" rule on the real default tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from core.vocab import common_token_ids, sample_token_ids


def test_common_tokens_of_the_default_tokenizer(default_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(default_dir)
    ids = common_token_ids(tok)
    assert len(ids) == 5000 == len(set(ids))
    # ids 0-16 are markers (<|endoftext|>, <repo_name>, ...), 17-251 the byte-level alphabet: the rule skips both
    # and then takes a contiguous run of ordinary merged tokens.
    assert ids[0] == 252 and ids == list(range(252, 5252))
    pieces = tok.convert_ids_to_tokens(ids)
    assert all(len(p) > 1 for p in pieces)
    assert not set(ids) & set(tok.all_special_ids)
    assert not set(ids) & set(tok.added_tokens_decoder)
    assert tok.convert_ids_to_tokens(251) not in pieces


def test_sampling_is_seeded_and_without_replacement() -> None:
    pool = list(range(1000, 6000))
    a = sample_token_ids(pool, 100, torch.Generator().manual_seed(7))
    b = sample_token_ids(pool, 100, torch.Generator().manual_seed(7))
    c = sample_token_ids(pool, 100, torch.Generator().manual_seed(8))
    assert a == b != c
    assert len(set(a)) == 100 and set(a) <= set(pool)
    assert len(sample_token_ids(pool[:10], 25, torch.Generator())) == 25  # longer than the pool: with replacement
