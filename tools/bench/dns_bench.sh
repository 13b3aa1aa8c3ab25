#!/bin/sh
# DNS throughput and latency of the discovery plugin against dnsmasq
# serving the same records, in the same run, on the same core.
#
#   tools/bench/dns_bench.sh BUILD [--services N] [--instances M] [--seconds S] [--rate Q]
#                                  [--cpu-limit PCT]
#
# Flotilla: BUILD/tools/bench/dns_bench_server (store-local and the
# discovery plugin through the real plugin host) with N services (default
# 1000) of M passing instances (default 3). dnsmasq: the same A records
# from a hosts file. Each server is pinned to CPU 0, dnsperf to CPU 1.
# Rounds alternate flotilla, dnsmasq, flotilla, dnsmasq:
#   - throughput: dnsperf at full speed (-q 200 outstanding) for S seconds
#     (default 10): queries per second, average latency;
#   - latency: dnsperf -v at a fixed Q queries per second (default 20000)
#     for S/2 seconds: p50 and p99 of every query's latency.
# On 2 CPUs one dnsperf saturates its core before a fast server does, so
# its qps says little about the server. --cpu-limit PCT gives each server
# the same budget, PCT% of one core (a cpu cgroup of its own, CFS quota),
# small enough that the servers, not dnsperf, are the bound: the qps is
# then each server's throughput at that budget.
# Everything lives in one /tmp dir and goes at the end; only the processes
# this script started are stopped, by pid.
set -eu

usage() { echo "usage: $0 BUILD [--services N] [--instances M] [--seconds S] [--rate Q] [--cpu-limit PCT]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$1; shift
SERVICES=1000; INSTANCES=3; SECONDS_=10; RATE=20000; CPU_LIMIT=
while [ $# -gt 0 ]; do
  case $1 in
    --services) SERVICES=$2; shift 2 ;;
    --instances) INSTANCES=$2; shift 2 ;;
    --seconds) SECONDS_=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --cpu-limit) CPU_LIMIT=$2; shift 2 ;;
    *) usage ;;
  esac
done
SERVER=$BUILD/tools/bench/dns_bench_server
[ -x "$SERVER" ] || { echo "$SERVER is not built (ninja -C $BUILD tools/bench/dns_bench_server)" >&2; exit 1; }
for t in dnsperf dnsmasq taskset python3; do
  command -v $t >/dev/null 2>&1 || [ -x /usr/sbin/$t ] || { echo "$t is not installed" >&2; exit 1; }
done
DNSMASQ=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)
CPUS=$(nproc)
[ "$CPUS" -ge 2 ] || { echo "needs 2 CPUs (server on 0, dnsperf on 1)" >&2; exit 1; }

case $CPU_LIMIT in
  '') ;;
  *[!0-9]*) usage ;;
  *) [ "$CPU_LIMIT" -ge 1 ] && [ "$CPU_LIMIT" -le 100 ] || usage ;;
esac
# cgroup v1's cpu controller, or v2's unified tree.
if [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then CG_ROOT=/sys/fs/cgroup/cpu; CG_V=1
else CG_ROOT=/sys/fs/cgroup; CG_V=2; fi
CG_PREFIX=$CG_ROOT/flotilla-dns-bench-$$
[ -z "$CPU_LIMIT" ] || [ -w "$CG_ROOT" ] || { echo "--cpu-limit needs root and a cpu cgroup" >&2; exit 1; }

DIR=$(mktemp -d /tmp/flotilla-dns-bench-XXXXXX)
SERVER_PID=; DNSMASQ_PID=
cleanup() {
  for p in $SERVER_PID $DNSMASQ_PID; do kill "$p" 2>/dev/null || true; done
  for p in $SERVER_PID $DNSMASQ_PID; do wait "$p" 2>/dev/null || true; done
  for g in "$CG_PREFIX"-flotilla "$CG_PREFIX"-dnsmasq; do [ ! -d "$g" ] || rmdir "$g" 2>/dev/null || true; done
  rm -rf "$DIR"
}
# limit NAME PID: PID in a cgroup of its own with CPU_LIMIT% of one core.
limit() {
  [ -n "$CPU_LIMIT" ] || return 0
  g=$CG_PREFIX-$1; mkdir "$g"
  if [ $CG_V = 1 ]; then
    echo 100000 >"$g/cpu.cfs_period_us"; echo $((CPU_LIMIT * 1000)) >"$g/cpu.cfs_quota_us"
  else
    grep -qw cpu "$CG_ROOT/cgroup.subtree_control" || echo +cpu >"$CG_ROOT/cgroup.subtree_control"
    echo "$((CPU_LIMIT * 1000)) 100000" >"$g/cpu.max"
  fi
  echo "$2" >"$g/cgroup.procs"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket
u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind(("127.0.0.1",0)); p=u.getsockname()[1]
t=socket.socket(); t.bind(("127.0.0.1",p)); print(p)'
}
FPORT=$(free_port); DPORT=$(free_port)
[ "$FPORT" != "$DPORT" ] || DPORT=$(free_port)

taskset -c 0 "$SERVER" --dir "$DIR/flotilla" --port "$FPORT" --services "$SERVICES" \
  --instances "$INSTANCES" >"$DIR/server.out" 2>"$DIR/server.err" &
SERVER_PID=$!
limit flotilla "$SERVER_PID"
i=0
until grep -q '^ready' "$DIR/server.out" 2>/dev/null; do
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "dns_bench_server failed:" >&2; cat "$DIR/server.err" >&2; exit 1; }
  i=$((i + 1)); [ $i -lt 600 ] || { echo "dns_bench_server not ready after 60 s" >&2; exit 1; }
  sleep 0.1
