"""Forward passes with a soft prompt: training loss, per-row log-likelihoods, label ranking and greedy generation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from core.backbone import Backbone, cache_arg, returned_cache
from core.batching import Batch, Codec, Encoded, collate, embed_inputs, eval_batches, prompted_inputs
from core.packing import can_pack, packed_hidden


def token_logprobs(backbone: Backbone, prompt: torch.Tensor, batch: Batch, offset: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every labelled token and the row it belongs to: (N,), (N,). `offset`: what the method
    adds to the inputs' own token embeddings (DePT; core.batching.embed_inputs), here and in every function below.

    Decoder-only: the LM head runs only where there is a label (hidden states of the positions before the
    targets), not over the whole vocabulary at every position, which is about a fifth of a step on small models.
    """
    if backbone.family == "seq2seq":
        embeds, mask = prompted_inputs(backbone, prompt, batch, offset)
        out = backbone.model(inputs_embeds=embeds, attention_mask=mask, labels=batch.labels)
        keep = batch.labels != -100  # (B, L)
        logits = out.logits[keep].float()  # (N, V)
        targets = batch.labels[keep]
    else:
        hidden = causal_hidden(backbone, prompt, batch, offset)  # (B, S, d)
        labels = batch.labels[:, 1:]  # the token at t is predicted from position t - 1
        keep = labels != -100  # (B, S - 1)
        logits = backbone.model.get_output_embeddings()(hidden[:, :-1][keep]).float()  # (N, V)
        targets = labels[keep]
    rows = keep.nonzero()[:, 0]
    logp = -F.cross_entropy(logits, targets, reduction="none")
    return logp, rows


def causal_hidden(backbone: Backbone, prompt: torch.Tensor, batch: Batch, offset: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Decoder-only: the last hidden states of the batch's own positions, the prompt before them. (B, S, d)

    A prompt shared by every row is the same prefix for all of them, and under causal attention its hidden states
    do not depend on what follows it. So on the CPU the prompt and the rows' tokens are packed into one sequence
    (core.packing): the prompt's positions go through every layer once, the rows' padding through none but
    attention, and each row attends to the prompt's keys and values. Where packing does not apply (a sliding window
    narrower than a row, other layer kinds) the prompt runs through the model once (batch 1) and the rows attend to
    its keys and values from a cache expanded to the batch. Both give the numbers of running [prompt][row] for every
    row, with (B - 1) n fewer positions through the model, forward and backward (README, "Performance").
    """
    model = backbone.model.base_model
    if can_pack(backbone, prompt, batch):
        return packed_hidden(backbone, prompt, batch, offset)
    cache = shared_prompt_cache(backbone, prompt, batch.size)
    if cache is not None:
        embeds = embed_inputs(backbone, batch, offset)  # (B, S, d)
        mask = _prompt_mask(prompt.shape[0], batch.attention_mask)  # (B, n + S)
        return model(inputs_embeds=embeds, attention_mask=mask, **cache_arg(cache), use_cache=True).last_hidden_state
    embeds, mask = prompted_inputs(backbone, prompt, batch, offset)
    hidden = model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    return hidden[:, prompt.shape[-2]:]  # (B, S, d): the prompt positions dropped


def shared_prompt_cache(backbone: Backbone, prompt: torch.Tensor, rows: int) -> Any | None:
    """Decoder-only, on the CPU: the keys and values of a prompt shared by `rows` rows, computed once (batch 1)
    and expanded to the batch without copying. None where the plain route applies: one row, per-row prompts, caches
    other than the plain dynamic one (sliding windows, hybrids), and CUDA, where a small model's step is bound by
    kernel launches and a second pass through the layers cost more than it saved (SmolLM2-135M on an H200, batch
    16-64: 1.7-2.2x slower, though it halved the activation memory)."""
    if (backbone.family != "causal" or backbone.device.type != "cpu" or prompt.dim() != 2 or prompt.shape[0] == 0
            or rows < 2):
        return None
    from transformers.cache_utils import DynamicCache, DynamicLayer

    cache = returned_cache(backbone.model.base_model(inputs_embeds=prompt.to(backbone.dtype)[None], use_cache=True))
    layers = getattr(cache, "layers", None)
    if type(cache) is not DynamicCache or not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    for layer in layers:
        layer.keys = layer.keys.expand(rows, *layer.keys.shape[1:])  # (B, heads, n, head dim): a view
        layer.values = layer.values.expand(rows, *layer.values.shape[1:])
    return cache


def _prompt_mask(n: int, mask: torch.Tensor) -> torch.Tensor:
    """The rows' attention mask with n ones for the prompt in front. (B, n + S)"""
    return torch.cat([torch.ones(mask.shape[0], n, dtype=mask.dtype, device=mask.device), mask], dim=1)


