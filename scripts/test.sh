#!/usr/bin/env bash
# Runs the whole test suite (slow and multi-process tests included) in the repo's .venv,
# installing the pinned requirements and test tools first if needed. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
exec .venv/bin/python -m pytest "$@"
