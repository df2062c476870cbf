#!/usr/bin/env bash
# Set everything up, lint (ruff check + ruff format --check), then run the whole test suite
# (fast and slow tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -q "$@"
