#!/usr/bin/env bash
# Runs the benchmark (agent-sdk/examples/bench.rs) against a private,
# throw-away redis-server and prints its one JSON object on stdout.
#
#   scripts/bench.sh [bench flags...]    e.g. scripts/bench.sh --tasks 50000
#
# Progress goes to stderr. Exits non-zero when the bench does (its JSON then
# says "ok": false). The Redis runs without persistence (--save "",
# --appendonly no) and with maxmemory-policy noeviction, on a free port
# (never 6379), in a temporary directory removed on exit.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

log() { printf 'bench.sh: %s\n' "$*" >&2; }

if ! command -v redis-server >/dev/null 2>&1; then
    log "redis-server missing; installing it"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update >&2
    $sudo apt-get install -y redis-server >&2
fi

log "building (release)"
cargo build --release -p agent-sdk --example bench --bin fault-agent >&2

target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
bench_bin="$target_dir/release/examples/bench"
worker_bin="$target_dir/release/fault-agent"

# A free TCP port on 127.0.0.1, other than 6379.
free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - <<'EOF'
import socket
while True:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    if port != 6379:
        print(port)
        break
EOF
        return
    fi
    local port
    for port in $(seq 16380 16980); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    log "no free port found"
    return 1
}

work_dir="$(mktemp -d -t agentic-bench.XXXXXX)"
redis_pid=""
cleanup() {
    if [ -n "$redis_pid" ] && kill -0 "$redis_pid" 2>/dev/null; then
        kill -TERM "$redis_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$redis_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    rm -rf "$work_dir"
}
trap cleanup EXIT

port=""
for _ in 1 2 3 4 5; do
    port="$(free_port)"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$work_dir" \
        --save "" --appendonly no --maxmemory-policy noeviction \
        --logfile "$work_dir/redis.log" --daemonize no &
    redis_pid=$!
    # Wait until it answers (or died: the port was taken meanwhile).
    for _ in $(seq 1 50); do
        if redis-cli -p "$port" ping >/dev/null 2>&1; then break; fi
        kill -0 "$redis_pid" 2>/dev/null || break
        sleep 0.1
    done
    if redis-cli -p "$port" ping >/dev/null 2>&1; then break; fi
    log "redis-server did not start on port $port; retrying"
    kill -KILL "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=""
done
if [ -z "$redis_pid" ]; then
    log "cannot start redis-server"; cat "$work_dir/redis.log" >&2 || true
    exit 1
fi
log "redis-server pid $redis_pid on port $port ($(redis-server --version | awk '{print $3}'))"

status=0
"$bench_bin" --redis-url "redis://127.0.0.1:$port" --worker-bin "$worker_bin" "$@" || status=$?
exit "$status"