def loss_fn(backbone: Backbone, prompt: torch.Tensor, batch: Batch, offset: torch.Tensor | None = None
            ) -> torch.Tensor:
    """Mean negative log-likelihood per target token."""
    logp, _ = token_logprobs(backbone, prompt, batch, offset)
    return -logp.mean()


def sequence_logprobs(backbone: Backbone, prompt: torch.Tensor, batch: Batch, offset: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """Summed log-likelihood of each row's target. (B,)"""
    logp, rows = token_logprobs(backbone, prompt, batch, offset)
    return torch.zeros(batch.size, device=logp.device).index_add_(0, rows, logp)


@torch.no_grad()
def rank_candidates(
    backbone: Backbone,
    prompt: torch.Tensor | None,
    codec: Codec,
    sources: Sequence[str],
    candidates: Sequence[Sequence[str]],
    *,
    batch_size: int = 32,
    offset: torch.Tensor | None = None,
) -> list[list[float]]:
    """Log-likelihood of each candidate's words (no end marker) after each source: a list of scores per source.

    When every candidate of a source is one token, one forward over the source gives all of them at once.
    """
    p = prompt if prompt is not None else _empty_prompt(backbone)
    targets = answer_tokens(codec, candidates)
    firsts = [one_token_each(targets, cands) for cands in candidates]
    out: list[list[float]] = [[] for _ in sources]
    short = [i for i, ids in enumerate(firsts) if ids is not None]
    if short:
        tokens = [firsts[i] or [] for i in short]
        for i, row in zip(short, _next_token_logprobs(backbone, p, codec, [sources[i] for i in short], tokens,
                                                      batch_size, offset), strict=True):
            out[i] = row
    flat: list[Encoded] = []
    owner: list[int] = []
    for i, (src, cands) in enumerate(zip(sources, candidates, strict=True)):
        if firsts[i] is None:
            for cand in cands:
                flat.append(Encoded(codec.source(src, source_budget(codec, targets[cand])), targets[cand]))
                owner.append(i)
    if flat:
        scores = torch.empty(len(flat))
        for idx in eval_batches([len(e.source) + len(e.target) for e in flat], batch_size):
            batch = collate([flat[i] for i in idx], codec.family, codec.tokenizer.pad_token_id, backbone.device)
            scores[idx] = sequence_logprobs(backbone, p, batch, offset).float().cpu()
        for i, sc in zip(owner, scores.tolist(), strict=True):
            out[i].append(sc)
    return out


def source_budget(codec: Codec, target: list[int]) -> int:
    return max(codec.max_length - (len(target) if codec.family == "causal" else 0), 1)


def _next_token_logprobs(
    backbone: Backbone, prompt: torch.Tensor, codec: Codec, sources: Sequence[str], tokens: list[list[int]],
    batch_size: int, offset: torch.Tensor | None = None,
) -> list[list[float]]:
    """log p(token | prompt, source) of the given first-answer tokens, one forward per batch of sources."""
    encoded = [codec.source(s, codec.max_length - 1) for s in sources]
    out: list[list[float]] = [[] for _ in sources]
    for idx in eval_batches([len(e) for e in encoded], batch_size):
        # One stand-in target token per row marks where the answer starts.
        items = [Encoded(encoded[i], [tokens[i][0]]) for i in idx]
        batch = collate(items, codec.family, codec.tokenizer.pad_token_id, backbone.device)
        logp = _answer_start_logprobs(backbone, prompt, batch, offset).cpu()  # (B, V); one copy, not one sync per row
        for row, i in enumerate(idx):
            out[i] = logp[row, tokens[i]].tolist()
    return out


def _answer_start_logprobs(backbone: Backbone, prompt: torch.Tensor, batch: Batch,
                           offset: torch.Tensor | None = None) -> torch.Tensor:
    """Log-softmax over the vocabulary at the first answer position of each row. (B, V)"""
    if backbone.family == "seq2seq":
        embeds, mask = prompted_inputs(backbone, prompt, batch, offset)
        out = backbone.model(inputs_embeds=embeds, attention_mask=mask, labels=batch.labels[:, :1])
        return torch.log_softmax(out.logits[:, 0].float(), dim=-1)
    hidden = causal_hidden(backbone, prompt, batch, offset)  # (B, S, d)
    last = (batch.labels != -100).float().argmax(dim=1) - 1  # position before the single label token
    h = hidden[torch.arange(batch.size, device=hidden.device), last]  # (B, d)
    return torch.log_softmax(backbone.model.get_output_embeddings()(h).float(), dim=-1)


def _empty_prompt(backbone: Backbone) -> torch.Tensor:
    return torch.zeros(0, backbone.hidden_size, device=backbone.device, dtype=backbone.dtype)


@torch.no_grad()
def generate(
    backbone: Backbone,
    prompt: torch.Tensor | None,
    codec: Codec,
    sources: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    offset: torch.Tensor | None = None,
) -> list[str]:
    """Greedy answers, one per source."""
    out: list[str] = [""] * len(sources)
    encoded = [codec.source(s) for s in sources]
    p = prompt if prompt is not None else _empty_prompt(backbone)
    for idx in eval_batches([len(e) for e in encoded], batch_size):
        ids = [encoded[i] for i in idx]
        if backbone.family == "seq2seq":
            texts = _generate_seq2seq(backbone, p, ids, max_new_tokens, offset)
        else:
            texts, _ = _generate_causal(backbone, p, ids, max_new_tokens, offset)
        for i, text in zip(idx, texts, strict=True):
            out[i] = text.strip()
    return out


def answer_tokens(codec: Codec, candidates: Sequence[Sequence[str]]) -> dict[str, list[int]]:
    """Each distinct candidate's tokens (no end marker), tokenised once."""
    return {c: codec.target(c, eos=False) for cands in candidates for c in cands}


def one_token_each(targets: dict[str, list[int]], cands: Sequence[str]) -> list[int] | None:
    """The candidates' token ids if every one of them is a single token, else None."""
    ids = [targets[c] for c in cands]
    return [i[0] for i in ids] if all(len(i) == 1 for i in ids) else None


def single_token_candidates(codec: Codec, candidates: Sequence[Sequence[str]]) -> list[list[int]] | None:
    """Each source's candidates as one token id apiece, or None if some candidate takes several tokens."""
    targets = answer_tokens(codec, candidates)
    out = []
    for cands in candidates:
        ids = one_token_each(targets, cands)
        if ids is None:
            return None
        out.append(ids)
    return out


@torch.no_grad()
def generate_and_rank(
    backbone: Backbone,
    prompt: torch.Tensor | None,
    codec: Codec,
    sources: Sequence[str],
    candidates: Sequence[Sequence[str]],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    offset: torch.Tensor | None = None,
) -> tuple[list[str], list[list[float]]]:
    """Greedy answers and candidate scores from the same passes.

    For a decoder-only model whose candidates are one token each, the first decoding step's distribution is the
    ranking distribution, so one prefill serves both; otherwise the two are computed separately.
    """
    tokens = single_token_candidates(codec, candidates) if backbone.family == "causal" else None
    if tokens is None:
        texts = generate(backbone, prompt, codec, sources, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         offset=offset)
        return texts, rank_candidates(backbone, prompt, codec, sources, candidates, batch_size=batch_size,
                                      offset=offset)
    encoded = [codec.source(s, codec.max_length - 1) for s in sources]
    p = prompt if prompt is not None else _empty_prompt(backbone)
    out: list[str] = [""] * len(sources)
    scores: list[list[float]] = [[] for _ in sources]
    for idx in eval_batches([len(e) for e in encoded], batch_size):
        texts, first = _generate_causal(backbone, p, [encoded[i] for i in idx], max_new_tokens, offset)
        first = first.cpu()  # (B, V); one copy, not one sync per row
        for row, (i, text) in enumerate(zip(idx, texts, strict=True)):
            out[i] = text.strip()
            scores[i] = first[row, tokens[i]].tolist()
    return out, scores


def _generate_seq2seq(backbone: Backbone, prompt: torch.Tensor, ids: list[list[int]], new: int,
                      offset: torch.Tensor | None = None) -> list[str]:
    batch = collate([Encoded(s, [0]) for s in ids], "seq2seq", backbone.tokenizer.pad_token_id, backbone.device)
    embeds, mask = prompted_inputs(backbone, prompt, batch, offset)
    tokens = backbone.model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=new,
                                     do_sample=False, num_beams=1)
    return list(backbone.tokenizer.batch_decode(tokens, skip_special_tokens=True))


