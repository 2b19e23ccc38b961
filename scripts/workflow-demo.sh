#!/usr/bin/env bash
# Runs the orchestrator and five stand-in agents (the fault-test agent, agents/fault, under
# the five agent types of the built-in `sdlc` definition) against a
# redis-server of its own (or $REDIS_URL), submits one workflow over the HTTP
# API with curl, follows its live event stream to the end and prints the
# result. Ctrl-C stops everything.
#
#   scripts/workflow-demo.sh            # a workflow that completes
#   scripts/workflow-demo.sh --fail     # e2e fails: the workflow fails, nothing after it runs
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_redis
ensure_curl
ensure_agent_tools

input='{"project":"demo","faults":{"validation":{"sleep_ms":300},"e2e":{"sleep_ms":300}}}'
want=completed
if [ "${1:-}" = "--fail" ]; then
  input='{"project":"demo","faults":{"e2e":{"fail":"permanent"}}}'
  want=failed
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
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
# A file, not --redis-url: a password on a command line is readable by every
# user of the host.
write_redis_url_file "$work/redis.url" "$url"
# The file is the one source: a URL in the environment as well is refused.
unset AGENTIC_REDIS_URL AGENTIC_REDIS_URL_FILE
ns="demo$$"

echo "building the orchestrator and fault-agent..." >&2
cargo build -q -p orchestrator-server --bin orchestrator -p fault-agent --bin fault-agent
for t in scaffold validation e2e integration deployment; do
  ./target/debug/fault-agent --redis-url-file "$work/redis.url" --namespace "$ns" --agent-type "$t" \
    >"$work/$t.log" 2>&1 &
  pids+=($!)
done
port=$(free_port)
api="http://127.0.0.1:$port/api/v1"
# The API token the orchestrator generates (0600), and it as a curl header
# file: no token on a command line.
export AGENTIC_TOKEN_OUT="$work/api-token"
auth="$work/api-auth"
./target/debug/orchestrator serve --redis-url-file "$work/redis.url" --namespace "$ns" \
  --listen "127.0.0.1:$port" >"$work/orchestrator.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do
  curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
  sleep 0.05
done
if ! curl -fsS "http://127.0.0.1:$port/ready" >/dev/null; then
  echo "the orchestrator did not get ready; its log:" >&2
  cat "$work/orchestrator.log" >&2
  exit 1
fi
(umask 077 && printf 'Authorization: Bearer %s\n' "$(cat "$AGENTIC_TOKEN_OUT")" >"$auth")
echo "API token (admin, generated): in $AGENTIC_TOKEN_OUT"

echo "\$ curl -H @$auth -X POST $api/workflows -H 'content-type: application/json' -d '{\"definition\":\"sdlc\",\"input\":$input}'"
created=$(curl -fsS -H @"$auth" -X POST "$api/workflows" -H 'content-type: application/json' \
  -d "{\"definition\":\"sdlc\",\"input\":$input}")
id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$created")
echo "workflow $id created"
echo "\$ curl -H @$auth -N $api/workflows/$id/events"
# The event stream ends with an `end` event once the workflow has ended.
curl -sN --max-time 60 -H @"$auth" "$api/workflows/$id/events" | python3 -c '
import json, sys
for line in sys.stdin:
    if line.startswith("event: end"):
        break
    if line.startswith("data:"):
        e = json.loads(line[5:])
        what = e["type"] + (" " + e["stage"] if e.get("stage") else "")
        sent = ", dispatched " + ", ".join(e["dispatched"]) if e.get("dispatched") else ""
        print("  v%-2d %-32s %-13s %3d%%%s" % (e["version"], what, e["status"], e["progress"], sent), flush=True)
'
echo "\$ curl -H @$auth $api/workflows/$id"
final=$(curl -fsS -H @"$auth" "$api/workflows/$id")
python3 -c '
import json, sys
w = json.loads(sys.argv[1])
print("status %s, %d%%" % (w["status"], w["progress"]))
for s, d in zip(w["stages"], w["stage_details"]):
    done = s["status"] == "completed"
    print("  %-12s %-10s %s" % (s["name"], s["status"], ("%d ms" % d["duration_ms"]) if done else s.get("error", "")))
' "$final"
status=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["status"])' "$final")
if [ "$status" != "$want" ]; then
  echo "expected $want; the orchestrator's log:" >&2
  tail -n 50 "$work/orchestrator.log" >&2
  exit 1
fi
