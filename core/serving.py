"""Several trained prompts on one frozen backbone in the same batch: each row reads its own prompt.

Serving many tuned prompts is cheap because they share every weight of the backbone; only the few prompt vectors
differ. So rows for different prompts (different lengths, or none: the bare model) go through one forward. Each row
keeps the layout the single-prompt path gives it, [prompt_i][source_i] from position 0: the prompt block is as wide
as the batch's longest prompt, a shorter one is padded on its left and masked out, and positions are counted over
unmasked tokens only.

    decoder-only, scoring:     [pad][prompt_i][source_i][pad]
    decoder-only, generation:  [pad][prompt_i][pad][source_i]   every row ends at the column where tokens are added
    encoder-decoder:           encoder [pad][prompt_i][source_i][pad]; T5's relative positions see no gap

On the CPU (decoder-only) each distinct prompt's keys and values are computed once per call, batch 1, exactly as
core.scoring.shared_prompt_cache does for one prompt, and gathered to the rows: the rows run only their own tokens.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from core.backbone import Backbone, cache_arg, returned_cache
from core.batching import Batch, Codec, Encoded, collate, embed_inputs, eval_batches
from core.packing import packed_rows_hidden, packs
from core.scoring import answer_tokens, continue_ids, left_padded, one_token_each, source_budget


@dataclass(frozen=True)
class Lane:
    """One prompt served in mixed batches, and the codec that turns its inputs into tokens (answer cue, length)."""

    prompt: torch.Tensor | None
    """(n, d); None: the bare model."""
    codec: Codec
    key: Hashable | None = None
    """Names the prompt in a PromptKV cache (an artifact's path and version): its keys and values are computed
    once and reused by later calls. None: computed for this call only."""
    offset: torch.Tensor | None = None
    """(s, d): what the lane's method adds to its inputs' own token embeddings (DePT); None for the others."""


LayerKV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer, one prompt's keys and values: (1, kv heads, n, head dim) each."""


class PromptKV:
    """Prompts' keys and values kept between calls, least recently used dropped past `max_mib` (thread-safe).

    A tuned prompt does not change once trained, so a server computes its cache once, not on every request."""

    def __init__(self, max_mib: float = 256.0) -> None:
        self.max_bytes = int(max_mib * 2**20)
        self._items: OrderedDict[Hashable, tuple[LayerKV, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._items.values())

    def get(self, key: Hashable) -> LayerKV | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Hashable, kv: LayerKV) -> None:
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        with self._lock:
            self._items[key] = (kv, size)
            self._items.move_to_end(key)
            total = sum(s for _, s in self._items.values())
            while total > self.max_bytes and len(self._items) > 1:
                _, (_, dropped) = self._items.popitem(last=False)
                total -= dropped


@dataclass(frozen=True)
class Query:
    lane: int
    """Index into the lanes."""
    source: str
    """The model input, already rendered with the lane's template."""
    candidates: tuple[str, ...] = ()
    """Answers to rank (label words); empty for generation."""


class PromptTable:
    """The lanes' prompts, padded on the left into one table, and on the CPU their keys and values."""

    def __init__(self, backbone: Backbone, lanes: Sequence[Lane], kv_cache: PromptKV | None = None) -> None:
        self.backbone = backbone
        self.lengths = [0 if lane.prompt is None else int(lane.prompt.shape[0]) for lane in lanes]
        width, d = max(self.lengths, default=0), backbone.hidden_size
        self.table = torch.zeros(len(lanes), width, d, dtype=backbone.dtype, device=backbone.device)  # (L, m, d)
        self.mask = torch.zeros(len(lanes), width, dtype=torch.long, device=backbone.device)  # (L, m)
        for i, (lane, n) in enumerate(zip(lanes, self.lengths, strict=True)):
            if lane.prompt is not None and n:
                self.table[i, width - n :] = lane.prompt.to(backbone.device, backbone.dtype)
                self.mask[i, width - n :] = 1
        self.kv = _prompt_keys_values(backbone, lanes, width, kv_cache)
        spans = [0 if lane.offset is None else int(lane.offset.shape[0]) for lane in lanes]
        self.offsets: torch.Tensor | None = None
        """(L, s, d): each lane's input offset, zeros past its own s and for lanes without one; None if none has."""
        if any(spans):
            self.offsets = torch.zeros(len(lanes), max(spans), d, dtype=backbone.dtype, device=backbone.device)
            for i, (lane, s) in enumerate(zip(lanes, spans, strict=True)):
                if lane.offset is not None and s:
                    self.offsets[i, :s] = lane.offset.to(backbone.device, backbone.dtype)

    def width(self, lanes: torch.Tensor) -> int:
        """The prompt block's width for rows reading these lanes: their longest prompt."""
        return max(self.lengths[i] for i in lanes.tolist())

    def block(self, lanes: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's prompt, padded on the left to `width`, and its mask. (B, width, d), (B, width)"""
        start = self.table.shape[1] - width
        return self.table[lanes, start:], self.mask[lanes, start:]

    def row_kv(self, lanes: torch.Tensor, width: int) -> LayerKV | None:
        """Per layer, each row's prompt keys and values (B, kv heads, width, head dim), or None off the CPU route.
        One lane: views of its own tensors."""
        if self.kv is None or width == 0 or not use_prompt_cache(self.backbone):
            return None
        start = self.kv[0][0].shape[2] - width
        if self.kv[0][0].shape[0] == 1:  # one lane: every row reads the same keys and values
            rows = int(lanes.shape[0])
            return [(k[:, :, start:].expand(rows, -1, -1, -1), v[:, :, start:].expand(rows, -1, -1, -1))
                    for k, v in self.kv]
        return [(k[lanes, :, start:], v[lanes, :, start:]) for k, v in self.kv]

    def cache(self, lanes: torch.Tensor, width: int) -> Any | None:
        """A KV cache holding each row's prompt (B, heads, width, head dim), or None where the plain route applies."""
        kv = self.row_kv(lanes, width)
        if kv is None:
            return None
        from transformers.cache_utils import DynamicCache

        return DynamicCache(kv)


def use_prompt_cache(backbone: Backbone) -> bool:
    """The CPU route of core.scoring.shared_prompt_cache: on CUDA a second pass through the layers costs more than
    the prompt positions it saves."""
    return backbone.family == "causal" and backbone.device.type == "cpu"


def prompt_layer_kv(backbone: Backbone, prompt: torch.Tensor) -> LayerKV | None:
    """One prompt's keys and values, batch 1, as core.scoring.shared_prompt_cache computes them; None where the
    model's cache is not the plain dynamic one (sliding windows, hybrids)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    cache = returned_cache(backbone.model.base_model(inputs_embeds=prompt.to(backbone.device, backbone.dtype)[None],
                                                     use_cache=True))
    layers = getattr(cache, "layers", None)
    if type(cache) is not DynamicCache or not layers or any(type(x) is not DynamicLayer for x in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def _prompt_keys_values(backbone: Backbone, lanes: Sequence[Lane], width: int, kv_cache: PromptKV | None = None
                        ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Per layer, every lane's prompt keys and values padded on the left to `width`: (L, heads, width, head dim).
    A lane with a key is read from (or added to) `kv_cache`.

    None off the CPU route, or where the model's cache is not the plain dynamic one (sliding windows, hybrids)."""
    if not use_prompt_cache(backbone) or width == 0:
        return None
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    if len(lanes) == 1 and lanes[0].prompt is not None and lanes[0].prompt.shape[0] == width:
        return _lane_keys_values(backbone, lanes[0], kv_cache)  # one prompt: its own tensors, nothing to pad
    for i, lane in enumerate(lanes):
        prompt = lane.prompt
        if prompt is None or prompt.shape[0] == 0:
            continue
        layers = _lane_keys_values(backbone, lane, kv_cache)
        if layers is None:
            return None
        if not out:  # zeros where a lane has no prompt or a shorter one: masked out
            out = [(k.new_zeros(len(lanes), k.shape[1], width, k.shape[3]),
                    v.new_zeros(len(lanes), v.shape[1], width, v.shape[3])) for k, v in layers]
        n = prompt.shape[0]
        for (keys, values), (k, v) in zip(out, layers, strict=True):
            keys[i, :, width - n :] = k[0]
            values[i, :, width - n :] = v[0]
    return out or None


def _lane_keys_values(backbone: Backbone, lane: Lane, kv_cache: PromptKV | None) -> LayerKV | None:
    """One lane's prompt keys and values, (1, heads, n, head dim) per layer: from `kv_cache` when the lane has a key
    there, else computed (and added to it)."""
    assert lane.prompt is not None
    cacheable = kv_cache is not None and lane.key is not None
    layers = kv_cache.get(lane.key) if cacheable else None  # type: ignore[union-attr]
    if layers is None:
        layers = prompt_layer_kv(backbone, lane.prompt)
        if layers is not None and cacheable:
            kv_cache.put(lane.key, layers)  # type: ignore[union-attr]
    return layers


def _encoder_inputs(backbone: Backbone, prompts: PromptTable, lanes: torch.Tensor, batch: Batch
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """[prompt_i][row] embeddings and their mask. (B, m + S, d), (B, m + S)"""
    block, prompt_mask = prompts.block(lanes, prompts.width(lanes))  # (B, m, d), (B, m)
    offsets = None if prompts.offsets is None else prompts.offsets[lanes]  # (B, s, d)
    embeds = torch.cat([block, embed_inputs(backbone, batch, offsets)], dim=1)
    return embeds, torch.cat([prompt_mask.to(batch.attention_mask.dtype), batch.attention_mask], dim=1)


@dataclass
class _CausalInputs:
    """What a decoder-only forward over [prompt_i][row] takes: with the CPU cache the embeddings and positions are
    the rows' own columns (B, S) and the prompts come from `cache`; without it they span (B, m + S)."""

    embeds: torch.Tensor
    mask: torch.Tensor  # (B, m + S) either way
    positions: torch.Tensor
    cache: Any | None


def _causal_inputs(backbone: Backbone, prompts: PromptTable, lanes: torch.Tensor, batch: Batch) -> _CausalInputs:
    width = prompts.width(lanes)
    embeds, mask = _encoder_inputs(backbone, prompts, lanes, batch)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, m + S): each row counts from 0 at its first token
    cache = prompts.cache(lanes, width)
    if cache is None:
        return _CausalInputs(embeds, mask, positions, None)
    return _CausalInputs(embeds[:, width:], mask, positions[:, width:], cache)


PACK_MIN_ROWS = 1
"""Batches of at least this many rows run packed on the CPU (one row too: its cached prompt is read by the packed
attention, without the key/value cache object, its per-layer copies and its mask)."""


def _hidden(backbone: Backbone, prompts: PromptTable, lanes: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Decoder-only: the last hidden states of the batch's own columns. (B, S, d)

    On the CPU the rows run packed (core.packing): only their real tokens go through the layers, one after
    another, each attending to its lane's cached prompt keys and values and then causally to its own tokens."""
    width = prompts.width(lanes)
    kv = prompts.row_kv(lanes, width)
    if (batch.size >= PACK_MIN_ROWS and packs(backbone, width + batch.input_ids.shape[1])
            and (kv is not None or width == 0)):
        offsets = None if prompts.offsets is None else prompts.offsets[lanes]  # (B, s, d)
        return packed_rows_hidden(backbone, embed_inputs(backbone, batch, offsets), batch,
                                  prompts.block(lanes, width)[1], kv)
    x = _causal_inputs(backbone, prompts, lanes, batch)
    out = backbone.model.base_model(inputs_embeds=x.embeds, attention_mask=x.mask, position_ids=x.positions,
                                    **cache_arg(x.cache), use_cache=x.cache is not None)
    return out.last_hidden_state[:, -batch.input_ids.shape[1]:]


def _first_logprobs(backbone: Backbone, prompts: PromptTable, lanes: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Log-softmax over the vocabulary where each row's answer starts. (B, V)"""
    if backbone.family == "seq2seq":
        embeds, mask = _encoder_inputs(backbone, prompts, lanes, batch)
        out = backbone.model(inputs_embeds=embeds, attention_mask=mask, labels=batch.labels[:, :1])
        return torch.log_softmax(out.logits[:, 0].float(), dim=-1)
    hidden = _hidden(backbone, prompts, lanes, batch)  # (B, S, d)
    last = (batch.labels != -100).float().argmax(dim=1) - 1  # position before the single label token
    h = hidden[torch.arange(batch.size, device=hidden.device), last]  # (B, d)
    return torch.log_softmax(backbone.model.get_output_embeddings()(h).float(), dim=-1)


def _sequence_logprobs(backbone: Backbone, prompts: PromptTable, lanes: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Summed log-likelihood of each row's target (core.scoring.sequence_logprobs, one prompt per row). (B,)"""
    if backbone.family == "seq2seq":
        embeds, mask = _encoder_inputs(backbone, prompts, lanes, batch)
        logits = backbone.model(inputs_embeds=embeds, attention_mask=mask, labels=batch.labels).logits  # (B, L, V)
        labels = batch.labels
    else:
        logits = backbone.model.get_output_embeddings()(_hidden(backbone, prompts, lanes, batch)[:, :-1])
        labels = batch.labels[:, 1:]  # the token at t is predicted from position t - 1
    keep = labels != -100
    logp = -F.cross_entropy(logits[keep].float(), labels[keep], reduction="none")  # (N,)
    return torch.zeros(batch.size, device=logp.device).index_add_(0, keep.nonzero()[:, 0], logp)


def _lanes(queries: Sequence[Query], idx: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor([queries[i].lane for i in idx], device=device)  # (B,)


@torch.no_grad()
def rank_mixed(backbone: Backbone, lanes: Sequence[Lane], queries: Sequence[Query], *,
               batch_size: int = 32, kv_cache: PromptKV | None = None) -> list[list[float]]:
    """core.scoring.rank_candidates for rows that each read their own lane's prompt: log-likelihood of each
    candidate's words after each query's source, a list of scores per query."""
    prompts = PromptTable(backbone, lanes, kv_cache)
    codecs = [lanes[q.lane].codec for q in queries]
    by_lane = [answer_tokens(lane.codec, [q.candidates for q in queries if q.lane == i])  # each word tokenised once
               for i, lane in enumerate(lanes)]
    targets = [by_lane[q.lane] for q in queries]
    firsts = [one_token_each(t, q.candidates) for t, q in zip(targets, queries, strict=True)]
    out: list[list[float]] = [[] for _ in queries]
    # One-token candidates: one forward over the source gives all of them.
    short = [i for i, ids in enumerate(firsts) if ids is not None and ids]
    encoded = {i: codecs[i].source(queries[i].source, codecs[i].max_length - 1) for i in short}
    for part in eval_batches([_sort_key(backbone, prompts, queries[i], len(encoded[i])) for i in short], batch_size):
        idx = [short[j] for j in part]
        items = [Encoded(encoded[i], [(firsts[i] or [0])[0]]) for i in idx]  # one stand-in target per row
        batch = collate(items, backbone.family, backbone.tokenizer.pad_token_id, backbone.device)
        logp = _first_logprobs(backbone, prompts, _lanes(queries, idx, backbone.device), batch).cpu()  # (B, V)
        for row, i in enumerate(idx):
            out[i] = logp[row, firsts[i] or []].tolist()
    # Longer candidates: teacher forcing, one row per (query, candidate).
    flat: list[tuple[int, int, Encoded]] = []  # (query, candidate, tokens)
    for i, q in enumerate(queries):
        if firsts[i] is None:
            c, out[i] = codecs[i], [0.0] * len(q.candidates)
            flat += [(i, k, Encoded(c.source(q.source, source_budget(c, targets[i][w])), targets[i][w]))
                     for k, w in enumerate(q.candidates)]
    keys = [_sort_key(backbone, prompts, queries[i], len(e.source) + len(e.target)) for i, _, e in flat]
    for part in eval_batches(keys, batch_size):
        batch = collate([flat[j][2] for j in part], backbone.family, backbone.tokenizer.pad_token_id,
                        backbone.device)
        rows = torch.tensor([queries[flat[j][0]].lane for j in part], device=backbone.device)
        scores = _sequence_logprobs(backbone, prompts, rows, batch).float().cpu().tolist()
        for j, score in zip(part, scores, strict=True):
            i, k, _ = flat[j]
            out[i][k] = score
    return out


def _sort_key(backbone: Backbone, prompts: PromptTable, query: Query, length: int) -> int:
    """Rows of similar width batch together: the tokens that run through the model (the prompt too off the cache)."""
    return length + (0 if prompts.kv is not None else prompts.lengths[query.lane])


@torch.no_grad()
def generate_mixed(backbone: Backbone, lanes: Sequence[Lane], queries: Sequence[Query], *,
                   max_new_tokens: int = 16, batch_size: int = 16, kv_cache: PromptKV | None = None) -> list[str]:
    """core.scoring.generate for rows that each read their own lane's prompt: greedy answers, one per query."""
    tok = backbone.tokenizer
    ids = generate_mixed_ids(backbone, lanes, queries, max_new_tokens=max_new_tokens, batch_size=batch_size,
                             kv_cache=kv_cache)
    return [tok.decode(row, skip_special_tokens=True).strip() for row in ids]


@torch.no_grad()
def generate_mixed_ids(backbone: Backbone, lanes: Sequence[Lane], queries: Sequence[Query], *,
                       max_new_tokens: int = 16, batch_size: int = 16, kv_cache: PromptKV | None = None,
                       limits: Sequence[int] | None = None, temperatures: Sequence[float] | None = None,
                       generator: torch.Generator | None = None,
                       on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """The new token ids of each query's answer (the end marker included where it stopped on one). `limits` and
    `temperatures`: each query's own token budget and sampling temperature (0: greedy; decoder-only models);
    `on_token(query, token)` hears each token as it is chosen (encoder-decoder models: once their answer is
    generated)."""
    prompts = PromptTable(backbone, lanes, kv_cache)
    encoded = [lanes[q.lane].codec.source(q.source) for q in queries]
    out: list[list[int]] = [[] for _ in queries]
    for idx in eval_batches([_sort_key(backbone, prompts, q, len(e)) for q, e in zip(queries, encoded, strict=True)],
                            batch_size):
        lane_ids = _lanes(queries, idx, backbone.device)
        if backbone.family == "seq2seq":
            rows = _generate_seq2seq(backbone, prompts, lane_ids, [encoded[i] for i in idx], max_new_tokens)
            if on_token is not None:
                for i, row in zip(idx, rows, strict=True):
                    for token in row:
                        on_token(i, token)
        else:
            x = _causal_inputs(backbone, prompts, lane_ids, left_padded(backbone, [encoded[i] for i in idx]))
            prefill = backbone.model(inputs_embeds=x.embeds, attention_mask=x.mask, position_ids=x.positions,
                                     **cache_arg(x.cache), use_cache=True, logits_to_keep=1)
            rows = continue_ids(backbone, prefill, x.mask, x.positions, max_new_tokens,
                                limits=[limits[i] for i in idx] if limits is not None else None,
                                temperatures=[temperatures[i] for i in idx] if temperatures is not None else None,
                                generator=generator,
                                on_token=None if on_token is None else partial(_to_query, on_token, idx))
        for i, row in zip(idx, rows, strict=True):
            out[i] = row
    return out


def _to_query(on_token: Callable[[int, int], None], idx: list[int], row: int, token: int) -> None:
    on_token(idx[row], token)


def _generate_seq2seq(backbone: Backbone, prompts: PromptTable, lanes: torch.Tensor, ids: list[list[int]],
                      new: int) -> list[list[int]]:
    batch = collate([Encoded(s, [0]) for s in ids], "seq2seq", backbone.tokenizer.pad_token_id, backbone.device)
    embeds, mask = _encoder_inputs(backbone, prompts, lanes, batch)
    tokens = backbone.model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=new,
                                     do_sample=False, num_beams=1)
    pad, start = backbone.tokenizer.pad_token_id, backbone.model.config.decoder_start_token_id
    return [[t for t in row if t not in (pad, start)] for row in tokens.tolist()]
