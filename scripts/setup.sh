#!/usr/bin/env bash
# Creates .venv in the repo and installs the pinned requirements into it; a no-op when they
# are already installed. `bash scripts/setup.sh dev` adds the test tools.
#   PYTHON=python3.11 bash scripts/setup.sh     # choose the interpreter (3.11 or newer)
set -euo pipefail
cd "$(dirname "$0")/.."
reqs=requirements.txt
[ "${1:-}" = dev ] && reqs=requirements-dev.txt

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
# Re-install only when the requirement files changed since the last install.
stamp=".venv/.installed-$(cat requirements.txt "$reqs" pyproject.toml | sha256sum | cut -c1-16)-$(basename "$reqs" .txt)"
if [ ! -e "$stamp" ]; then
  echo "Installing $reqs into .venv (a few minutes the first time) ..."
  .venv/bin/python -m pip install -q -r "$reqs"
  # The package itself, editable: `import alpaca` works from any directory, and edits take effect at once.
  .venv/bin/python -m pip install -q --no-deps -e .
  touch "$stamp"
fi
