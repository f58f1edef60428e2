#!/usr/bin/env bash
# Sets up and starts `charging serve` on the embedded defaults: a SQLite file under var/ and a
# Kafka-compatible broker started as a child process.  Extra arguments go to `charging serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
mkdir -p var
exec .venv/bin/charging serve "$@"
