#!/usr/bin/env bash
# End-to-end checks of the real pipeline (run by scripts/test.sh): the whole
# system from scripts/up.sh on a throw-away data directory, then
#  1. the sdlc workflow for each template completes, and the deployed
#     `current` release holds the project, whose own tests pass there;
#  2. a failing test planted in the input: e2e fails, integration and
#     deployment never run, the workflow fails;
#  3. a private key planted in an extra file: validation catches it;
#  4. a stage after deployment that fails: the rollback runs and `current`
#     points to the previous release again.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_agent_tools

export AGENTIC_DATA
AGENTIC_DATA=$(mktemp -d -t agentic-sdlc.XXXXXX)
export AGENTIC_LISTEN=127.0.0.1:$(free_port)
bash scripts/up.sh >"$AGENTIC_DATA/up.out" 2>&1 &
up=$!
cleanup() { kill -TERM "$up" 2>/dev/null || true; wait "$up" 2>/dev/null || true; rm -rf "$AGENTIC_DATA"; }
trap cleanup EXIT INT TERM
for _ in $(seq 1 3000); do
  [ -f "$AGENTIC_DATA/up.ready" ] && break
  kill -0 "$up" 2>/dev/null || { cat "$AGENTIC_DATA/up.out" >&2; exit 1; }
  sleep 0.2
done
api=$(cat "$AGENTIC_DATA/up.ready")
auth="$AGENTIC_DATA/api-auth" # the API token as a curl header file (see scripts/up.sh)
fail() { echo "sdlc-checks: $*" >&2; tail -n 20 "$AGENTIC_DATA"/logs/*.log >&2; exit 1; }

# run DEFINITION INPUT_JSON -> prints the final workflow JSON
run() {
  local created id
  created=$(curl -fsS -H @"$auth" -X POST "$api/workflows" -H 'content-type: application/json' \
    -d "{\"definition\":\"$1\",\"input\":$2}")
  id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$created")
  curl -sN --max-time 900 -H @"$auth" "$api/workflows/$id/events" | grep -q '^event: end' || true
  curl -fsS -H @"$auth" "$api/workflows/$id"
}
field() { python3 -c "import json,sys; w=json.loads(sys.argv[1]); print($2)" "$1"; }

# 1. every template, deployed and tested where it landed
for t in node-service python-package rust-lib; do
  w=$(run sdlc "{\"name\":\"app-${t%%-*}\",\"template\":\"$t\"}")
  [ "$(field "$w" 'w["status"]')" = completed ] || fail "$t: $(field "$w" 'w["status"], [s.get("error") for s in w["stages"]]')"
  cur="$AGENTIC_DATA/releases/app-${t%%-*}/current"
  case $t in
    node-service) (cd "$cur" && node --test test/ >/dev/null 2>&1) || fail "$t: tests fail in $cur" ;;
    python-package) (cd "$cur" && PYTHONDONTWRITEBYTECODE=1 python3 -m unittest discover -s tests >/dev/null 2>&1) || fail "$t: tests fail in $cur" ;;
    rust-lib) (cd "$cur" && CARGO_TARGET_DIR="$AGENTIC_DATA/target" cargo test --offline -q >/dev/null 2>&1) || fail "$t: tests fail in $cur" ;;
  esac
  echo "sdlc-checks: $t completed, deployed at $(readlink "$cur"), its tests pass there"
done

# 2. a failing test planted
w=$(run sdlc '{"name":"app-broken","template":"python-package","extras":{"tests/test_broken.py":"import unittest\nclass T(unittest.TestCase):\n    def test_broken(self):\n        self.assertEqual(1, 2)\n"}}')
[ "$(field "$w" 'w["status"]')" = failed ] || fail "planted failing test: $(field "$w" 'w["status"]')"
[ "$(field "$w" '[s["status"] for s in w["stages"]][2:]')" = "['failed', 'skipped', 'skipped']" ] || fail "planted failing test: $(field "$w" '[s["status"] for s in w["stages"]]')"
[ ! -e "$AGENTIC_DATA/releases/app-broken" ] || fail "app-broken was deployed"
echo "sdlc-checks: a failing test fails e2e; integration and deployment never ran"

# 3. a secret planted
w=$(run sdlc '{"name":"app-leaky","template":"node-service","extras":{"deploy/key.pem":"-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n"}}')
[ "$(field "$w" 'w["stages"][1]["status"]')" = failed ] || fail "planted secret: $(field "$w" '[s["status"] for s in w["stages"]]')"
field "$w" 'w["stages"][1]["error"]' | grep -q 'deploy/key.pem:1' || fail "planted secret: $(field "$w" 'w["stages"][1]["error"]')"
echo "sdlc-checks: a planted private key is caught by validation ($(field "$w" 'w["stages"][1]["error"]'))"

# 4. a failure after deployment rolls back
python3 - "$api" "$auth" <<'PY'
import json, sys, urllib.request
api = sys.argv[1]
# The API token's header, from the header file (never from argv).
name, value = open(sys.argv[2]).read().strip().split(": ", 1)
auth = {name: value}
d = json.load(urllib.request.urlopen(urllib.request.Request(api + "/definitions/sdlc", headers=auth)))
for k in ("levels", "version"):
    d.pop(k, None)
d["name"] = "sdlc-verified"
# A check after deployment that cannot pass: it gets no artifact.
d["stages"].append({"name": "verify", "agent": "e2e", "depends_on": ["deployment"], "max_attempts": 1})
req = urllib.request.Request(api + "/definitions", data=json.dumps(d).encode(), headers={"content-type": "application/json", **auth})
urllib.request.urlopen(req)
PY
before=$(readlink "$AGENTIC_DATA/releases/app-node/current")
w=$(run sdlc-verified '{"name":"app-node","template":"node-service","description":"second release"}')
[ "$(field "$w" 'w["status"]')" = failed ] || fail "post-deployment failure: $(field "$w" 'w["status"]')"
[ "$(field "$w" 'w["stages"][4]["compensation"]["status"]')" = done ] || fail "no rollback: $(field "$w" 'w["stages"][4]')"
after=$(readlink "$AGENTIC_DATA/releases/app-node/current")
[ "$after" = "$before" ] || fail "current is $after after the rollback, not $before"
[ "$(ls "$AGENTIC_DATA/releases/app-node/releases" | wc -l)" = 2 ] || fail "expected two releases"
echo "sdlc-checks: a failure after deployment rolled current back to $before"
