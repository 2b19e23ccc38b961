#!/usr/bin/env bash
# The idle benchmark of the worker runtime: what an idle fleet costs Redis.
#
# Starts its own redis-server on a free port, runs --instances idle worker
# instances (default 1000) in --processes processes (default 10; the instances
# of one process share its two connections: the multiplexed one and their
# doorbell's), with default settings (--heartbeat D overrides that one), waits
# until they settle (35 s: past the start-up traffic and into the steady
# rhythm of 30 s reads and lease attempts), then measures over --seconds
# (default 30, one read period)
# the Redis CPU per second (INFO cpu: used_cpu_sys + used_cpu_user) and the
# connections (connected_clients, less this script's own). Then, with the
# workers gone, puts 200,000 entries pending at a consumer that is gone and
# measures the Redis CPU per reclaim call (INFO commandstats usec_per_call).
# Prints one JSON object on stdout; progress and the commands an idle
# instance sends per second go to stderr.
#
#   scripts/idle-bench.sh [--instances N] [--processes P] [--seconds S] [--pending N] [--heartbeat D]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

instances=1000
processes=10
seconds=30
pending=200000
heartbeat=()
while [ $# -gt 0 ]; do
  case "$1" in
    --instances) instances=$2; shift 2 ;;
    --processes) processes=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --pending) pending=$2; shift 2 ;;
    --heartbeat) heartbeat=(--heartbeat "$2"); shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--instances N] [--processes P] [--seconds S] [--pending N] [--heartbeat D]" >&2; exit 64 ;;
  esac
done
for v in "$instances" "$processes" "$seconds" "$pending"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [--instances N] [--processes P] [--seconds S] [--pending N] (positive whole numbers)" >&2; exit 64; }
done
[ "$processes" -le "$instances" ] || processes=$instances

ensure_redis
cargo build -q -p agent-sdk --example idle_bench >&2
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
bin="$target_dir/debug/examples/idle_bench"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  stop_private_redis
  rm -rf "$work"
}
trap cleanup EXIT
start_private_redis "$work/redis"
redis-cli -p "$REDIS_PORT" config set maxclients 20000 >/dev/null
url="redis://127.0.0.1:$REDIS_PORT"
rc() { redis-cli -p "$REDIS_PORT" "$@"; }
info_field() { rc info "$1" | tr -d '\r' | awk -F: -v k="$2" '$1 == k { print $2 }'; }
cpu_us() {
  rc info cpu | tr -d '\r' | awk -F: '$1 == "used_cpu_sys" || $1 == "used_cpu_user" { s += $2 } END { printf "%.0f", s * 1e6 }'
}

per=$(( instances / processes ))
extra=$(( instances % processes ))
echo "starting $instances idle instances in $processes processes..." >&2
for i in $(seq 1 "$processes"); do
  n=$per
  [ "$i" -le "$extra" ] && n=$(( n + 1 ))
  RUST_LOG=warn "$bin" workers --redis-url "$url" --instances "$n" "${heartbeat[@]}" >"$work/w$i.log" 2>&1 &
  pids+=($!)
done

# Settled: every instance registered and connected, then a little longer
# for the start-up traffic (group creation, lease attempts) to pass.
want=$(( 2 * processes ))
deadline=$(( SECONDS + 120 ))
while :; do
  clients=$(info_field clients connected_clients)
  # The type's fleet: one entry per instance, written by its heartbeat.
  registered=$(rc hlen 'idlebench:agent:{idler}:fleet')
  if [ "$(( clients - 1 ))" -ge "$want" ] && [ "$registered" -ge "$instances" ]; then break; fi
  if [ $SECONDS -ge $deadline ]; then
    echo "instances did not settle: $clients clients, $registered registered (want $want, $instances)" >&2
    tail -n 5 "$work"/w*.log >&2
    exit 1
  fi
  sleep 1
done
sleep 35

rc config resetstat >/dev/null
c0=$(cpu_us)
t0=$(date +%s%N)
sleep "$seconds"
c1=$(cpu_us)
t1=$(date +%s%N)
stats=$(rc info commandstats | tr -d '\r')
connections=$(( $(info_field clients connected_clients) - 1 ))

elapsed_s=$(python3 -c "print(($t1 - $t0) / 1e9)")
echo "commands per second per idle instance:" >&2
echo "$stats" | python3 -c "
import sys
for line in sys.stdin:
    if not line.startswith('cmdstat_'): continue
    name, rest = line.strip().split(':', 1)
    kv = dict(x.split('=') for x in rest.split(','))
    print(f\"  {name[8:]:<14} {int(kv['calls']) / $elapsed_s / $instances:10.4f}/s  {float(kv['usec_per_call']):8.2f} us/call\", file=sys.stderr)
"

for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()

echo "reclaim with $pending pending entries..." >&2
rc flushall >/dev/null
reclaim=$("$bin" reclaim --redis-url "$url" --pending "$pending")

python3 - "$instances" "$processes" "$c0" "$c1" "$t0" "$t1" "$connections" "$reclaim" <<'PY'
import json, sys
instances, processes, c0, c1, t0, t1, connections = map(int, sys.argv[1:8])
reclaim = json.loads(sys.argv[8])
cpu_per_s = (c1 - c0) / ((t1 - t0) / 1e9)
print(json.dumps({
    "instances": instances,
    "processes": processes,
    "redis_cpu_us_per_s": round(cpu_per_s, 1),
    "redis_cpu_us_per_s_per_instance": round(cpu_per_s / instances, 2),
    "connections": connections,
    "connections_per_process": round(connections / processes, 2),
    "connections_per_instance": round(connections / instances, 3),
    "reclaim_us_per_call_at_200k_pending": reclaim["reclaim_us_per_call"],
    "reclaim_pending": reclaim["pending"],
    "reclaim_scan_only_us_per_call": reclaim["reclaim_scan_only_us_per_call"],
    "old_xpending_idle_us_per_call": reclaim["old_xpending_idle_us_per_call"],
}))
PY
