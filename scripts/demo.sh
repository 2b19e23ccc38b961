#!/usr/bin/env bash
# Runs the whole system (scripts/up.sh), submits an `sdlc` workflow — turn a
# short request into a generated project that is checked, tested, committed
# to git and deployed — shows its progress stage by stage, then prints where
# the release was deployed, the files it holds, and runs its own tests there.
# Stops everything at the end (or on Ctrl-C).
#
#   scripts/demo.sh                       # a node-service
#   TEMPLATE=python-package scripts/demo.sh   # or rust-lib
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_agent_tools

template=${TEMPLATE:-node-service}
project=${PROJECT:-hello-$(echo "$template" | cut -d- -f1)}
export AGENTIC_DATA=${AGENTIC_DATA:-$PWD/.data}
export AGENTIC_LISTEN=${AGENTIC_LISTEN:-127.0.0.1:$(free_port)}

bash scripts/up.sh &
up=$!
stop() { kill -TERM "$up" 2>/dev/null || true; wait "$up" 2>/dev/null || true; }
trap stop EXIT INT TERM
for _ in $(seq 1 3000); do
  [ -f "$AGENTIC_DATA/up.ready" ] && break
  kill -0 "$up" 2>/dev/null || { echo "scripts/up.sh failed" >&2; exit 1; }
  sleep 0.2
done
api=$(cat "$AGENTIC_DATA/up.ready")
auth="$AGENTIC_DATA/api-auth" # the API token as a curl header file (see scripts/up.sh)

input="{\"name\":\"$project\",\"template\":\"$template\",\"description\":\"A $template made by the agentic demo\"}"
echo
echo "\$ curl -H @$auth -X POST $api/workflows -H 'content-type: application/json' -d '{\"definition\":\"sdlc\",\"input\":$input}'"
created=$(curl -fsS -H @"$auth" -X POST "$api/workflows" -H 'content-type: application/json' \
  -d "{\"definition\":\"sdlc\",\"input\":$input}")
id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$created")
echo "workflow $id; its stages as they happen:"
curl -sN --max-time 900 -H @"$auth" "$api/workflows/$id/events" | python3 -c '
import json, sys
for line in sys.stdin:
    if line.startswith("event: end"):
        break
    if line.startswith("data:"):
        e = json.loads(line[5:])
        what = e["type"] + (" " + e["stage"] if e.get("stage") else "")
        print("  %-30s %-13s %3d%%" % (what, e["status"], e["progress"]), flush=True)
'
final=$(curl -fsS -H @"$auth" "$api/workflows/$id")
python3 - "$final" <<'PY'
import json, sys
w = json.loads(sys.argv[1])
print("\nworkflow %s: %s" % (w["id"], w["status"]))
for s in w["stages"]:
    out = s.get("output") or {}
    note = ""
    if s["name"] == "scaffold" and out: note = "%d files, artifact %s..." % (len(out["files"]), out["artifact"]["sha256"][:12])
    if s["name"] == "validation" and out: note = "%d findings, none an error" % len(out["findings"])
    if s["name"] == "e2e" and out: note = "%d passed, %d failed" % (out["passed"], out["failed"])
    if s["name"] == "integration" and out: note = "commit %s on %s, merged" % (out["commit"][:12], out["branch"])
    if s["name"] == "deployment" and out: note = "release %s at %s" % (out["release"], out["path"])
    print("  %-12s %-10s %s" % (s["name"], s["status"], note or s.get("error", "")))
PY
status=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["status"])' "$final")
if [ "$status" != completed ]; then
  echo "the workflow did not complete; logs in $AGENTIC_DATA/logs" >&2
  exit 1
fi
current="$AGENTIC_DATA/releases/$project/current"
echo
echo "deployed: $current -> $(readlink "$current")"
(cd "$current" && find . -type f | sort | sed 's#^\./#  #')
echo
echo "its own tests, run where it was deployed:"
case "$template" in
  node-service) (cd "$current" && node --test test/ 2>&1 | grep -E '^# (pass|fail)') ;;
  python-package) (cd "$current" && PYTHONDONTWRITEBYTECODE=1 python3 -m unittest discover -s tests 2>&1 | tail -n 3) ;;
  rust-lib) (cd "$current" && CARGO_TARGET_DIR="$AGENTIC_DATA/target" cargo test --offline -q 2>&1 | grep 'test result' | head -n 1) ;;
esac
