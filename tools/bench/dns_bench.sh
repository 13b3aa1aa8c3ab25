#!/bin/sh
# DNS throughput and latency of the discovery plugin against dnsmasq
# serving the same records, in the same run, on the same core.
#
#   tools/bench/dns_bench.sh BUILD [--services N] [--instances M] [--seconds S] [--rate Q]
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
# Everything lives in one /tmp dir and goes at the end; only the processes
# this script started are stopped, by pid.
set -eu

usage() { echo "usage: $0 BUILD [--services N] [--instances M] [--seconds S] [--rate Q]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$1; shift
SERVICES=1000; INSTANCES=3; SECONDS_=10; RATE=20000
while [ $# -gt 0 ]; do
  case $1 in
    --services) SERVICES=$2; shift 2 ;;
    --instances) INSTANCES=$2; shift 2 ;;
    --seconds) SECONDS_=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
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

DIR=$(mktemp -d /tmp/flotilla-dns-bench-XXXXXX)
SERVER_PID=; DNSMASQ_PID=
cleanup() {
  for p in $SERVER_PID $DNSMASQ_PID; do kill "$p" 2>/dev/null || true; done
  for p in $SERVER_PID $DNSMASQ_PID; do wait "$p" 2>/dev/null || true; done
  rm -rf "$DIR"
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

throughput() {  # port -> "qps avg_ms"
  taskset -c 1 dnsperf -s 127.0.0.1 -p "$1" -d "$QUERIES" -l "$SECONDS_" -c 4 -q 200 2>&1 |
    awk '/Queries per second:/ {q=$4} /Average Latency/ {a=$4*1000} /Queries lost:/ {l=$3}
         END {printf "%.0f %.3f %s\n", q, a, l}'
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
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-9s %-6s %12s %12s %10s %10s %10s\n' server round qps avg_ms lost p50_ms p99_ms
for round in 1 2; do
  for s in flotilla dnsmasq; do
    port=$FPORT; [ $s = dnsmasq ] && port=$DPORT
    set -- $(throughput "$port"); qps=$1; avg=$2; lost=$3
    set -- $(latency "$port"); p50=$1; p99=$2
    printf '%-9s %-6s %12s %12s %10s %10s %10s\n' "$s" "$round" "$qps" "$avg" "$lost" "$p50" "$p99"
    echo "$s $qps" >>"$DIR/qps"
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
awk '{s[$1]+=$2; n[$1]++} END {f=s["flotilla"]/n["flotilla"]; d=s["dnsmasq"]/n["dnsmasq"];
     printf "mean qps: flotilla %.0f, dnsmasq %.0f, ratio %.2fx (target >= 2x)\n", f, d, f/d}' "$DIR/qps"
