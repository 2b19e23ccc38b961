#!/usr/bin/env bash
# Runs the echo example agent against a redis-server of its own (or $REDIS_URL),
# sends it one task with plain redis-cli — the lines in schemas/PROTOCOL.md —
# and prints the result. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_redis
ensure_agent_tools  # python3, for a free port

work=$(mktemp -d)
worker_pid=""
cleanup() {
  if [ -n "$worker_pid" ]; then kill -TERM "$worker_pid" 2>/dev/null || true; wait "$worker_pid" 2>/dev/null || true; fi
  stop_private_redis
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

if [ -n "${REDIS_URL:-}" ]; then
  url=$REDIS_URL
  # What the processes start must not inherit it: they read the file below.
  unset REDIS_URL
else
  start_private_redis "$work/redis"
  url="redis://127.0.0.1:$REDIS_PORT"
fi
# The password goes in a file (the agent) and REDISCLI_AUTH (redis-cli),
# never on a command line, which every user of the host can read.
write_redis_url_file "$work/redis.url" "$url"
# The file is the one source: a URL in the environment as well is refused.
unset AGENTIC_REDIS_URL AGENTIC_REDIS_URL_FILE
redis_cli_for_url "$url"

echo "building the echo example..." >&2
cargo build -q -p agent-sdk --example echo
./target/debug/examples/echo --redis-url-file "$work/redis.url" >"$work/echo.log" 2>&1 &
worker_pid=$!

task_id="hello-$(date +%s%N)"
echo "\$ redis-cli XADD 'agentic:agent:{echo}:tasks' '*' body '{\"v\":1,\"id\":\"$task_id\",\"input\":{\"name\":\"world\"}}'"
rcli XADD 'agentic:agent:{echo}:tasks' '*' body "{\"v\":1,\"id\":\"$task_id\",\"input\":{\"name\":\"world\"}}"
echo "\$ redis-cli GET 'agentic:agent:{echo}:result:$task_id'"
for _ in $(seq 1 200); do
  result=$(rcli GET "agentic:agent:{echo}:result:$task_id")
  if [ -n "$result" ]; then
    echo "$result"
    exit 0
  fi
  sleep 0.05
done
echo "no result after 10 s; the agent's log:" >&2
cat "$work/echo.log" >&2
exit 1