def _generate_causal(
    backbone: Backbone, prompt: torch.Tensor, ids: list[list[int]], new: int, offset: torch.Tensor | None = None
) -> tuple[list[str], torch.Tensor]:
    """Greedy decoding with a KV cache; also returns the first step's log-softmax (B, V).

    Rows are laid out [prompt][pad][source] with the pads masked out and positions counted over unmasked tokens,
    so every row sees exactly what training showed it ([prompt][source] from position 0), and all rows end at
    the same column where new tokens are appended.
    """
    model, rows = backbone.model, len(ids)
    batch = left_padded(backbone, ids)
    cache = shared_prompt_cache(backbone, prompt, rows)
    if cache is None:
        embeds, mask = prompted_inputs(backbone, prompt, batch, offset)  # (B, n + S, d), (B, n + S)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
    else:  # the prompt's keys and values are already in the cache: only the rows' own positions run
        embeds, mask = embed_inputs(backbone, batch, offset), _prompt_mask(prompt.shape[0], batch.attention_mask)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, prompt.shape[0]:]  # (B, S)
    out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, **cache_arg(cache),
                use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V): the answer's first-token distribution
    return greedy_continue(backbone, out, mask, positions, new), first


def left_padded(backbone: Backbone, ids: list[list[int]]) -> Batch:
    """Sources padded on the left, so that every row ends at the same column, no position labelled. (B, S)"""
    width, device = max(len(s) for s in ids), backbone.device
    input_ids = torch.full((len(ids), width), backbone.tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros_like(input_ids)
    for r, s in enumerate(ids):
        input_ids[r, width - len(s) :] = torch.tensor(s)
        attn[r, width - len(s) :] = 1
    return Batch(input_ids.to(device), attn.to(device), torch.full_like(input_ids, -100).to(device))


def greedy_continue(backbone: Backbone, out: Any, mask: torch.Tensor, positions: torch.Tensor, new: int) -> list[str]:
    """Greedy decoding after a decoder-only prefill `out` (its logits and cache) whose rows all end at the same
    column: `mask` (B, T) and `positions` (B, S) are the prefill's; each step appends one column to both."""
    tok = backbone.tokenizer
    return [tok.decode(r, skip_special_tokens=True) for r in continue_ids(backbone, out, mask, positions, new)]


def continue_ids(backbone: Backbone, out: Any, mask: torch.Tensor, positions: torch.Tensor, new: int, *,
                 limits: Sequence[int] | None = None, temperatures: Sequence[float] | None = None,
                 generator: torch.Generator | None = None,
                 on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """The new token ids of each row after a decoder-only prefill (greedy_continue's loop), the end marker
    included where a row stops on it. `limits`: each row's own token budget (at most `new`); `temperatures`: each
    row's sampling temperature (0: greedy, the same tokens as greedy_continue); `on_token(row, token)` hears each
    row's tokens as they are chosen (a server streams them)."""
    tok, model, device = backbone.tokenizer, backbone.model, backbone.device
    rows = mask.shape[0]
    budget = [min(new, n) for n in limits] if limits is not None else [new] * rows
    done = [n <= 0 for n in budget]
    result: list[list[int]] = [[] for _ in range(rows)]
    temps = None
    if temperatures is not None and any(t > 0 for t in temperatures):
        temps = torch.tensor([t if t > 0 else 1.0 for t in temperatures], device=device)[:, None]
        sampled = torch.tensor([t > 0 for t in temperatures], device=device)
    for _ in range(new):
        if all(done):
            break
        logits = out.logits[:, -1]
        nxt = logits.argmax(-1)  # (B,)
        if temps is not None:
            probs = torch.softmax(logits.float() / temps, dim=-1)
            drawn = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(device)
            nxt = torch.where(sampled, drawn, nxt)
        for r, token in enumerate(nxt.tolist()):  # one device sync per decoding step
            if not done[r]:
                result[r].append(token)
                done[r] = token == tok.eos_token_id or len(result[r]) >= budget[r]
                if on_token is not None:
                    on_token(r, token)
        if all(done):
            break
        mask = torch.cat([mask, torch.ones(rows, 1, dtype=mask.dtype, device=device)], dim=1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=positions,
                    **cache_arg(returned_cache(out)), use_cache=True)
    return result
