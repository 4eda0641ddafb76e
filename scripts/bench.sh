#!/usr/bin/env bash
# Sets up .venv with the benchmark anchors and runs one benchmark, or all of them in turn.
#   bash scripts/bench.sh                 every benchmark (about 20 minutes)
#   bash scripts/bench.sh prompt_reuse    one of: bus_overhead first_sentence prompt_reuse throughput
#                                         remote_path concurrency_stop memory memory_stores server_http
#                                         server_overhead concurrency_llama rss_llama (extra args go to it)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh "test,llama,bench"
if [ $# -gt 0 ]; then
  name="$1"; shift
  exec .venv/bin/python -m "benchmarks.$name" "$@"
fi
status=0
for name in bus_overhead first_sentence prompt_reuse throughput remote_path concurrency_stop memory memory_stores \
    server_http server_overhead concurrency_llama rss_llama; do
  echo "== benchmarks.$name"
  .venv/bin/python -m "benchmarks.$name" || status=1
done
exit $status
