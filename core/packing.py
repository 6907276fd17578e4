"""A decoder-only forward over [prompt][row] for every row of a batch, with the prompt and the rows' tokens packed
into one sequence: every linear layer runs once over n + N tokens (the prompt's n once, the rows' N real tokens, no
padding), and only attention sees the rows apart.

    packed sequence:  [prompt (n)][row 0's tokens][row 1's tokens] ...        positions 0..n-1, then n + t in row
    attention:        the prompt causally over itself; each row over the prompt's keys and values, then causally
                      over its own tokens: batched (b, heads, w, n + w) per group of rows of similar length (w the
                      group's longest row), so that a short row is not padded to the batch's longest

It computes what running [prompt][row] for every row computes (tested to float tolerance, loss and gradients),
and what core.scoring.shared_prompt_cache's route computes, without that route's second pass: there the prompt ran
through the model on its own, at batch 1, forward and backward, streaming every weight again for n tokens. Packing
also drops the rows' padding from every layer but attention, and most of it from attention; a prompt of no tokens
(the bare model, the benchmark's floor) packs the same way.

core.serving packs too: its rows each follow their own lane's prompt, whose keys and values are already in its
cache, so only the rows' tokens are in the sequence and each row's queries read its lane's keys and values
(`Pack.kv`) before its own tokens.

The attention runs through transformers' attention interface: while a packed call is in flight the model's
configuration names PACKED, whose function reads the call's Pack from its keyword arguments; any other call that
reaches it in that time (another thread on the same backbone) has no Pack and gets the plain SDPA attention and SDPA
masks, exactly as under "sdpa".
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from core.backbone import Backbone
from core.batching import Batch, embed_inputs

PACKED = "lamp_packed"
_SWITCH = threading.Lock()
_IN_FLIGHT: dict[int, int] = {}  # id(config) -> packed calls running on it


@dataclass(frozen=True)
class Group:
    """Rows of similar length whose attention runs as one batch, each row's tokens from column 0 (w: the longest)."""

    rows: torch.Tensor
    """(b,) long: the batch rows in the group."""
    gather: torch.Tensor
    """(b * w,) long: each (row, column)'s place in the packed sequence, row by row; a column past a row's end
    points at a real token of that row (its output is never read)."""
    mask: torch.Tensor
    """(b, 1, w, m + w) bool: each query sees its prompt's m positions, then its row's tokens up to itself."""
    take: torch.Tensor
    """(N_g,) long: the real tokens among the b * w outputs, in packed order."""


@dataclass(frozen=True)
class Pack:
    """Where a batch's rows sit in the packed sequence, and what their queries see."""

    n: int
    """The prompt's tokens, first in the sequence."""
    valid: torch.Tensor
    """(B, S) bool: the rows' real tokens (their attention mask)."""
    index: torch.Tensor
    """(B, S) long: each row position's place in the packed sequence (a padding position points at a real token of
    its row; its output is never read)."""
    groups: tuple[Group, ...]
    """The rows split by length, so that attention is not computed over the padding of short rows beside long ones
    (one group where the rows are about as long as each other, as in the training loop's length-bucketed batches)."""
    order: torch.Tensor | None
    """(N,) long: where each of the rows' tokens is among the groups' outputs laid end to end; None for one group
    (its outputs are in packed order already)."""
    kv: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None
    """Per layer, each row's prompt keys and values (B, kv heads, m, head dim), computed beforehand (core.serving:
    a prompt per row, cached per lane); then no prompt is in the sequence (n = 0). None: the prompt's n tokens
    lead the sequence and every row sees all of them (m = n)."""


def packs(backbone: Backbone, span: int) -> bool:
    """Decoder-only on the CPU, with the plain SDPA attention, and every layer seeing the whole of each row: full
    attention, or a sliding window at least `span` wide (the most positions one row covers, its prompt and its own
    tokens). Gemma 3's local layers see 512 positions: a row of a 25-token prompt and at most 256 of text fits, and
    there a sliding layer computes what a full one does. Other layer kinds (chunked, linear, recurrent) do not pack."""
    config = backbone.model.config
    window = getattr(config, "sliding_window", None)
    kinds = set(getattr(config, "layer_types", None) or [])
    return (backbone.family == "causal" and backbone.device.type == "cpu"
            and getattr(config, "_attn_implementation", None) == "sdpa"
            and kinds <= {"full_attention", "sliding_attention"}
            and (window is None or span <= window)
            and ("sliding_attention" not in kinds or window is not None))


def can_pack(backbone: Backbone, prompt: torch.Tensor, batch: Batch) -> bool:
    """One prompt shared by every row, two rows or more, on a model that packs rows of this batch's width."""
    return (prompt.dim() == 2 and batch.size >= 2
            and packs(backbone, int(prompt.shape[0]) + int(batch.input_ids.shape[1])))


