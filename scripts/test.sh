#!/usr/bin/env bash
# Sets up (Python environment, Debian test tools, PostgreSQL) and runs the checks and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --system
export CI="${CI:-1}"  # tests that need a system tool fail rather than skip when it is missing
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/pytest -q "$@"
