"""`lamp`: the composition root. It builds one parser from each layer's commands and turns errors raised on purpose
into one line and an exit status; nothing below imports it.

    core/        the engine:       train, eval, predict, params, export, inspect   (core.cli)
    jobs/        queue and store:  submit, jobs, cancel, worker, estimate, study   (jobs.cli)
    app/         the dashboard:    serve, gc                                       (app.cli)
    benchmarks/  the harness:      bench                                           (benchmarks.cli)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import app.cli
import benchmarks.cli
import core.cli
import jobs.cli
from core.errors import LampError, OutOfMemory, is_out_of_memory, storage_error

LAYERS = (core.cli, jobs.cli, app.cli, benchmarks.cli)
"""Each layer's commands, in the order `lamp --help` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lamp", description="LAMP Studio: prompt tuning of frozen models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for layer in LAYERS:
        layer.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except LampError as exc:
        print(f"lamp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lamp {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a full disk or an unwritable LAMP_HOME, out of memory: one line and the fix
        problem: Exception | None = storage_error(exc)
        if problem is None and is_out_of_memory(exc):
            problem = OutOfMemory(f"out of memory: {str(exc).strip().splitlines()[0][:300]}; lower --batch-size or "
                                  "--max-length (`lamp estimate` shows what a run needs)")
        if problem is None:
            raise
        print(f"lamp {args.command}: error: {problem}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
