#!/usr/bin/env bash
# Sets up .venv with everything the tests need, then runs the whole test suite (extra args go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh "test,llama"
exec .venv/bin/python -m pytest "$@"
