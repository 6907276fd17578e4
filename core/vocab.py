"""Which vocabulary tokens a soft prompt is initialised from.

The paper samples from "the 5,000 most common tokens". BPE and SentencePiece vocabularies are built roughly in
order of frequency, so we take the 5,000 lowest ids that are ordinary tokens: special and added tokens are skipped
(SmolLM2's ids 0-16 are markers such as <|im_start|> and <repo_name>, of which only 3 are registered as special) and
so are raw byte tokens (SmolLM2 ids 17-272, the byte-level alphabet; SentencePiece's <0x..> pieces) and pieces that
are only whitespace (runs of spaces and newlines for code: Gemma's ids 138-168, 29 of SmolLM2's first 5,000).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import torch

_SP_BYTE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@cache
def _byte_level_alphabet() -> frozenset[str]:
    # GPT-2's reversible byte -> printable character map: the 256 single-character tokens of byte-level BPE.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, n = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + n))
            n += 1
    return frozenset(chars)


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    return "ByteLevel" in repr(backend.pre_tokenizer) or "ByteLevel" in repr(backend.decoder)


def common_token_ids(tokenizer: Any, count: int = 5000) -> list[int]:
    """The `count` lowest ids that are ordinary tokens (no special, added, raw byte or whitespace-only tokens)."""
    skip = set(tokenizer.all_special_ids)
    skip.update(getattr(tokenizer, "added_tokens_decoder", {}).keys())
    byte_level = _is_byte_level(tokenizer)
    alphabet = _byte_level_alphabet() if byte_level else frozenset()
    ids: list[int] = []
    for token_id in range(len(tokenizer)):
        if token_id in skip:
            continue
        piece = tokenizer.convert_ids_to_tokens(token_id)
        if not isinstance(piece, str) or not piece or _SP_BYTE.match(piece):
            continue
        if byte_level and len(piece) == 1 and piece in alphabet:
            continue
        if not tokenizer.convert_tokens_to_string([piece]).strip():
            continue
        ids.append(token_id)
        if len(ids) == count:
            break
    return ids


def sample_token_ids(candidates: list[int], length: int, generator: torch.Generator) -> list[int]:
    """`length` ids drawn without replacement (with replacement only if the prompt is longer than the pool)."""
    pool = torch.tensor(candidates)
    if length <= len(candidates):
        picks = torch.randperm(len(candidates), generator=generator)[:length]
    else:
        picks = torch.randint(len(candidates), (length,), generator=generator)
    return pool[picks].tolist()


def text_start_ids(tokenizer: Any, text: str, length: int, pool: int = 1) -> list[int]:
    """A prompt of `length` tokens that reads `text`: each of its tokens repeated `pool` times (average pooling
    over blocks of `pool` then gives the text's tokens back), the whole tiled to `length`. PEFT's TEXT init, made
    pool-aware."""
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"prompt_init_text {text!r} has no tokens")
    blocks = -(-length // pool)  # ceil: the last block may be cut short when pool does not divide length
    tiled = [ids[i % len(ids)] for i in range(blocks)]
    return [i for i in tiled for _ in range(pool)][:length]


def task_instruction(answer_cue: str, label_words: tuple[str, ...] | None) -> str:
    """The default `prompt_init_text`: what the task asks for, in words, from its answer cue and label words."""
    if not label_words:
        return f"Give the {answer_cue}:"
    words = list(label_words)
    choices = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
    return f"Classify the {answer_cue}: {choices}."
