#!/usr/bin/env bash
# Validates the HTTP API's OpenAPI document with openapi-spec-validator
# (PyPI), installed into a venv under target/ when missing.
#
#   scripts/openapi-check.sh        build the orchestrator, validate what
#                                   `orchestrator openapi` prints
#   scripts/openapi-check.sh FILE   validate FILE (orchestrator/tests/openapi.rs
#                                   hands it the document it built)
#
# Exits non-zero when the document is invalid or cannot be made.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

VALIDATOR_VERSION=0.9.0
target=${CARGO_TARGET_DIR:-target}
venv="$target/openapi-venv"

doc=${1:-}
tmp=""
trap '[ -z "$tmp" ] || rm -f "$tmp"' EXIT
if [ -z "$doc" ]; then
  echo "== building the orchestrator" >&2
  cargo build -q --locked -p orchestrator-server --bin orchestrator
  tmp=$(mktemp -t openapi.XXXXXX.json)
  "$target/debug/orchestrator" openapi >"$tmp"
  doc=$tmp
fi
ensure_pinned_venv "$venv" openapi-spec-validator "$VALIDATOR_VERSION"
"$venv/bin/python" - "$doc" <<'PY'
import sys

import openapi_spec_validator as osv
from openapi_spec_validator.readers import read_from_filename

path = sys.argv[1]
try:
    spec, _ = read_from_filename(path)
except Exception as e:  # not JSON at all
    print(f"openapi-check: {path}: cannot read: {e}", file=sys.stderr)
    sys.exit(1)
if not isinstance(spec, dict):
    print(f"openapi-check: {path}: not an OpenAPI document", file=sys.stderr)
    sys.exit(1)
version = str(spec.get("openapi", spec.get("swagger", "")))
validator = {
    "3.0": osv.OpenAPIV30SpecValidator,
    "3.1": osv.OpenAPIV31SpecValidator,
    "3.2": getattr(osv, "OpenAPIV32SpecValidator", None),
}.get(version[:3])
errors = []
try:
    if validator is None:
        osv.validate(spec)
    else:
        for e in validator(spec).iter_errors():
            errors.append(e)
            if len(errors) == 50:
                break
except Exception as e:  # an unresolvable $ref and the like stop the walk
    errors.append(e)
if errors:
    for e in errors:
        where = "/".join(str(p) for p in getattr(e, "absolute_path", None) or [])
        message = getattr(e, "message", None) or str(e)
        print(f"openapi-check: INVALID at /{where}: {message[:300]}", file=sys.stderr)
    print(f"openapi-check: {path}: {len(errors)} error(s)", file=sys.stderr)
    sys.exit(1)
ops = sum(
    1
    for item in spec.get("paths", {}).values()
    for method in item
    if method in ("get", "put", "post", "delete", "options", "head", "patch", "trace")
)
print(
    f"openapi-check: valid OpenAPI {version}: "
    f"{len(spec.get('paths', {}))} paths, {ops} operations, "
    f"{len(spec.get('components', {}).get('schemas', {}))} schemas"
)
PY
