#!/usr/bin/env bash
# Set up and run the whole test suite (unit, property, River checks, real-Kafka integration).
# This is the command README.md gives and .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
ruff check streamgmm tests scripts
ruff format --check streamgmm tests scripts
python -m pytest "$@"
