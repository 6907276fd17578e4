"""How much each method's initial prompt disturbs the frozen default model, before any training.

Mean per-token loss on the first 16 Rotten Tomatoes training examples with the bare model and with each method's
initial prompt (seed 42), beside the prompt's per-token norm. Used to choose LAMP's defaults (README, "Choosing
defaults"). Run: .venv/bin/python scripts/init_loss.py [--model default] [--examples 16]
"""

from __future__ import annotations

import argparse
import json

import torch

from core.backbone import load_backbone, resolve_device
from core.batching import Codec, collate
from core.methods import build_prompt, method_config
from core.scoring import loss_fn
from core.spec import ModelConfig
from core.tasks import load_builtin_task
from core.vocab import common_token_ids

SETTINGS: list[tuple[str, dict[str, int | str]]] = [
    ("prompt-tuning", {"length": 20}),
    ("prompt-tuning", {"length": 100}),
    ("dpt", {"length": 100, "rank": 8}),
    ("lamp", {"length": 20, "rank": 8, "pool": 1}),
    ("lamp", {"length": 100, "rank": 8, "pool": 1}),
    ("lamp", {"length": 100, "rank": 8, "pool": 4}),
    ("lamp", {"length": 100, "rank": 8, "pool": 4, "init": "paper"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    backbone = load_backbone(ModelConfig(a.model), resolve_device("cpu"))
    task = load_builtin_task("rotten_tomatoes")
    codec = Codec.for_backbone(backbone, task.answer_cue, 256)
    batch = collate([codec.encode(e.source, e.target) for e in task.train[: a.examples]], backbone.family,
                    backbone.tokenizer.pad_token_id, backbone.device)
    common = common_token_ids(backbone.tokenizer)
    table = backbone.embedding_table()
    vocab_norm = table[torch.tensor(common)].norm(dim=-1).mean().item()
    rows = []
    with torch.no_grad():
        rows.append({"setting": "bare model", "loss": loss_fn(backbone, table[:0], batch).item(), "norm_ratio": None})
        for name, knobs in SETTINGS:
            module, _ = build_prompt(method_config(name, **knobs), table, common, torch.Generator().manual_seed(42))
            prompt = module()
            rows.append({"setting": f"{name} {knobs}", "loss": loss_fn(backbone, prompt, batch).item(),
                         "norm_ratio": prompt.norm(dim=-1).mean().item() / vocab_norm})
        mean = table[torch.tensor(common)].mean(0, keepdim=True).expand(25, -1)
        rows.append({"setting": "the mean common-token embedding x 25", "loss": loss_fn(backbone, mean, batch).item(),
                     "norm_ratio": mean.norm(dim=-1).mean().item() / vocab_norm})
    print("| setting | initial loss | prompt norm / vocabulary norm |\n|---|---|---|")
    for r in rows:
        ratio = "" if r["norm_ratio"] is None else f"{r['norm_ratio']:.2f}"
        print(f"| {r['setting']} | {r['loss']:.2f} | {ratio} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
