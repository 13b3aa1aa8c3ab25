# tools/bench/lib.sh: what the daemon benchmarks (container_start.sh,
# security_start.sh, registry_pull.sh) share, sourced by each:
#   . "$(dirname "$0")/lib.sh"
# Shell: bench_die, bench_require, bench_now, bench_median, bench_quantile,
# bench_start_daemon / bench_stop_daemon (the daemon's pid is the global
# `pid`, so that the caller's EXIT trap sees it), bench_purge_jobs,
# bench_delete_containers, bench_remove_leftovers.
# Python: `bench_py` prints a prelude (UConn, connect, req, status_of, q) to
# put before a script read from stdin:
#   { bench_py; cat <<'PY'
#   ...
#   PY
#   } | python3 - ARGS
# Nothing here runs on its own; every function kills only the pids it is
# given or the daemon it started.

bench_name=$(basename "$0")
pid=""

bench_die() { echo "$bench_name: $*" >&2; exit 1; }

# bench_require WHY_ROOT TOOL...: root and the tools the benchmark runs.
bench_require() {
  local why=$1; shift
  [ "$(id -u)" = 0 ] || bench_die "needs root ($why)"
  local t
  for t in "$@"; do command -v "$t" >/dev/null || bench_die "$t is required"; done
}

bench_now() { date +%s.%N; }

# bench_median X...: the median of the numbers (the mean of the middle two
# for an even count).
bench_median() {
  printf '%s\n' "$@" | sort -g |
    awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'
}

# bench_quantile P X...: the P quantile (0..1), linear between neighbours,
# as the Python prelude's q() computes it.
bench_quantile() {
  local p=$1; shift
  printf '%s\n' "$@" | sort -g |
    awk -v p="$p" '{a[NR-1]=$1} END {k = (NR - 1) * p; f = int(k); c = (f + 1 < NR) ? f + 1 : NR - 1
                                     print a[f] + (a[c] - a[f]) * (k - f)}'
}

# bench_start_daemon FLOTILLAD CONFIG SOCK LOG: starts flotillad, sets pid,
# waits (10 s at most) for its API socket; fails with the log's tail.
bench_start_daemon() {
  local bin=$1 config=$2 sock=$3 log=$4
  "$bin" --config "$config" >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 200); do [ -S "$sock" ] && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  [ -S "$sock" ] || { tail -n 20 "$log" >&2; echo "$bench_name: flotillad did not start" >&2; return 1; }
}

# bench_stop_daemon: TERM, 10 s, then KILL, for the daemon bench_start_daemon
# started.
bench_stop_daemon() {
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}

# bench_purge_jobs SOCK OCI_ROOT: deletes every job of the daemon with
# ?purge=true and waits (10 s at most) until it removed its containers.
bench_purge_jobs() {
  local sock=$1 root=$2 j
  [ -n "$pid" ] && [ -S "$sock" ] || return 0
  for j in $(curl -s --unix-socket "$sock" http://x/v1/jobs |
             jq -r '(.jobs? // .)[]?.name? // empty' 2>/dev/null); do
    curl -s -o /dev/null -X DELETE --unix-socket "$sock" "http://x/v1/jobs/$j?purge=true"
  done
  for _ in $(seq 100); do [ -z "$(ls -A "$root" 2>/dev/null)" ] && break; sleep 0.1; done
}

# bench_delete_containers RUNTIME ROOT...: `RUNTIME --root ROOT delete
# --force` of whatever is still in each of our own OCI roots, by id.
bench_delete_containers() {
  local bin=$1 r c; shift
  for r in "$@"; do
    [ -d "$r" ] || continue
    for c in "$r"/*; do [ -e "$c" ] && "$bin" --root "$r" delete --force "$(basename "$c")" >/dev/null 2>&1; done
  done
  return 0
}

# bench_remove_leftovers TMP CGROUP_PARENT...: the shims our daemon started
# (by the pid each recorded under TMP), our mounts under TMP deepest first,
# our cgroups; then TMP itself.
bench_remove_leftovers() {
  local tmp=$1 s p m cg; shift
  find "$tmp" -name shim-state.json 2>/dev/null | while read -r s; do
    p=$(jq -r '.shim_pid // 0' "$s" 2>/dev/null); [ "${p:-0}" -gt 0 ] && kill -KILL "$p" 2>/dev/null
  done
  awk -v t="$tmp" '$5 ~ "^"t {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null
  done
  for cg in "$@"; do
    for m in $(awk '$9 ~ /^cgroup2?$/ {print $5}' /proc/self/mountinfo); do
      [ -d "$m/$cg" ] && find "$m/$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
  done
  rm -rf "$tmp"
  return 0
}

# The Python prelude: an HTTP connection over the API's Unix socket
# (connect(PATH) once, then req()), an allocation's status, and q(), the
# quantile bench_quantile computes.
bench_py() {
  cat <<'PY'
import glob, http.client, json, os, socket, statistics, subprocess, sys, time

class UConn(http.client.HTTPConnection):
    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout); self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); self.sock.connect(self.path)

conn = None
def connect(path):
    global conn
    conn = UConn(path)

def req(method, path, body=None, ctype=None):
    conn.request(method, path, body=body, headers={"Content-Type": ctype} if ctype else {})
    r = conn.getresponse(); return r.status, r.read()

def status_of(a):
    s = a.get("status")
    return s.get("status", "") if isinstance(s, dict) else a.get("client_status", s or "")

def q(xs, p):
    xs = sorted(xs); k = (len(xs) - 1) * p; f = int(k); c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)
PY
}
