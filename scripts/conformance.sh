#!/usr/bin/env bash
# Third-party conformance of the HTTP API: schemathesis (PyPI, installed into
# a venv under target/ when missing) runs every phase (examples, coverage,
# fuzzing, stateful) and every check against the running orchestrator's own
# OpenAPI document (/api/v1/openapi.json), with a valid bearer token.
#
# It starts a redis-server of its own and the real `orchestrator` binary on
# free ports, the built-in `sdlc` definition registered (so routes have
# something to find), and exits non-zero when schemathesis reports any
# failure or error. The last line is a summary.
#
#   scripts/conformance.sh                 the run CI does
#   CONFORMANCE_MAX_EXAMPLES=200 scripts/conformance.sh   a longer run
#   CONFORMANCE_ARGS="--include-operation-id workflow_events" scripts/conformance.sh
#                                          one operation (any schemathesis run option)
#
# Bounds: at most CONFORMANCE_MAX_EXAMPLES (default 20) cases per operation
# and phase, each phase run once (no --max-time: with one, fuzzing and
# stateful repeat until it is spent, and a slow phase can starve the next),
# 4 workers (the slow requests wait on the server: `?wait=` up to 30 s, SSE
# streams), a fixed seed so a failure can be reproduced (CONFORMANCE_SEED
# to vary it), and a hard stop at CONFORMANCE_TIMEOUT seconds (600).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SCHEMATHESIS_VERSION=4.32.5
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target="$PWD/$target" ;; esac
venv="$target/conformance-venv"
max_examples=${CONFORMANCE_MAX_EXAMPLES:-20}
hard_stop=${CONFORMANCE_TIMEOUT:-600}
seed=${CONFORMANCE_SEED:-11}

# Hypothesis describes the lambdas of its strategies by parsing their
# source with `ast`; with schemathesis's worker threads that sometimes fails
# inside CPython ("SystemError: AST constructor recursion depth mismatch",
# or a KeyError of its parse cache), and schemathesis reports the case as an
# error of the run. A description is only text: the patch makes a failed
# one "<unknown>", as hypothesis already does when it cannot find a source.
patch_hypothesis() {
  "$venv/bin/python" - <<'PY'
import pathlib, hypothesis.internal.lambda_sources as m
path = pathlib.Path(m.__file__)
text = path.read_text()
marker = "# conformance.sh: a failed description is <unknown>"
if marker not in text:
    path.write_text(text + f"""

{marker}
_conformance_describe = _lambda_description


def _lambda_description(f, *args, **kwargs):
    try:
        return _conformance_describe(f, *args, **kwargs)
    except Exception:
        return "lambda: <unknown>"
""")
PY
}

ensure_redis
ensure_curl
ensure_pinned_venv "$venv" schemathesis "$SCHEMATHESIS_VERSION"
patch_hypothesis
echo "== building the orchestrator" >&2
cargo build -q --locked -p orchestrator-server --bin orchestrator

work=$(mktemp -d -t conformance.XXXXXX)
orch_pid=""
cleanup() {
  if [ -n "$orch_pid" ]; then
    kill -TERM "$orch_pid" 2>/dev/null || true
    wait "$orch_pid" 2>/dev/null || true
  fi
  stop_private_redis
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

start_private_redis "$work/redis"
port=$(free_port)
base="http://127.0.0.1:$port"
# The token goes through the environment and a header file, never argv.
token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
AGENTIC_API_TOKEN=$token "$target/debug/orchestrator" serve \
  --redis-url "redis://127.0.0.1:$REDIS_PORT" --namespace "conformance" \
  --listen "127.0.0.1:$port" --result-block 200ms >"$work/orchestrator.log" 2>&1 &
orch_pid=$!
for _ in $(seq 1 200); do
  curl -fsS "$base/ready" >/dev/null 2>&1 && break
  kill -0 "$orch_pid" 2>/dev/null || break
  sleep 0.05
done
if ! curl -fsS "$base/ready" >/dev/null 2>&1; then
  echo "conformance: the orchestrator did not get ready; its log:" >&2
  cat "$work/orchestrator.log" >&2
  exit 1
fi

report="$target/conformance-report"
rm -rf "$report"
mkdir -p "$report"
# schemathesis reads its headers from its config file: the token stays off argv.
cat >"$work/schemathesis.toml" <<EOF
[headers]
Authorization = "Bearer \${CONFORMANCE_TOKEN}"

# A definition is a graph, and some of its rules are beyond JSON Schema:
# stage names unique, every dependency a stage of the definition, no cycle,
# approval_timeout only with approval: true. Every per-field rule (names,
# lengths, durations, ranges, unknown fields) is in the document; a
# definition that breaks a graph rule gets 422 invalid_definition naming
# the stage, which this says is a right answer to a schema-valid body.
[[operations]]
include-operation-id = "register_definition"
[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]

# Event streams stay open while a workflow runs (the live feed of every
# change never ends): read them briefly.
[[operations]]
include-operation-id = "all_events"
request-timeout = 3

[[operations]]
include-operation-id = "workflow_events"
request-timeout = 3
max-stream-events = 20
# schemathesis builds header values of A-Z a-z 0-9 only, and an event id
# holds a '-': with no valid value to make it took "0" for one. This gives
# it the valid one; the server's 400 for a bad one is in api/formats tests.
parameters = { "header.Last-Event-ID" = "1700000000000-0" }

# A result waits up to ?wait=30s for a task no agent runs here: fewer
# generated cases keep the run within minutes (every value is still tried
# by the coverage phase's boundaries).
[[operations]]
include-operation-id = "task_result"
[operations.generation]
max-examples = 5
EOF
echo "== schemathesis $SCHEMATHESIS_VERSION: all phases, all checks, at most $max_examples cases per operation and phase" >&2
set +e
# Run from target/: schemathesis keeps its crash cache, for `st replay`,
# in ./.schemathesis.
(cd "$target" && CONFORMANCE_TOKEN=$token timeout "$hard_stop" "$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run \
  "$base/api/v1/openapi.json" \
  --checks all \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "$max_examples" \
  --seed "$seed" \
  --workers 4 \
  --request-timeout 40 \
  --max-response-time 35 \
  --generation-database none \
  --no-color \
  --report junit,ndjson --report-dir "$report" \
  ${CONFORMANCE_ARGS:-} \
  >"$report/output.txt" 2>&1)
rc=$?
set -e
cat "$report/output.txt"
# "1018 generated, 0 found 0 unique failures, 38 skipped" and the closing
# "=== No issues found in 180.2s ===" (or "=== 2 failures, 1 error ... ===").
cases=$(grep -A1 '^Test cases:' "$report/output.txt" | tail -n 1 | sed 's/^ *//' | cut -c1-200)
closing=$(grep -E '^=+ .* in [0-9.]+s =+$' "$report/output.txt" | tail -n 1 | tr -d '=' | sed 's/^ *//; s/ *$//' | cut -c1-200)
summary="cases: ${cases:-none reported}; ${closing:-no closing line}"
if [ "$rc" -ne 0 ]; then
  echo "conformance: FAILED (schemathesis exit $rc): $summary (report: $report)" >&2
  cp "$work/orchestrator.log" "$report/orchestrator.log" 2>/dev/null || true
  echo "conformance: the orchestrator's log is $report/orchestrator.log" >&2
  exit 1
fi
echo "conformance: ok: $summary"
