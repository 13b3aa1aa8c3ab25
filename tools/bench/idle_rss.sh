#!/usr/bin/env bash
# Idle resident memory of flotillad: with the store only (baseline), and with
# every plugin this build made. Target: under 15 MiB with all plugins.
# With store-etcd built, also a cluster node: store-etcd against a real etcd
# started here (free loopback ports, a temporary data directory, killed by
# pid), alone and with every other plugin. Target: under 20 MiB.
#   tools/bench/idle_rss.sh BUILD_DIR
# FLOTILLA_RSS_SMAPS=DIR keeps a copy of each daemon's /proc/PID/smaps (and
# its threads' names) in DIR, named after the measurement, for a breakdown
# per library (tools/bench/smaps_by_mapping.sh).
set -euo pipefail
# net-overlay among "every plugin" makes a bridge, an nft table and routes
# when it loads: the benchmark runs in a network namespace of its own, so
# none of that touches this machine's network and all of it goes with the
# namespace (it once left flotilla0, table inet flotilla and a wireguard-go
# on the host). The mesh is off: wireguard-go would outlive the daemon.
if [ -z "${FLOTILLA_RSS_NETNS:-}" ]; then
  [ "$(id -u)" = 0 ] || { echo "idle_rss.sh: needs root (a network namespace of its own)" >&2; exit 1; }
  exec env FLOTILLA_RSS_NETNS=1 unshare -n -- "$0" "$@"
fi
ip link set lo up
# A stand-in underlay with a default route, as a host has (net-overlay
# finds its underlay by the default route).
ip link add rssul0 type veth peer name rssul1
ip addr add 192.0.2.1/24 dev rssul0
ip link set rssul0 up
ip link set rssul1 up
ip route add default via 192.0.2.254 dev rssul0 onlink
build=$(cd "${1:-build}" && pwd)
tmp=$(mktemp -d /tmp/flotilla-rss-XXXXXX)
pid=""
etcd_pid=""
status=0
cleanup() {
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
  [ -n "$etcd_pid" ] && kill -KILL "$etcd_pid" 2>/dev/null
  wait 2>/dev/null; rm -rf "$tmp"
}
trap cleanup EXIT

plugin_tables() {  # every flotilla-*.so under plugins/ of the build
  find "$build/plugins" -name 'flotilla-*.so' | sort | while read -r so; do
    name=$(basename "$so" .so); name=${name#flotilla-}
    # One store per daemon: store-local here unless $1 names another.
    case "$name" in store-*) [ "$name" != "${1:-store-local}" ] && continue;; esac
    printf '[plugin.%s]\npath = "%s"\n' "$name" "$so"
    # The runtime's per-container monitor lives next to it in the build tree.
    [ "$name" = runtime-runc ] && printf 'shim = "%s"\n' "$build/plugins/runtime-runc/shim/flotilla-runc-shim"
    [ "$name" = store-etcd ] && printf 'endpoints = ["%s"]\n' "$etcd_url"
    [ "$name" = net-overlay ] && printf 'wireguard = "off"\n'
    echo
  done
}

