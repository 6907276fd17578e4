"""How much each method's initial prompt disturbs the frozen default model, and what a training step costs.

For the first 16 training examples of a task (one batch of the default size): the mean loss per answer token with
the bare model and with each method's initial prompt (seed 42), from sampled common tokens (`vocab`) and from the
task's instruction (`text`, --prompt-init text), the prompt's per-token norm relative to the vocabulary's, and the
median time of a forward + backward pass through the prompt (after one warm-up pass). Used to choose the defaults
(README, "Choosing defaults"). Run: .venv/bin/python scripts/init_loss.py [--model gemma3-270m] [--task ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from core.backbone import load_backbone, resolve_device
from core.batching import Codec, collate
from core.methods import build_prompt, method_config
from core.scoring import loss_fn
from core.spec import ModelConfig
from core.tasks import load_builtin_task
from core.vocab import common_token_ids, task_instruction, text_start_ids

SETTINGS: list[tuple[str, dict[str, int | str], str]] = [
    ("prompt-tuning", {"length": 20}, "vocab"),
    ("prompt-tuning", {"length": 100}, "vocab"),
    ("prompt-tuning", {"length": 100}, "text"),
    ("dpt", {"length": 100, "rank": 8}, "vocab"),
    ("dpt", {"length": 100, "rank": 8}, "text"),
    ("lamp", {"length": 20, "rank": 8, "pool": 1}, "vocab"),
    ("lamp", {"length": 100, "rank": 8, "pool": 1}, "vocab"),
    ("lamp", {"length": 100, "rank": 8, "pool": 4}, "vocab"),
    ("lamp", {"length": 100, "rank": 8, "pool": 4, "init": "paper"}, "vocab"),
    ("lamp", {"length": 100, "rank": 8, "pool": 4}, "text"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per setting, after one warm-up")
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    backbone = load_backbone(ModelConfig(a.model), resolve_device("cpu"))
    task = load_builtin_task(a.task)
    codec = Codec.for_backbone(backbone, task.answer_cue, 256)
    batch = collate([codec.encode(e.source, e.target) for e in task.train[: a.examples]], backbone.family,
                    backbone.tokenizer.pad_token_id, backbone.device)
    common = common_token_ids(backbone.tokenizer)
    table = backbone.embedding_table()
    vocab_norm = table[torch.tensor(common)].norm(dim=-1).mean().item()
    rows: list[dict[str, object]] = []
    with torch.no_grad():
        rows.append({"setting": "bare model", "loss": loss_fn(backbone, table[:0], batch).item()})
        mean = table[torch.tensor(common)].mean(0, keepdim=True).expand(25, -1)
        rows.append({"setting": "the mean common-token embedding x 25", "loss": loss_fn(backbone, mean, batch).item(),
                     "norm_ratio": mean.norm(dim=-1).mean().item() / vocab_norm})
    instruction = task_instruction(task.answer_cue, task.label_words)
    for name, knobs, start in SETTINGS:
        config = method_config(name, **knobs)
        ids = (text_start_ids(backbone.tokenizer, instruction, config.length, getattr(config, "pool", 1))
               if start == "text" else None)
        module, _ = build_prompt(config, table, common, torch.Generator().manual_seed(42), start_ids=ids)
        times = []
        for _ in range(1 + a.repeats):
            tick = time.perf_counter()
            loss = loss_fn(backbone, module(), batch)
            loss.backward()
            times.append(time.perf_counter() - tick)
        with torch.no_grad():
            prompt = module()
        rows.append({"setting": f"{name} {knobs} {start}", "loss": loss.item(), "tokens": prompt.shape[0],
                     "norm_ratio": prompt.norm(dim=-1).mean().item() / vocab_norm,
                     "step_seconds": statistics.median(times[1:])})
    print("| setting | prompt tokens | initial loss | prompt norm / vocabulary norm | forward + backward (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        cells = [r.get("tokens", ""), f"{r['loss']:.2f}", _fmt(r.get("norm_ratio")), _fmt(r.get("step_seconds"))]
        print(f"| {r['setting']} | " + " | ".join(str(c) for c in cells) + " |")
    print(json.dumps(rows))


def _fmt(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else ""


if __name__ == "__main__":
    main()
