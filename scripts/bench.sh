#!/usr/bin/env bash
# Runs the benchmarks — the runtime's (agents/fault/examples/bench.rs), the
# orchestrator's workflows (orchestrator-server/examples/workflow_bench.rs), both
# against a private, throw-away redis-server, and the DAG planning
# (orchestrator/examples/plan_bench.rs), and `agentctl dlq replay --all` of
# 20,000 dead letters — and prints one JSON object on stdout.
#
#   scripts/bench.sh [bench flags...]    e.g. scripts/bench.sh --tasks 50000
#
# Progress goes to stderr. Exits non-zero when the bench does (its JSON then
# says "ok": false). The Redis runs without persistence and with
# maxmemory-policy noeviction, on a free port, in a temporary directory that
# is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

log() { printf 'bench.sh: %s\n' "$*" >&2; }

ensure_redis
log "building (release)"
cargo build --release -p fault-agent --example bench --bin fault-agent >&2
cargo build --release -p orchestrator --example plan_bench >&2
cargo build --release -p orchestrator-server --example workflow_bench >&2
cargo build --release -p agentctl --bin agentctl >&2

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
work_dir="$(mktemp -d -t agentic-bench.XXXXXX)"
trap 'stop_private_redis; rm -rf "$work_dir"' EXIT

start_private_redis "$work_dir"
log "redis-server pid $REDIS_PID on port $REDIS_PORT ($(redis-server --version | awk '{print $3}'))"

status=0
runtime=$("$target_dir/release/examples/bench" --redis-url "redis://127.0.0.1:$REDIS_PORT" \
  --worker-bin "$target_dir/release/fault-agent" "$@") || status=$?
plan=$("$target_dir/release/examples/plan_bench")
log "workflows: 2000 sdlc-shaped workflows through one orchestrator"
workflows=$(RUST_LOG=warn "$target_dir/release/examples/workflow_bench" \
  --redis-url "redis://127.0.0.1:$REDIS_PORT" --namespace wfbench) || status=$?
results_only=$(RUST_LOG=warn "$target_dir/release/examples/workflow_bench" \
  --redis-url "redis://127.0.0.1:$REDIS_PORT" --namespace wfbench2 --agents-after-submit) || status=$?
log "dlq replay: 20000 dead letters, agentctl dlq replay --all"
replay=$(python3 scripts/dlq_replay_bench.py "$target_dir/release/agentctl" \
  "redis://127.0.0.1:$REDIS_PORT" "$work_dir") || status=$?
# One JSON object: the runtime's figures plus the orchestrator's.
python3 -c 'import json, sys
out = {}
for a in sys.argv[1:]:
    out.update(json.loads(a or "{}"))
print(json.dumps(out, sort_keys=True))' "$runtime" "$plan" "$workflows" "$results_only" "$replay"
exit "$status"
