"""Tokenising text-to-text examples and putting the soft prompt in front of them.

Decoder-only:    [prompt (n)] [source] [target + eos] [pad]   labels only on the target; prompt attention 1.
Encoder-decoder: encoder [prompt (n)] [source] [pad], decoder labels = target + eos.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from core.backbone import Backbone, Family


@dataclass(frozen=True)
class Encoded:
    source: list[int]
    target: list[int]


@dataclass(frozen=True)
class Codec:
    """Turns a task's text into token ids for one backbone."""

    tokenizer: Any
    family: Family
    answer_cue: str = "answer"
    """Decoder-only: the source ends with `\n<cue>:` so the model knows where the answer starts."""
    max_length: int = 256

    @classmethod
    def for_backbone(cls, backbone: Backbone, answer_cue: str = "answer", max_length: int = 256) -> Codec:
        return cls(backbone.tokenizer, backbone.family, answer_cue, max_length)

    def source(self, text: str, budget: int | None = None) -> list[int]:
        limit = self.max_length if budget is None else budget
        if self.family == "causal":
            ids: list[int] = self.tokenizer(f"{text}\n{self.answer_cue}:")["input_ids"]
            return ids[-limit:]  # keep the cue, which is at the end
        return list(self.tokenizer(text)["input_ids"])[:limit]

    def target(self, text: str, eos: bool = True) -> list[int]:
        """The answer's tokens; `eos=False` leaves out the end marker (ranking scores the words alone)."""
        if self.family == "causal":
            ids: list[int] = self.tokenizer(" " + text, add_special_tokens=False)["input_ids"]
            return [*ids, self.tokenizer.eos_token_id] if eos else ids
        ids = list(self.tokenizer(text)["input_ids"])
        end = self.tokenizer.eos_token_id
        has_end = bool(ids) and ids[-1] == end  # T5-style tokenizers append </s> themselves; others do not
        if eos and not has_end:
            ids.append(end)
        if not eos and has_end:
            ids = ids[:-1]
        return ids

    def encode(self, source: str, target: str, eos: bool = True) -> Encoded:
        """Source truncated so that, for decoder-only models, source + target fit in max_length."""
        tgt = self.target(target, eos)
        budget = max(self.max_length - (len(tgt) if self.family == "causal" else 0), 1)
        return Encoded(self.source(source, budget), tgt)

    def encode_many(self, pairs: Sequence[tuple[str, str]], eos: bool = True) -> list[Encoded]:
        """`encode` of many (source, target) pairs: one tokenizer call for all sources, each distinct target
        (a task's few label words) tokenised once. Same ids as calling `encode` on each pair."""
        targets = {t: self.target(t, eos) for t in dict.fromkeys(t for _, t in pairs)}
        causal = self.family == "causal"
        texts = [f"{s}\n{self.answer_cue}:" if causal else s for s, _ in pairs]
        out = []
        for ids, (_, t) in zip(self.tokenizer(texts)["input_ids"] if texts else [], pairs, strict=True):
            tgt = targets[t]
            budget = max(self.max_length - (len(tgt) if causal else 0), 1)
            out.append(Encoded(list(ids[-budget:] if causal else ids[:budget]), list(tgt)))
        return out


@dataclass(frozen=True)
class RawCodec(Codec):
    """A Codec whose source is the text as it is: no answer cue (a bare model asked to continue a text)."""

    def source(self, text: str, budget: int | None = None) -> list[int]:
        limit = self.max_length if budget is None else budget
        ids: list[int] = list(self.tokenizer(text)["input_ids"])
        return ids[-limit:] if self.family == "causal" else ids[:limit]


@dataclass
class Batch:
    """Token ids without the prompt; the prompt is prepended in `prompted_inputs`."""

    input_ids: torch.Tensor  # (B, S)  causal: source + target; seq2seq: source
    attention_mask: torch.Tensor  # (B, S)
    labels: torch.Tensor  # causal: (B, S), -100 off the target; seq2seq: (B, L) decoder labels

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


def collate(items: Sequence[Encoded], family: Family, pad_id: int, device: torch.device) -> Batch:
    if family == "causal":
        seqs = [e.source + e.target for e in items]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for row, (e, s) in enumerate(zip(items, seqs, strict=True)):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
            labels[row, len(e.source) : len(s)] = torch.tensor(e.target)
    else:
        width = max(len(e.source) for e in items)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, e in enumerate(items):
            ids[row, : len(e.source)] = torch.tensor(e.source)
            mask[row, : len(e.source)] = 1
        tw = max(len(e.target) for e in items)
        labels = torch.full((len(items), tw), -100, dtype=torch.long)
        for row, e in enumerate(items):
            labels[row, : len(e.target)] = torch.tensor(e.target)
    return Batch(ids.to(device), mask.to(device), labels.to(device))


def embed_inputs(backbone: Backbone, batch: Batch, offset: torch.Tensor | None = None) -> torch.Tensor:
    """The rows' token embeddings (B, S, d); with an input offset (DePT's A B: (s, d) shared, or (B, s, d) one per
    row), offset[t] is added to each row's t-th input token for t < s.

    Input tokens are counted from each row's first unmasked token, whatever the padding (right-padded training
    rows, left-padded generation rows); answer tokens (the labelled positions of a decoder-only row) get none."""
    embeds = backbone.input_embeddings(batch.input_ids)  # (B, S, d)
    if offset is None:
        return embeds
    mask = batch.attention_mask
    t = mask.cumsum(dim=1) - 1  # (B, S): each token's index among its row's tokens
    inputs = mask.bool() & (t < offset.shape[-2])
    if backbone.family == "causal" and batch.labels.shape == batch.input_ids.shape:
        inputs &= batch.labels == -100  # the answer's tokens are embedded as decoding embeds them
    t = t.clamp(0, offset.shape[-2] - 1)
    o = offset.to(embeds.dtype)
    rows = o[t] if o.dim() == 2 else o[torch.arange(o.shape[0], device=o.device)[:, None], t]  # (B, S, d)
    return embeds + rows * inputs[..., None].to(embeds.dtype)


def prompted_inputs(backbone: Backbone, prompt: torch.Tensor, batch: Batch, offset: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """inputs_embeds (B, n + S, d) and attention mask (B, n + S) with the prompt first.

    `prompt` is (n, d) for one prompt shared by the batch or (B, n, d) for one prompt per row; `offset` is added
    to the inputs' own token embeddings (embed_inputs).
    """
    embeds = embed_inputs(backbone, batch, offset)  # (B, S, d)
    rows = batch.size
    p = prompt.to(embeds.dtype)
    p = p.unsqueeze(0).expand(rows, -1, -1) if p.dim() == 2 else p  # (B, n, d)
    ones = torch.ones(rows, p.shape[1], dtype=batch.attention_mask.dtype, device=batch.attention_mask.device)
    return torch.cat([p, embeds], dim=1), torch.cat([ones, batch.attention_mask], dim=1)


def length_bucketed_order(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of batches: shuffle, sort by length inside windows of 50 batches, shuffle the batches.

    Keeps the data order random while padding stays small.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def eval_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices sorted by length (little padding), in batches; callers restore the original order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
