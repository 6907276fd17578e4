"""Build a randomly initialised copy of a model's shape, with its tokenizer, for timing where its weights cannot go.

    python scripts/shape_copy.py ~/.lamp-studio/models/smollm2-135m-instruct /tmp/shape-copy

Timings and memory of a shape copy match the real model's; its accuracy means nothing.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src), dtype=torch.float32)
    model.save_pretrained(out)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "generation", "special_tokens", "chat_template")):
            shutil.copy(f, out / f.name)
    print(f"{out}: {sum(p.numel() for p in model.parameters()):,} parameters, random weights")


if __name__ == "__main__":
    main()
