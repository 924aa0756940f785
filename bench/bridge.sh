#!/usr/bin/env bash
# make bench, bridge stage: live lag at 1,000 POS transactions/s, backlog drain of 100,000 transactions and the
# bridge's peak RSS, each beside PostgreSQL's own logical replication measured in the same run.
# Runs its own throwaway clusters (tests/src/bin/bridge_bench.rs); prints `row|...` lines for bench/run.sh.
# Environment: BENCH_RATE (1000), BENCH_LIVE_SECONDS (10), BENCH_BACKLOG (100000), BENCH_DRAIN_ONLY=1 (only the
# reference and normalized drains), BENCH_DRAIN_ROUNDS (1; more alternate the two drains and report medians).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
cargo build -q --release -p possync-bridge --bin possync-bridge -p possync-e2e --bin bridge-bench
exec "${CARGO_TARGET_DIR:-$ROOT/target}/release/bridge-bench"
