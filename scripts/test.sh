#!/usr/bin/env bash
# Runs the whole test suite, slow and multi-process tests included, in the repo's venv.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || { echo "no .venv: run the Quickstart setup command first (bash scripts/demo.sh)" >&2; exit 1; }
. .venv/bin/activate
exec python -m pytest "$@"
