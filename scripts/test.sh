#!/usr/bin/env bash
# The project's test command (and what CI runs): installs what the tests need
# when it is missing, then checks formatting, lints, and runs the whole suite.
# Every behaviour test starts its own redis-server on a free port.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_redis
ensure_curl
# The agents' tests run real git, node, python3 and cargo.
ensure_agent_tools
# The dashboard's test drives a real headless Chromium.
ensure_chromium
# The orchestrator's clock-skew test runs a replica under libfaketime.
ensure_faketime
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== the layout: file sizes and import cycles between modules"
python3 scripts/layout-check.py . 700
echo "== the OpenAPI document (openapi-spec-validator, installed into target/ when missing)"
bash scripts/openapi-check.sh
bash scripts/conformance.sh
echo "== doc tests"
# First, so that a failure of the suite is among the last lines printed.
cargo test --workspace --doc --locked
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --locked --no-fail-fast
else
  cargo test --workspace --all-targets --locked --no-fail-fast
fi
echo "== the pipeline end to end: five agents, every template, failures, secrets, rollback"
bash scripts/sdlc-checks.sh
bash scripts/secrets-check.sh
echo "== the soak, short: the whole system at a steady rate with kill -9, exact accounting, memory flat"
bash scripts/soak.sh --short
echo "== scripts/demo.sh (the README's first command)"
demo_data=$(mktemp -d -t agentic-demo.XXXXXX)
AGENTIC_DATA="$demo_data" bash scripts/demo.sh >/dev/null
rm -rf "$demo_data"
echo "demo: ok"
echo "== workflow demo with stand-in agents"
bash scripts/workflow-demo.sh >/dev/null
bash scripts/workflow-demo.sh --fail >/dev/null
echo "workflow demo: ok"
