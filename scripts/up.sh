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
# base URL (scripts/demo.sh waits for it). The API always wants a token: with
# none configured (AGENTIC_API_TOKEN, AGENTIC_API_TOKEN_FILE,
# AGENTIC_TOKENS_FILE) the orchestrator generates an admin token into
# .data/api-token (0600); .data/api-auth holds it as a curl header file
# (curl -H @.data/api-auth ...), so no token goes on a command line.
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
token_file="$data/api-token"
auth="$data/api-auth"
rm -f "$token_file" "$auth"
export AGENTIC_TOKEN_OUT="$token_file"
# The header file of the API token, once there is one to read (printf is a
# shell builtin: the token never reaches a command line).
make_auth() {
  [ -s "$auth" ] && return 0
  local t=${AGENTIC_API_TOKEN:-}
  if [ -z "$t" ] && [ -n "${AGENTIC_API_TOKEN_FILE:-}" ]; then t=$(cat "$AGENTIC_API_TOKEN_FILE"); fi
  if [ -z "$t" ] && [ -s "$token_file" ]; then t=$(cat "$token_file"); fi
  [ -n "$t" ] || return 1
  (umask 077 && printf 'Authorization: Bearer %s\n' "$t" >"$auth")
}

pids=()
cleanup() {
  trap - EXIT INT TERM
  rm -f "$data/up.ready" "$auth"
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
    && make_auth && curl -fsS -H @"$auth" "$api/agents" 2>/dev/null | python3 -c '
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
  make_auth || echo "no API token to read: with only AGENTIC_TOKENS_FILE, give AGENTIC_API_TOKEN too" >&2
  exit 1
fi
echo "$api" > "$data/up.ready"
echo "ready: API $api (redis URL in $data/redis.url, namespace $ns)"
if [ -s "$token_file" ]; then
  echo "API token (admin, generated): in $token_file; curl -H @$auth $api/workflows"
else
  echo "API token: the one configured; curl -H @$auth $api/workflows"
fi
echo "dashboard: http://$listen/ (sign in with the token)   operators' CLI: $bin/agentctl --redis-url-file $data/redis.url --namespace $ns dlq list"
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
