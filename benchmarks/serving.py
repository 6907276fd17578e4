"""The serving section: K tuned prompts answer the same test queries on one loaded backbone.

- batched: core.serving.rank_mixed, what `lamp predict` with several artifacts and the playground run. Each call
  answers its queries with all K prompts in one mixed batch (queries x K rows, each row its own prompt).
- sequential: our single-prompt path (core.scoring.rank_candidates), one prompt after another, a batch per prompt.
- PEFT: one PeftModel holding K prompt-tuning adapters, answered one adapter after another (`set_adapter`, then the
  forward PEFT's documentation shows): PEFT batches the rows of one prompt-tuning adapter, not of different ones.

Every contender ranks the task's label words, so all three give the same answers; the run checks that they do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from benchmarks.contenders import Ours, PeftAdapters, our_label_scores
from benchmarks.measure import time_calls
from core.methods import LampConfig, PromptTuningConfig
from core.serving import Lane, Query, rank_mixed

if TYPE_CHECKING:
    from benchmarks.run import Bench

Row = dict[str, Any]
BATCHED, SEQUENTIAL, PEFT = "mixed-batch", "sequential", "peft-pt"


def serving_prompts(bench: Bench) -> list[tuple[str, torch.Tensor]]:
    """K prompts of the bench's settings, by turns LAMP (l, r, default p) and prompt tuning (l), each from its own
    seed: untrained, which is all a timing needs (the answers are checked, not their accuracy)."""
    s = bench.s
    out = []
    for k in range(s.serving_prompts):
        config = (LampConfig(length=s.length, rank=s.rank, pool=s.default_pool) if k % 2 == 0
                  else PromptTuningConfig(length=s.length))
        ours = Ours(bench.backbone, config, bench.table, bench.common, s.seed + k, s.lr)
        out.append((f"{config.name} seed {s.seed + k}", ours.prompt()))
    return out


def serving(bench: Bench) -> tuple[list[Row], Row]:
    """The section's rows, and the check that every contender gave the same answers."""
    s, backbone, codec = bench.s, bench.backbone, bench.codec
    words = list(bench.task.label_words or ())
    token_ids = [codec.target(w, eos=False)[0] for w in words]
    named = serving_prompts(bench)
    prompts = [p for _, p in named]
    lanes = [Lane(p, codec) for p in prompts]
    queries = [e.source for e in bench.task.test[: s.serving_queries]]
    peft = PeftAdapters(backbone, prompts)
    k_prompts = len(prompts)

    def batched(chunk: Sequence[str]) -> list[list[float]]:
        asks = [Query(k, src, tuple(words)) for src in chunk for k in range(k_prompts)]
        return rank_mixed(backbone, lanes, asks, batch_size=len(asks))

    def sequential(chunk: Sequence[str]) -> list[list[list[float]]]:
        return [our_label_scores(backbone, p, codec, chunk, words) for p in prompts]

    def peft_turns(chunk: Sequence[str]) -> list[torch.Tensor]:
        return [peft.label_scores(k, codec, chunk, token_ids).cpu() for k in range(k_prompts)]

    check = _check(batched(queries), sequential(queries), peft_turns(queries))
    bench.log(f"serving: {k_prompts} prompts ({', '.join(n for n, _ in named)}), {len(queries)} test queries; "
              f"answers batched = sequential: {check['answers_equal']}, scores differ by at most "
              f"{check['max_score_diff']:.1e} (PEFT: {check['peft_max_score_diff']:.1e})")
    contenders: list[tuple[str, str, Callable[[Sequence[str]], Any], int]] = [
        (f"batched: {k_prompts} prompts in mixed batches", BATCHED, batched, k_prompts),
        ("sequential: one prompt at a time (ours)", SEQUENTIAL, sequential, 1),
        ("PEFT: one adapter at a time", PEFT, peft_turns, 1),
    ]
    rows: list[Row] = []
    for per_call in s.serving_batch_sizes:
        chunks = [queries[i : i + per_call] for i in range(0, len(queries), per_call)]
        for name, method, answer, prompts_per_forward in contenders:
            spread = time_calls(partial(_each, answer, chunks), bench.device, s.warmup, s.repeats)
            per = spread.scaled(1 / len(queries))
            rows.append({"contender": name, "method": method, "queries_per_call": per_call, "prompts": k_prompts,
                         "rows_per_forward": min(per_call, len(queries)) * prompts_per_forward,
                         "ms_per_query": per.median * 1e3, "ms_min": per.low * 1e3, "ms_max": per.high * 1e3,
                         "queries_per_s": len(queries) / spread.median,
                         "answers_per_s": len(queries) * k_prompts / spread.median})
            bench.log(f"  {per_call} per call, {name}: {per.median * 1e3:.1f} ms/query (all {k_prompts} prompts)")
    peft.close()
    return with_serving_ratios(rows), check


def _each(answer: Callable[[Sequence[str]], Any], chunks: list[list[str]]) -> None:
    for chunk in chunks:
        answer(chunk)


def with_serving_ratios(rows: list[Row]) -> list[Row]:
    """`<key>_x_sequential` and `<key>_x_peft`: each figure over that contender's at the same queries per call."""
    for row in rows:
        group = [r for r in rows if r["queries_per_call"] == row["queries_per_call"]]
        for method, suffix in ((SEQUENTIAL, "x_sequential"), (PEFT, "x_peft")):
            base = next(r for r in group if r["method"] == method)
            for key in ("ms_per_query", "queries_per_s"):
                row[f"{key}_{suffix}"] = row[key] / base[key] if base[key] else None
    return rows


def _check(batched: list[list[float]], sequential: list[list[list[float]]], peft: list[torch.Tensor]) -> Row:
    """Batched against sequential (and PEFT): the same label chosen for every query and prompt, and the largest
    difference of a label word's log-probability."""
    ours = torch.tensor(batched).view(len(sequential[0]), len(sequential), -1)  # (queries, K, labels)
    alone = torch.tensor(sequential).transpose(0, 1)  # (queries, K, labels)
    theirs = torch.stack(peft).transpose(0, 1).float()
    return {"answers_equal": bool((ours.argmax(-1) == alone.argmax(-1)).all()),
            "peft_answers_equal": bool((theirs.argmax(-1) == alone.argmax(-1)).all()),
            "max_score_diff": float((ours - alone).abs().max()),
            "peft_max_score_diff": float((theirs - alone).abs().max())}