MAX_GROUPS = 4
GROUP_COST = 2048
"""What one more attention call per layer costs, in query-key pairs: a split must save more than this."""


def pack_rows(batch: Batch, n: int, prompt_mask: torch.Tensor | None = None,
              kv: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> Pack:
    valid = batch.attention_mask.bool()  # (B, S)
    t = batch.attention_mask.cumsum(dim=1) - 1  # (B, S): each token's place in its row
    counts = valid.sum(dim=1)
    starts = n + counts.cumsum(dim=0) - counts  # (B,): where each row's tokens begin
    total = n + int(counts.sum())
    index = (starts[:, None] + t.clamp(min=0)).clamp(max=total - 1)
    m = n if prompt_mask is None else int(prompt_mask.shape[1])
    lengths = counts.tolist()
    groups = [_group(rows, starts, counts, total, m, prompt_mask) for rows in split_by_length(lengths, m)]
    order = None
    if len(groups) > 1:  # the groups' outputs laid end to end: where each token of the rows, in packed order, is
        placed = torch.cat([g.gather[g.take] for g in groups]) - n  # (N,): the packed place of each output
        order = torch.empty_like(placed)
        order[placed] = torch.arange(placed.numel(), device=placed.device)
    return Pack(n, valid, index, tuple(groups), order, kv)


def split_by_length(lengths: list[int], m: int) -> list[list[int]]:
    """Rows grouped by length (at most MAX_GROUPS groups, each a run of the rows sorted by length) so that the
    attention's query-key pairs, sum over groups of b * w * (m + w), plus GROUP_COST per group, are fewest."""
    order = sorted(range(len(lengths)), key=lambda r: lengths[r])
    ls = [max(lengths[r], 1) for r in order]
    rows = len(ls)

    def cost(i: int, j: int) -> int:  # rows order[i:j] as one group: the longest is the last
        return (j - i) * ls[j - 1] * (m + ls[j - 1]) + GROUP_COST

    # best[k][j]: the fewest pairs for the first j sorted rows in k groups; cut[k][j]: where the last group starts
    best = [[0] + [cost(0, j) for j in range(1, rows + 1)]]
    cut = [[0] * (rows + 1)]
    for _ in range(1, min(MAX_GROUPS, rows)):
        prev, row, where = best[-1], [0] * (rows + 1), [0] * (rows + 1)
        for j in range(1, rows + 1):
            row[j], where[j] = min((prev[i] + cost(i, j), i) for i in range(1, j)) if j > 1 else (prev[j], 0)
        best.append(row)
        cut.append(where)
    k = min(range(len(best)), key=lambda g: best[g][rows])
    bounds, j = [], rows
    for g in range(k, -1, -1):
        i = cut[g][j] if g else 0
        bounds.append((i, j))
        j = i
    return [sorted(order[i:j]) for i, j in reversed(bounds) if j > i]


def _group(rows: list[int], starts: torch.Tensor, counts: torch.Tensor, total: int, m: int,
           prompt_mask: torch.Tensor | None) -> Group:
    device = starts.device
    r = torch.tensor(rows, device=device)
    c = counts[r]  # (b,)
    w = max(int(c.max()), 1)
    col = torch.arange(w, device=device)
    real = col[None] < c[:, None]  # (b, w)
    gather = (starts[r][:, None] + torch.minimum(col[None], (c - 1).clamp(min=0)[:, None])).clamp(max=total - 1)
    causal = torch.ones(w, w, dtype=torch.bool, device=device).tril()  # key column <= query column
    own = (causal[None] & real[:, None, :]) | torch.eye(w, dtype=torch.bool, device=device)[None]  # (b, w, w)
    if prompt_mask is None:
        see_prompt = torch.ones(len(rows), w, m, dtype=torch.bool, device=device)
    else:
        see_prompt = prompt_mask.bool()[r][:, None, :].expand(-1, w, -1)  # (b, w, m)
    mask = torch.cat([see_prompt, own], dim=2)[:, None]  # (b, 1, w, m + w); a padding query sees itself
    return Group(r, gather.reshape(-1), mask, real.reshape(-1).nonzero().squeeze(1))


def packed_hidden(backbone: Backbone, prompt: torch.Tensor, batch: Batch, offset: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """The last hidden states of the batch's own positions, the prompt before every row (core.scoring.causal_hidden's
    contract): (B, S, d); padding positions hold some real token's state."""
    embeds = embed_inputs(backbone, batch, offset)  # (B, S, d)
    n = int(prompt.shape[0])
    pack = pack_rows(batch, n)
    x = torch.cat([prompt.to(embeds.dtype), embeds[pack.valid]])[None]  # (1, n + N, d): the rows one after another
    t = batch.attention_mask.cumsum(dim=1) - 1
    positions = torch.cat([torch.arange(n, device=t.device), (t + n)[pack.valid]])[None]  # (1, n + N)
    return _run(backbone, x, positions, pack)


def packed_rows_hidden(backbone: Backbone, embeds: torch.Tensor, batch: Batch, prompt_mask: torch.Tensor,
                       kv: Sequence[tuple[torch.Tensor, torch.Tensor]] | None) -> torch.Tensor:
    """packed_hidden for rows that each follow their own prompt, given as its keys and values per layer (B, kv heads,
    m, head dim) with `prompt_mask` (B, m) marking each row's real prompt positions (None: no row has a prompt).
    Only the rows' real tokens run, one after another; row i's tokens sit at positions n_i + t. (B, S, d)"""
    pack = pack_rows(batch, 0, prompt_mask, kv)
    t = batch.attention_mask.cumsum(dim=1) - 1
    positions = (t + prompt_mask.sum(dim=1, keepdim=True))[pack.valid][None]  # (1, N)
    return _run(backbone, embeds[pack.valid][None], positions, pack)


def _run(backbone: Backbone, x: torch.Tensor, positions: torch.Tensor, pack: Pack) -> torch.Tensor:
    with _packed(backbone.model.config):
        out = backbone.model.base_model(inputs_embeds=x, position_ids=positions, use_cache=False, lamp_pack=pack)
    hidden = out.last_hidden_state[0]  # (n + N, d)
    return hidden.index_select(0, pack.index.reshape(-1)).view(*pack.index.shape, -1)  # (B, S, d)


class _packed:
    """The model's attention is PACKED while at least one packed call runs on it, then what it was ("sdpa")."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def __enter__(self) -> None:
        with _SWITCH:
            _register()
            key = id(self.config)
            _IN_FLIGHT[key] = _IN_FLIGHT.get(key, 0) + 1
            self.config._attn_implementation = PACKED

    def __exit__(self, *exc: object) -> None:
        with _SWITCH:
            key = id(self.config)
            _IN_FLIGHT[key] -= 1
            if not _IN_FLIGHT[key]:
                del _IN_FLIGHT[key]
                self.config._attn_implementation = "sdpa"


def packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     lamp_pack: Pack | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention interface over a packed sequence: query (1, heads, T, hd), key and value
    (1, kv heads, T, hd); returns (1, T, heads, hd). Without a Pack: the plain SDPA attention."""
    if lamp_pack is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    n = lamp_pack.n
    heads, gqa = query.shape[1], query.shape[1] != key.shape[1]  # key/value heads each serve heads / kv heads
    layer: int = getattr(module, "layer_idx")  # noqa: B009  # transformers names each attention layer
    outs = []
    for g in lamp_pack.groups:
        b, w = int(g.rows.shape[0]), g.mask.shape[2]
        # index_select, not x[index]: its backward is an index_add, far cheaper on the CPU than an index_put
        qr, kr, vr = (x[0].index_select(1, g.gather).view(x.shape[1], b, w, -1).transpose(0, 1)
                      for x in (query, key, value))  # (b, heads, w, hd), (b, kv, w, hd) x 2
        if lamp_pack.kv is not None:  # each row's own prompt, from the cache
            pk, pv = (x.index_select(0, g.rows) for x in lamp_pack.kv[layer])  # (b, kv, m, hd) x 2
        else:  # the sequence's prompt, shared by every row
            pk, pv = key[:, :, :n].expand(b, -1, -1, -1), value[:, :, :n].expand(b, -1, -1, -1)
        kr, vr = torch.cat([pk, kr], dim=2), torch.cat([pv, vr], dim=2)  # (b, kv, m + w, hd)
        out = F.scaled_dot_product_attention(qr, kr, vr, attn_mask=g.mask, scale=scaling,
                                             enable_gqa=gqa)  # (b, heads, w, hd)
        outs.append(out.transpose(1, 2).reshape(b * w, heads, -1).index_select(0, g.take))  # (N_g, heads, hd)
    tokens = outs[0] if len(outs) == 1 else torch.cat(outs)
    if lamp_pack.order is not None:
        tokens = tokens.index_select(0, lamp_pack.order)  # (N, heads, hd): the rows' tokens in packed order
    if n:
        prompt = F.scaled_dot_product_attention(query[:, :, :n], key[:, :, :n], value[:, :, :n], is_causal=True,
                                                scale=scaling, enable_gqa=gqa)
        tokens = torch.cat([prompt[0].transpose(0, 1), tokens])  # (T, heads, hd)
    assert tokens.shape[1] == heads
    return tokens[None], None


_REGISTERED: list[bool] = []


def _register() -> None:
    """PACKED in transformers' attention and mask interfaces (once per process)."""
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED, packed_attention)
    AttentionMaskInterface.register(PACKED, sdpa_mask)
    _REGISTERED.append(True)
