#!/usr/bin/env bash
# Set up, lint, type-check and run the test suite (slow SmolLM2 tests excluded; add -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
.venv/bin/mypy
.venv/bin/pytest -q "$@"
