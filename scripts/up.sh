#!/usr/bin/env bash
# Runs the whole system: Redis ($REDIS_URL, or a redis-server of its own with
# data and AOF under .data/redis), the orchestrator and the five agents.
# Waits until all are ready, prints where the API is, and runs until Ctrl-C
# (or SIGTERM), which stops everything cleanly.
#
#   scripts/up.sh                       # API on 127.0.0.1:8080
#   AGENTIC_LISTEN=127.0.0.1:9090 scripts/up.sh
#
# Repositories and releases go under .data/ (AGENTIC_DATA to move it); logs
# under .data/logs. When everything is ready, .data/up.ready holds the API's
# base URL (scripts/demo.sh waits for it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_redis
ensure_curl
ensure_agent_tools

data=${AGENTIC_DATA:-$PWD/.data}
listen=${AGENTIC_LISTEN:-127.0.0.1:8080}
ns=${AGENTIC_NAMESPACE:-agentic}
mkdir -p "$data/repos" "$data/releases" "$data/logs"
rm -f "$data/up.ready"

pids=()
cleanup() {
  trap - EXIT INT TERM
  rm -f "$data/up.ready"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  stop_private_redis
}
trap cleanup EXIT
trap 'echo "stopping..." >&2; exit 0' INT TERM

if [ -n "${REDIS_URL:-}" ]; then
  url=$REDIS_URL
  # What the processes start must not inherit it: they read the file below.
  unset REDIS_URL
else
  REDIS_AOF=yes start_private_redis "$data/redis"
  url="redis://127.0.0.1:$REDIS_PORT"
fi
# The processes read the URL from a file of ours: a password on their command
# lines would be readable by every user of the host.
write_redis_url_file "$data/redis.url" "$url"
# The file is the one source: a URL in the environment as well is refused.
unset AGENTIC_REDIS_URL AGENTIC_REDIS_URL_FILE

echo "building (cargo build)..." >&2
cargo build -q -p orchestrator-server -p agentctl -p scaffold-agent -p validation-agent \
  -p e2e-agent -p integration-agent -p deployment-agent
bin=./target/debug

common=(--redis-url-file "$data/redis.url" --namespace "$ns")
"$bin/orchestrator" serve "${common[@]}" --listen "$listen" >"$data/logs/orchestrator.log" 2>&1 &
pids+=($!)
"$bin/scaffold-agent" "${common[@]}" >"$data/logs/scaffold.log" 2>&1 &
pids+=($!)
"$bin/validation-agent" "${common[@]}" >"$data/logs/validation.log" 2>&1 &
pids+=($!)
"$bin/e2e-agent" "${common[@]}" --task-timeout 10m >"$data/logs/e2e.log" 2>&1 &
pids+=($!)
"$bin/integration-agent" "${common[@]}" --repos-dir "$data/repos" >"$data/logs/integration.log" 2>&1 &
pids+=($!)
"$bin/deployment-agent" "${common[@]}" --releases-dir "$data/releases" >"$data/logs/deployment.log" 2>&1 &
pids+=($!)

api="http://$listen/api/v1"
ready=""
for _ in $(seq 1 600); do
  for p in "${pids[@]}"; do
    if ! kill -0 "$p" 2>/dev/null; then
      echo "a process exited during start-up; logs in $data/logs:" >&2
      tail -n 5 "$data"/logs/*.log >&2
      exit 1
    fi
  done
  if curl -fsS "http://$listen/ready" >/dev/null 2>&1 \
    && curl -fsS "$api/agents" 2>/dev/null | python3 -c '
import json, sys
types = {t["agent_type"]: t["live"] for t in json.load(sys.stdin)["types"]}
sys.exit(0 if all(types.get(t, 0) > 0 for t in ["scaffold", "validation", "e2e", "integration", "deployment"]) else 1)
'; then
    ready=yes
    break
  fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "not ready after 60 s; logs in $data/logs" >&2
  exit 1
fi
echo "$api" > "$data/up.ready"
echo "ready: API $api (redis URL in $data/redis.url, namespace $ns)"
echo "dashboard: http://$listen/   operators' CLI: $bin/agentctl --redis-url-file $data/redis.url --namespace $ns dlq list"
echo "repositories in $data/repos, releases in $data/releases, logs in $data/logs; Ctrl-C stops everything"
# Run until a signal, or until one of ours dies.
while :; do
  for p in "${pids[@]}"; do
    if ! kill -0 "$p" 2>/dev/null; then
      echo "process $p exited; stopping (logs in $data/logs)" >&2
      exit 1
    fi
  done
  sleep 1
done
