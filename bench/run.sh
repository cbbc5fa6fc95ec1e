#!/usr/bin/env bash
# Every performance figure of BENCHMARKS.md but criterion's, in one run (about 5 minutes on two
# cores after the release build): cold start and peak memory against the Python baseline and the
# floor (bench/floor.rs), warm terminate latency with AWS and etcd requests per event, fail-fast with an open
# circuit, and the stripped binary's size. Prints Markdown.
#
#   bash bench/run.sh            (or: make bench-perf)
#   RUNS=10 bash bench/run.sh    fewer runs, for a quick look
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(bash bench/setup.sh)
py=$PWD/.venv/bin/python
cd bench

echo "## Cold start and peak memory"
echo
"$py" coldstart.py --bin-dir "../$bin" --runs "${RUNS:-20}"
echo
echo "## Warm terminate, end to end against the local stack"
echo
"$py" warm.py --bin-dir "../$bin" --runs "${WARM_RUNS:-100}"
echo
echo "## Fail-fast with an open circuit"
echo
"$py" failfast.py --bin-dir "../$bin" --runs "${FAILFAST_RUNS:-50}"
echo
echo "## Binary size"
echo
for f in bootstrap floor; do
  printf -- '- %s: %s bytes (%s)\n' "$f" "$(stat -c %s "../$bin/$f")" "$(du -h --apparent-size "../$bin/$f" | cut -f1)"
done
