#!/usr/bin/env bash
# Lint, type-check and run the test suite. Extra arguments go to pytest (e.g. -m real_model, -k resume).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/mypy lamp core tests scripts benchmarks $( [ -d jobs ] && echo jobs ) $( [ -d app ] && [ -n "$(ls app/*.py 2>/dev/null)" ] && echo app )
.venv/bin/pytest -q "$@"
