#!/usr/bin/env bash
# Builds the release binaries once, then runs every Portico benchmark in turn. Its output is what
# bench/RESULTS.md records: `bench/run.sh 2>&1 | tee /tmp/bench.txt` reproduces it.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p portico -p portico-bench

echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(rustc --version)"
echo "# load before the run:$(uptime | sed 's/.*load average//')"
run() {
    echo
    echo "\$ cargo run --release -p portico-bench $*"
    cargo run --quiet --release -p portico-bench "$@"
}
run --bin compile
run --bin rest
run --bin idle-rss
run --bin clusters
# Last, because the feature rebuilds the benchmark crate: compile's timings without the counting allocator.
run --bin compile --features uncounted