measure() {  # measure LABEL PLUGIN_TABLES
  local label=$1 tables=$2 dir="$tmp/$RANDOM"
  mkdir -p "$dir"
  cat > "$dir/flotillad.toml" <<CFG
[node]
name = "rss"
data_dir = "$dir/data"
[api]
socket = "$dir/api.sock"
[log]
level = "warn"
$tables
CFG
  "$build/core/flotillad" --config "$dir/flotillad.toml" >"$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do [ -S "$dir/api.sock" ] && break; sleep 0.05; done
  [ -S "$dir/api.sock" ] || { kill -KILL "$pid" 2>/dev/null; cat "$dir/log" >&2; echo "flotillad did not start" >&2; exit 1; }
  sleep 3  # idle: let start-up allocations settle
  local rss plugins
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
  plugins=$(grep -c '^\[plugin\.' "$dir/flotillad.toml" || true)
  awk -v l="$label" -v p="$plugins" -v r="$rss" 'BEGIN { printf "  %-36s %3d plugins  %6.1f MiB\n", l, p, r / 1024 }' >&2
  if [ -n "${3:-}" ]; then  # where it goes: anonymous against file pages, the largest mappings, threads
    awk '/^Rss:|^Anonymous:|^Pss_Anon:|^Pss_File:|^Shared_Clean:|^Private_Clean:|^Private_Dirty:/ { printf "      %-15s %6.1f MiB\n", $1, $2 / 1024 }' "/proc/$pid/smaps_rollup" >&2
    awk '/^[0-9a-f]+-[0-9a-f]+ / { name = ($6 == "" ? "[anon]" : $6) } /^Rss:/ { rss[name] += $2 } END { for (n in rss) if (rss[n] >= 256) printf "%8d %s\n", rss[n], n }' "/proc/$pid/smaps" |
      sort -rn | head -12 | awk '{ n = $2; sub(".*/", "", n); printf "      %6.1f MiB  %s\n", $1 / 1024, n }' >&2
    echo "      threads: $(ls "/proc/$pid/task" | wc -l) ($(cat /proc/$pid/task/*/comm | sort | uniq -c | awk '{ printf "%s%s x%d", sep, $2, $1; sep = ", " }'))" >&2
  fi
  if [ -n "${FLOTILLA_RSS_SMAPS:-}" ]; then
    mkdir -p "$FLOTILLA_RSS_SMAPS"
    local keep="$FLOTILLA_RSS_SMAPS/$(echo "$label" | tr -c 'a-z0-9\n' '-' | tr -s '-')"
    cat "/proc/$pid/smaps" > "$keep.smaps"
    cat /proc/$pid/task/*/comm > "$keep.threads"
  fi
  kill -TERM "$pid"; wait "$pid" || true; pid=""
  echo "$rss"
}

echo "flotillad idle RSS"
base=$(measure "store-local only (baseline)" "$(printf '[plugin.store-local]\npath = "%s"\n' "$build/plugins/store-local/flotilla-store-local.so")")
all=$(measure "every built plugin" "$(plugin_tables)" detail)
limit=$((15 * 1024))
if [ "$all" -lt "$limit" ]; then
  echo "  target < 15 MiB with all plugins: met ($((all / 1024)) MiB; +$(((all - base) / 1024)) MiB over the baseline)"
else
  echo "  target < 15 MiB with all plugins: MISSED ($((all / 1024)) MiB)"
  status=1
fi

etcd_so="$build/plugins/store-etcd/flotilla-store-etcd.so"
if [ -f "$etcd_so" ] && [ -x /usr/bin/etcd ]; then
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  cport=$(free_port); pport=$(free_port)
  etcd_url="http://127.0.0.1:$cport"
  /usr/bin/etcd --name rss --data-dir "$tmp/etcd" --listen-client-urls "$etcd_url" \
    --advertise-client-urls "$etcd_url" --listen-peer-urls "http://127.0.0.1:$pport" \
    --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "rss=http://127.0.0.1:$pport" --logger zap --log-outputs stderr \
    >"$tmp/etcd.log" 2>&1 &
  etcd_pid=$!
  for _ in $(seq 200); do grep -q "serving client traffic" "$tmp/etcd.log" && break; sleep 0.05; done
  etcd_only=$(measure "store-etcd only" "$(printf '[plugin.store-etcd]\npath = "%s"\nendpoints = ["%s"]\n' "$etcd_so" "$etcd_url")")
  etcd_all=$(measure "every built plugin, store-etcd" "$(plugin_tables store-etcd)" detail)
  echo "  store-etcd over store-local: +$(((etcd_only - base) / 1024)).$(( ((etcd_only - base) % 1024) * 10 / 1024 )) MiB (gRPC, protobuf, the channel and its threads)"
  if [ "$etcd_all" -lt $((20 * 1024)) ]; then
    echo "  target < 20 MiB for a cluster node with store-etcd: met ($((etcd_all / 1024)) MiB)"
  else
    echo "  target < 20 MiB for a cluster node with store-etcd: MISSED ($((etcd_all / 1024)) MiB)"
    status=1
  fi
fi
exit "$status"
