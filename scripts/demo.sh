#!/usr/bin/env bash
# Sets up .venv, starts a real ovos-messagebus and ovos-core with this skill, and talks to it.
#   bash scripts/demo.sh                  interactive: type a line, hear (read) the answer
#   bash scripts/demo.sh --say "hello"    one turn, then exit
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh "demo"
exec .venv/bin/persona-fallback demo "$@"
