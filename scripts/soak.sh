#!/usr/bin/env bash
# The soak: the whole system (a private redis-server, two orchestrator
# replicas, six fault-agents) at a steady rate of workflows and tasks, with a
# short retention and a random `kill -9` of an agent or an orchestrator every
# 10 s; prints one JSON object (workflows and tasks run, lost, applied twice,
# Redis memory at its plateau and at the end, connections, RSS) and fails when
# anything was lost or applied twice or memory grew past its plateau by 10 %.
#
#   scripts/soak.sh                  # 3 minutes
#   scripts/soak.sh --short          # 60 s (what scripts/test.sh runs)
#   scripts/soak.sh --duration 2h    # longer; any flag of the soak example
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_redis
ensure_agent_tools

args=()
for a in "$@"; do
  case "$a" in
    --short) args+=(--duration 60s) ;;
    *) args+=("$a") ;;
  esac
done

cargo build -q --locked -p orchestrator-server --bin orchestrator --example soak -p fault-agent --bin fault-agent
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
work=$(mktemp -d -t agentic-soak.XXXXXX)
if "$target/debug/examples/soak" --bin-dir "$target/debug" --work-dir "$work" "${args[@]}"; then
  rm -rf "$work"
else
  echo "soak failed: its processes' logs are in $work" >&2
  exit 1
fi
