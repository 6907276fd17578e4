"""`python -m benchmarks` and `lamp bench`: the same flags, the same run."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.settings import SECTIONS, BenchSettings, make_settings
from core.errors import LampError

DEFAULT_OUT = "bench-out"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _words(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = BenchSettings()
    p.add_argument("--model", default=None, help=f"hub id, local folder, or `default` (default {d.model})")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="backbone dtype (default float32)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=None, help=f"default {d.seed}")
    p.add_argument("--batch-size", type=int, default=None, help=f"step table batch (default {d.batch_size})")
    p.add_argument("--max-length", type=int, default=None, help=f"input tokens, prompt excluded ({d.max_length})")
    p.add_argument("--warmup", type=int, default=None, help=f"untimed steps per contender (default {d.warmup})")
    p.add_argument("--repeats", type=int, default=None, help=f"timed repeats per contender (default {d.repeats})")
    p.add_argument("--length", type=int, default=None, help=f"prompt length l (default {d.length})")
    p.add_argument("--rank", type=int, default=None, help=f"rank r (default {d.rank})")
    p.add_argument("--pools", type=_ints, default=None, help="LAMP pools for the step table (default 1,2,4,5,10)")
    p.add_argument("--default-pool", type=int, default=None, help=f"our default p (default {d.default_pool})")
    p.add_argument("--infer-batch-sizes", type=_ints, default=None, help="default 1,16")
    p.add_argument("--growth-lengths", type=_ints, default=None, help="default 20,100,500,1000")
    p.add_argument("--growth-batch-size", type=int, default=None, help=f"default {d.growth_batch_size}")
    p.add_argument("--task", default=None, help=f"built-in task every section reads (default {d.task})")
    p.add_argument("--accuracy-steps", type=int, default=None, help=f"default {d.accuracy_steps}")
    p.add_argument("--seeds", type=int, default=None, help=f"accuracy runs per contender and budget ({d.seeds})")
    p.add_argument("--budgets", type=_words, default=None,
                   help="accuracy budgets: steps (the default steps each), time (the slowest one's training time "
                        "each); default steps,time")
    p.add_argument("--accuracy-methods", type=_words, default=None,
                   help="accuracy contenders by method, e.g. peft-pt,lamp (default: every method and PEFT)")
    p.add_argument("--accuracy-batch-size", type=int, default=None, help=f"default {d.accuracy_batch_size}")
    p.add_argument("--accuracy-train-examples", type=int, default=None,
                   help="cap on training examples tokenised for the accuracy runs (default: all)")
    p.add_argument("--eval-examples", type=int, default=None, help="test examples scored (default: all)")
    p.add_argument("--lr", type=float, default=None, help=f"default {d.lr}")
    p.add_argument("--serving-prompts", type=int, default=None,
                   help=f"prompts answering the same queries in the serving section (default {d.serving_prompts})")
    p.add_argument("--serving-queries", type=int, default=None, help=f"default {d.serving_queries}")
    p.add_argument("--serving-batch-sizes", type=_ints, default=None,
                   help="queries per call, each answered by every prompt (default 1,16)")
    p.add_argument("--http-prompts", type=_ints, default=None,
                   help="K jobs the serving-http clients call by turns (default 1,4,16)")
    p.add_argument("--http-clients", type=_ints, default=None, help="concurrent clients (default 1,8,32)")
    p.add_argument("--http-requests", type=int, default=None, help=f"requests per setting ({d.http_requests})")
    p.add_argument("--sections", type=_words, default=None, help=f"default {','.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="a few-minute variant (smaller batches, fewer configs)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")


def settings_from_args(a: argparse.Namespace) -> BenchSettings:
    given = {k: v for k, v in vars(a).items()
             if k not in ("quick", "out", "json", "handler", "command", "command_line")}
    return make_settings(quick=a.quick, **given)


def summary(result: dict[str, Any], files: dict[str, str]) -> dict[str, Any]:
    """The headline figures for scripts: per section, each contender's main figure and its ratio to PEFT."""
    keys = {"steps": "step_s", "inference": "ms_per_example", "accuracy": "accuracy", "growth": "step_s",
            "serving": "ms_per_query", "serving-http": "requests_per_s"}
    groups = {"inference": "batch_size", "serving": "queries_per_call", "serving-http": "clients"}
    out: dict[str, Any] = {"out": str(Path(files["markdown"]).parent), "files": files,
                           "environment": result["environment"], "total_seconds": result["total_seconds"]}
    for section, data in result["sections"].items():
        key = keys[section]
        group = groups.get(section)
        out[section] = [{"contender": r["contender"], **({group: r.get(group)} if group else {}), key: r.get(key),
                         f"{key}_x_peft": r.get(f"{key}_x_peft"),
                         **({f"{key}_x_sequential": r[f"{key}_x_sequential"]} if section == "serving" else {})}
                        for r in data["rows"]]
    return out


def cmd_bench(a: argparse.Namespace) -> int:
    from benchmarks.report import write_report
    from benchmarks.run import run_benchmark

    settings = settings_from_args(a)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(a.out).expanduser()
    result = run_benchmark(settings, out)
    command = getattr(a, "command_line", None) or " ".join(["lamp", *(shlex.quote(x) for x in sys.argv[1:])])
    files = write_report(result, out, command)
    print(Path(files["markdown"]).read_text() if not a.json else "", end="")
    if a.json:
        print(json.dumps(summary(result, files)))
    else:
        print(f"\nwritten: {', '.join(files.values())}")
    return 0


def register(sub: Any) -> None:
    """`lamp bench` (added to the `lamp` parser by lamp/cli.py)."""
    p = sub.add_parser("bench", help="benchmark our methods against PEFT prompt tuning, side by side")
    add_arguments(p)
    p.set_defaults(handler=cmd_bench)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    add_arguments(parser)
    args = list(sys.argv[1:] if argv is None else argv)
    a = parser.parse_args(args)
    a.command_line = " ".join(["python -m benchmarks", *(shlex.quote(x) for x in args)])
    try:
        return cmd_bench(a)
    except LampError as exc:
        print(f"benchmarks: error: {exc}", file=sys.stderr)
        return 2
