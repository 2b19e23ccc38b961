# Shared helpers for the scripts in this folder. Source it; do not run it.

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Installs redis-server (and redis-cli) from Debian's packages when missing.
ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "installing redis-server (apt-get)..." >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server redis-tools >/dev/null
  fi
}

# Installs libfaketime (Debian's faketime) when missing: the orchestrator's
# clock-skew test runs one replica under LD_PRELOAD=libfaketime.so.1.
ensure_faketime() {
  if [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] \
    && [ ! -e /usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1 ] \
    && [ ! -e /usr/lib/faketime/libfaketime.so.1 ]; then
    echo "installing faketime (apt-get)..." >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq faketime >/dev/null
  fi
}

# Installs Debian's chromium and chromium-driver when missing (the
# dashboard's headless-browser test drives /usr/bin/chromium through
# /usr/bin/chromedriver).
ensure_chromium() {
  if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    echo "installing chromium and chromium-driver (apt-get)..." >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
}

# Prints a TCP port on 127.0.0.1 that nothing listens on.
free_port() {
  python3 - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

# start_private_redis DIR: starts a redis-server of our own on a free port,
# data in DIR; sets REDIS_PORT and REDIS_PID. Stop it with stop_private_redis.
start_private_redis() {
  local dir=$1
  mkdir -p "$dir"
  REDIS_PORT=$(free_port)
  # --daemonize no + &: the pid is ours to stop, and the server dies with us.
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$dir" --save "" \
    --appendonly "${REDIS_AOF:-no}" --maxmemory-policy noeviction \
    --logfile "$dir/redis.log" --daemonize no >/dev/null 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 1 100); do
    if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then return 0; fi
    sleep 0.05
  done
  echo "redis-server did not start; see $dir/redis.log" >&2
  return 1
}

stop_private_redis() {
  if [ -n "${REDIS_PID:-}" ] && kill -0 "$REDIS_PID" 2>/dev/null; then
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
}

# Installs curl from Debian's packages when missing.
ensure_curl() {
  if ! command -v curl >/dev/null 2>&1; then
    echo "installing curl (apt-get)..." >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq curl >/dev/null
  fi
}

# Installs what the reference agents run when missing: git (integration),
# node (node-service projects), python3 (python-package projects) and
# bubblewrap (the jail).
ensure_agent_tools() {
  local missing=()
  command -v git >/dev/null 2>&1 || missing+=(git)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  # The jail of the agents that run projects' code (e2e, validation,
  # deployment): without it they refuse to start.
  command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (apt-get)..." >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# write_redis_url_file FILE URL: writes URL to FILE, readable by us only, for
# the binaries' --redis-url-file. A URL (with its password) never goes on a
# command line: every user of the host can read those in the process list.
write_redis_url_file() {
  # printf is a shell builtin: the URL is on no process's argv.
  (umask 077 && printf '%s\n' "$2" >"$1")
  chmod 600 "$1"
}

# redis_cli_for_url URL: sets RCLI_ARGS (host, port or socket, db, user,
# --tls) and RCLI_AUTH (the password, or empty) so that `rcli ...` runs
# redis-cli against URL with the password in REDISCLI_AUTH, not on argv
# (-a and -u would put it there).
redis_cli_for_url() {
  local parsed
  parsed=$(RCLI_URL="$1" python3 - <<'PY'
import os
from urllib.parse import urlsplit, parse_qs, unquote
u = urlsplit(os.environ["RCLI_URL"])
q = parse_qs(u.query)
args = []
if u.scheme in ("unix", "redis+unix"):
    args += ["-s", unquote(u.path)]
    password = (q.get("pass") or q.get("password") or [""])[0]
    db = (q.get("db") or [""])[0]
else:
    args += ["-h", u.hostname or "127.0.0.1", "-p", str(u.port or 6379)]
    if u.scheme == "rediss":
        args.append("--tls")
    password = unquote(u.password or "")
    db = u.path.lstrip("/")
if u.scheme not in ("unix", "redis+unix") and u.username:
    args += ["--user", unquote(u.username)]
if db:
    args += ["-n", db]
# First line: the password; then one argument per line.
print(password)
print("\n".join(args))
PY
)
  RCLI_AUTH=$(head -n 1 <<<"$parsed")
  mapfile -t RCLI_ARGS < <(tail -n +2 <<<"$parsed")
}

# rcli ARGS...: redis-cli for the URL given to redis_cli_for_url.
rcli() {
  if [ -n "${RCLI_AUTH:-}" ]; then
    REDISCLI_AUTH="$RCLI_AUTH" redis-cli --no-auth-warning "${RCLI_ARGS[@]}" "$@"
  else
    redis-cli "${RCLI_ARGS[@]}" "$@"
  fi
}

# python3 with its venv module (Debian splits ensurepip into python3-venv).
ensure_python_venv() {
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    echo "installing python3 and python3-venv (apt-get)..." >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3 python3-venv >/dev/null
  fi
}

# ensure_pinned_venv VENV PACKAGE VERSION: PACKAGE==VERSION from PyPI in its
# own venv at VENV (made when missing). A venv left half-made by a stopped
# run fails the version check and is made anew; two runs at once take turns
# (flock on VENV.lock).
ensure_pinned_venv() {
  local venv=$1 package=$2 version=$3
  _pinned() {
    "$venv/bin/python" -c "
import sys
from importlib.metadata import version
sys.exit(version('$package') != '$version')
" >/dev/null 2>&1
  }
  _pinned && return 0
  ensure_python_venv
  mkdir -p "$(dirname "$venv")"
  exec 9>"$venv.lock"
  flock 9
  if ! _pinned; then
    echo "installing $package $version into $venv (pip)..." >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "$package==$version"
  fi
  flock -u 9
  exec 9>&-
}
