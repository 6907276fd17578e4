"""Where a training step's time goes: LAMP (l=100 r=8, --pool p, default 2) against the floor (the frozen model,
no prompt, backward to the input embeddings), phase by phase, on the benchmark's first batch of Rotten Tomatoes.

Phases of a LAMP step on the CPU (core.scoring.causal_hidden), on either route:
- `--route packed` (the default, core.packing): the prompt module builds P' (SVD factors, compressed outer product,
  pooling); P' and the rows' real tokens run through the model as one packed sequence, then the LM head at the
  label positions and the loss; the backward pass; clipping and AdamW. The floor packs the rows alone.
- `--route cache` (the route before packing): P' runs through the model once (batch 1) into a key/value cache
  expanded to the batch; the rows run, padded, with that cache; the floor runs the padded rows.
Each phase is timed on its own (torch on 2 threads), median of --repeats steps after --warmup; whole steps are timed
the way the benchmark times them. `--batch first` is the benchmark's batch (the first 16 training examples, as
they come: much padding); `--batch bucketed` the training loop's first batch (sorted by length within windows).
`--ops N` then runs N whole steps of each under torch's profiler and prints, per operator, its self CPU time per
step for LAMP and the floor and the difference (the operators that differ most first): which kernels the prompt's
positions make longer (the matrix products, the attention) and which are its own.

    LAMP_HOME=... .venv/bin/python scripts/profile_step.py [--route packed|cache] [--batch first|bucketed]
        [--pool P] [--ops N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default="default")
    parser.add_argument("--route", choices=["packed", "cache"], default="packed")
    parser.add_argument("--batch", choices=["first", "bucketed"], default="first")
    parser.add_argument("--pool", type=int, default=2, help="LAMP's pool p (l=100, r=8)")
    parser.add_argument("--ops", type=int, default=0, metavar="N",
                        help="also profile N whole steps of each by operator (0: no)")
    parser.add_argument("--top", type=int, default=12, help="operators listed with --ops")
    a = parser.parse_args(argv)
    torch.set_num_threads(a.threads)

    import random

    from core import scoring
    from core.backbone import cache_arg, load_backbone
    from core.batching import Codec, collate, length_bucketed_order
    from core.methods import LampConfig, build_prompt
    from core.scoring import _prompt_mask, causal_hidden, loss_fn, shared_prompt_cache
    from core.spec import DataConfig, ModelConfig
    from core.tasks import load_builtin_task
    from core.train import optimizer_step
    from core.vocab import common_token_ids

    backbone = load_backbone(ModelConfig(a.model), torch.device("cpu"))
    task = load_builtin_task("rotten_tomatoes", seed=DataConfig().split_seed)
    codec = Codec.for_backbone(backbone, task.answer_cue, 256)
    if a.batch == "first":
        items = codec.encode_many([(e.source, e.target) for e in task.train[: a.batch_size]])
    else:
        every = codec.encode_many([(e.source, e.target) for e in task.train])
        order = length_bucketed_order([len(e.source) + len(e.target) for e in every], a.batch_size, random.Random(1))
        items = [every[i] for i in order[0]]
    if a.route == "cache":
        scoring.can_pack = lambda *args: False
    batch = collate(items, backbone.family, backbone.tokenizer.pad_token_id, backbone.device)
    table = backbone.embedding_table()
    module, _ = build_prompt(LampConfig(length=100, rank=8, pool=a.pool), table, common_token_ids(backbone.tokenizer),
                             torch.Generator().manual_seed(42))
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.01, weight_decay=1e-5)
    model = backbone.model.base_model
    head = backbone.model.get_output_embeddings()
    empty = torch.zeros(0, backbone.hidden_size, requires_grad=True)

    def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
        tick = time.perf_counter()
        out = fn()
        return time.perf_counter() - tick, out

    def rows_loss(hidden: torch.Tensor) -> torch.Tensor:
        labels = batch.labels[:, 1:]
        keep = labels != -100
        logits = head(hidden[:, :-1][keep]).float()
        return F.cross_entropy(logits, labels[keep])

    def lamp_phases() -> dict[str, float]:
        out: dict[str, float] = {}
        optimizer.zero_grad(set_to_none=True)
        out["prompt module: P' from U, Q, V"], prompt = timed(module)
        if a.route == "packed":
            out["forward: prompt and rows packed, LM head, loss"], loss = timed(
                lambda: rows_loss(causal_hidden(backbone, prompt, batch)))
            out["backward (rows, prompt, U Q V)"], _ = timed(loss.backward)
            out["clip + AdamW"], _ = timed(update)
            return out
        out["prompt's own pass (batch 1) into the cache"], cache = timed(
            lambda: shared_prompt_cache(backbone, prompt, batch.size))

        def forward() -> torch.Tensor:
            embeds = backbone.input_embeddings(batch.input_ids)
            mask = _prompt_mask(prompt.shape[0], batch.attention_mask)
            hidden = model(inputs_embeds=embeds, attention_mask=mask, **cache_arg(cache),
                           use_cache=True).last_hidden_state
            return rows_loss(hidden)

        out["rows' forward (attending to the cache), LM head, loss"], loss = timed(forward)
        out["backward (rows, cache, prompt pass, U Q V)"], _ = timed(loss.backward)
        out["clip + AdamW"], _ = timed(update)
        return out

    def update() -> None:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    def floor_phases() -> dict[str, float]:
        out: dict[str, float] = {}
        if a.route == "packed":
            out["forward: prompt and rows packed, LM head, loss"], loss = timed(
                lambda: rows_loss(causal_hidden(backbone, empty, batch)))
            out["backward (rows, prompt, U Q V)"], _ = timed(loss.backward)
            return out

        def forward() -> torch.Tensor:
            embeds = backbone.input_embeddings(batch.input_ids)
            embeds = torch.cat([empty.expand(batch.size, 0, -1), embeds], dim=1)
            hidden = model(inputs_embeds=embeds, attention_mask=batch.attention_mask).last_hidden_state
            return rows_loss(hidden)

        out["rows' forward (attending to the cache), LM head, loss"], loss = timed(forward)
        out["backward (rows, cache, prompt pass, U Q V)"], _ = timed(loss.backward)
        return out

    def whole_lamp() -> float:
        return timed(lambda: optimizer_step(loss_fn(backbone, module(), batch), params, optimizer, 1.0))[0]

    def whole_floor() -> float:
        return timed(lambda: loss_fn(backbone, empty, batch).backward())[0]

    runs: dict[str, list[dict[str, float]]] = {"lamp": [], "floor": []}
    wholes: dict[str, list[float]] = {"lamp": [], "floor": []}
    for i in range(a.warmup + a.repeats):  # interleaved: a passing load falls on both alike
        lamp, floor = lamp_phases(), floor_phases()
        wl, wf = whole_lamp(), whole_floor()
        if i >= a.warmup:
            runs["lamp"].append(lamp)
            runs["floor"].append(floor)
            wholes["lamp"].append(wl)
            wholes["floor"].append(wf)
    phases = list(runs["lamp"][0])
    rows = []
    for name in phases:
        lamp_s = statistics.median(r[name] for r in runs["lamp"])
        floor_s = statistics.median(r[name] for r in runs["floor"]) if name in runs["floor"][0] else 0.0
        rows.append({"phase": name, "lamp_s": round(lamp_s, 4), "floor_s": round(floor_s, 4),
                     "extra_s": round(lamp_s - floor_s, 4)})
    result: dict[str, Any] = {
        "route": a.route, "batch_kind": a.batch, "pool": a.pool, "batch": a.batch_size,
        "width": int(batch.input_ids.shape[1]), "tokens": int(batch.attention_mask.sum()), "threads": a.threads,
        "repeats": a.repeats, "phases": rows,
        "whole_step_s": {k: round(statistics.median(v), 4) for k, v in wholes.items()},
        "lamp_x_floor": round(statistics.median(wholes["lamp"]) / statistics.median(wholes["floor"]), 3)}
    print("| phase | LAMP s | floor s | LAMP - floor |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['phase']} | {r['lamp_s']:.3f} | {r['floor_s']:.3f} | {r['extra_s']:+.3f} |")
    if a.ops:
        result["ops"] = operator_diff({"lamp": whole_lamp, "floor": whole_floor}, a.ops)[: a.top]
        print("\n| operator | LAMP ms/step | floor ms/step | LAMP - floor |")
        print("|---|---|---|---|")
        for r in result["ops"]:
            print(f"| {r['op']} | {r['lamp_ms']:.1f} | {r['floor_ms']:.1f} | {r['extra_ms']:+.1f} |")
    print(json.dumps(result))
    return result


def operator_diff(steps: dict[str, Callable[[], float]], n: int) -> list[dict[str, Any]]:
    """Self CPU time per step of every operator over n steps of each of the two contenders ("lamp" and "floor"),
    profiled one step at a time in interleaved rounds (who goes first alternates), so that the machine's drift falls
    on both alike; the rows sorted by how much more LAMP spends, the largest difference first."""
    from torch.profiler import ProfilerActivity, profile

    names = list(steps)
    per_step: dict[str, dict[str, float]] = {name: {} for name in names}
    for step in steps.values():
        step()  # once outside the profiler: nothing first-time in the figures
    for i in range(n):
        for name in names[i % 2:] + names[: i % 2]:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                steps[name]()
            for e in prof.key_averages():
                per_step[name][e.key] = per_step[name].get(e.key, 0.0) + e.self_cpu_time_total / n / 1000
    lamp, floor = per_step["lamp"], per_step["floor"]
    times = [(op, lamp.get(op, 0.0), floor.get(op, 0.0)) for op in set(lamp) | set(floor)]
    times.sort(key=lambda t: abs(t[1] - t[2]), reverse=True)
    times.insert(0, ("all operators", sum(lamp.values()), sum(floor.values())))
    return [{"op": op, "lamp_ms": la, "floor_ms": fl, "extra_ms": la - fl} for op, la, fl in times]


if __name__ == "__main__":
    main()
