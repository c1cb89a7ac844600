#!/usr/bin/env bash
# Builds the release binaries once, then runs every Portico benchmark in turn. Its output is what
# bench/RESULTS.md records: `bench/run.sh 2>&1 | tee /tmp/bench.txt` reproduces it.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p portico -p portico-bench

echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(rustc --version)"
for bench in compile rest idle-rss; do
    echo
    echo "\$ cargo run --release -p portico-bench --bin $bench"
    cargo run --quiet --release -p portico-bench --bin "$bench"
done