done

# dnsmasq reads its hosts file after dropping to user nobody.
chmod 755 "$DIR" "$DIR/flotilla"; chmod 644 "$DIR/flotilla/hosts"
taskset -c 0 "$DNSMASQ" -k --no-resolv --no-hosts --addn-hosts="$DIR/flotilla/hosts" \
  --listen-address=127.0.0.1 --bind-interfaces --port="$DPORT" --pid-file="$DIR/dnsmasq.pid" \
  --local=/flotilla/ --log-facility="$DIR/dnsmasq.log" 2>"$DIR/dnsmasq.err" &
DNSMASQ_PID=$!
limit dnsmasq "$DNSMASQ_PID"
sleep 0.5
kill -0 "$DNSMASQ_PID" 2>/dev/null || { echo "dnsmasq failed:" >&2; cat "$DIR/dnsmasq.err" >&2; exit 1; }

QUERIES=$DIR/flotilla/queries
# Both must answer every query with NOERROR and the same number of records.
check() {
  out=$(taskset -c 1 dnsperf -s 127.0.0.1 -p "$1" -d "$QUERIES" -n 1 2>&1)
  echo "$out" | grep -q "Response codes:       NOERROR [0-9]* (100.00%)" ||
    { echo "$2 did not answer every query with NOERROR:" >&2; echo "$out" >&2; exit 1; }
}
check "$FPORT" flotilla
check "$DPORT" dnsmasq

# CPU ticks a process has used (user + system), and CPU 1's busy and
# total ticks: a round's share of a core for the server, and whether
# dnsperf (alone on CPU 1) was the bound.
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
cpu1_ticks() { awk '$1 == "cpu1" {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
TCK=$(getconf CLK_TCK)

throughput() {  # port pid -> "qps avg_ms lost server_cpu% cpu1_busy%"
  t0=$(proc_ticks "$2"); set -- "$1" "$2" $(cpu1_ticks)
  taskset -c 1 dnsperf -s 127.0.0.1 -p "$1" -d "$QUERIES" -l "$SECONDS_" -c 4 -q 200 2>&1 |
    awk '/Queries per second:/ {q=$4} /Average Latency/ {a=$4*1000} /Queries lost:/ {l=$3}
         END {printf "%.0f %.3f %s ", q, a, l}'
  t1=$(proc_ticks "$2"); set -- "$@" $(cpu1_ticks)
  awk -v t="$((t1 - t0))" -v hz="$TCK" -v s="$SECONDS_" -v b0="$3" -v a0="$4" -v b1="$5" -v a1="$6" \
    'BEGIN {printf "%.0f %.0f\n", 100 * t / hz / s, (a1 > a0) ? 100 * (b1 - b0) / (a1 - a0) : 0}'
}
latency() {  # port -> "p50_ms p99_ms lost"
  half=$((SECONDS_ / 2)); [ $half -ge 1 ] || half=1
  taskset -c 1 dnsperf -s 127.0.0.1 -p "$1" -d "$QUERIES" -l "$half" -Q "$RATE" -v 2>/dev/null |
    awk '/^> / {print $5 * 1000}' | sort -n |
    awk '{v[NR]=$1} END {if (NR == 0) {print "- - -"; exit}
         i50=int(NR*0.50); if (i50<1) i50=1; i99=int(NR*0.99); if (i99<1) i99=1;
         printf "%.3f %.3f %d\n", v[i50], v[i99], NR}'
}

echo "records: $SERVICES services x $INSTANCES instances; servers on CPU 0, dnsperf on CPU 1 ($CPUS CPUs); $(date -u +%FT%TZ)"
[ -z "$CPU_LIMIT" ] || echo "each server limited to $CPU_LIMIT% of one core (cgroup v$CG_V CFS quota)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
# srv_cpu: the server's share of its core during the throughput round;
# cpu1: how busy dnsperf's core was (near 100: dnsperf, not the server, set
# the qps); qps/core: qps per core-second the server used.
printf '%-9s %-6s %10s %9s %7s %8s %5s %10s %8s %8s\n' \
  server round qps avg_ms lost srv_cpu cpu1 qps/core p50_ms p99_ms
for round in 1 2; do
  for s in flotilla dnsmasq; do
    port=$FPORT; pid=$SERVER_PID
    [ $s = dnsmasq ] && { port=$DPORT; pid=$DNSMASQ_PID; }
    set -- $(throughput "$port" "$pid"); qps=$1; avg=$2; lost=$3; cpu=$4; cpu1=$5
    per=$(awk -v q="$qps" -v c="$cpu" 'BEGIN {printf "%.0f", (c > 0 ? q * 100 / c : 0)}')
    set -- $(latency "$port"); p50=$1; p99=$2
    printf '%-9s %-6s %10s %9s %7s %7s%% %4s%% %10s %8s %8s\n' \
      "$s" "$round" "$qps" "$avg" "$lost" "$cpu" "$cpu1" "$per" "$p50" "$p99"
    echo "$s $qps $per" >>"$DIR/qps"
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
awk '{s[$1]+=$2; c[$1]+=$3; n[$1]++} END {f=s["flotilla"]/n["flotilla"]; d=s["dnsmasq"]/n["dnsmasq"];
     fc=c["flotilla"]/n["flotilla"]; dc=c["dnsmasq"]/n["dnsmasq"];
     printf "mean qps: flotilla %.0f, dnsmasq %.0f, ratio %.2fx (target >= 2x)\n", f, d, f/d;
     printf "mean qps per server core-second: flotilla %.0f, dnsmasq %.0f, ratio %.2fx\n", fc, dc, (dc > 0 ? fc / dc : 0)}' "$DIR/qps"
