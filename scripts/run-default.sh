#!/usr/bin/env bash
# Set up .venv, then fine-tune the embedded default (SmolLM2-135M-Instruct with AGZO on a
# built-in task) and print zero-shot vs fine-tuned test accuracy. Extra flags go to `agzo train`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/agzo train "$@"
