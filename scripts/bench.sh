#!/usr/bin/env bash
# The benchmark: flatpack against the seed and against the broker's and the SMTP servers' own
# limits, on one local broker in one run. The driver is bench/bench.py; see --help and
# BENCHMARKS.md.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exec python3 "$root/bench/bench.py" "$@"
