#!/usr/bin/env bash
# Idle resident memory of flotillad: with the store only (baseline), and with
# every plugin this build made. Target: under 15 MiB with all plugins.
#   tools/bench/idle_rss.sh BUILD_DIR
set -euo pipefail
build=$(cd "${1:-build}" && pwd)
tmp=$(mktemp -d /tmp/flotilla-rss-XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

plugin_tables() {  # every flotilla-*.so under plugins/ of the build
  find "$build/plugins" -name 'flotilla-*.so' | sort | while read -r so; do
    name=$(basename "$so" .so); name=${name#flotilla-}
    printf '[plugin.%s]\npath = "%s"\n' "$name" "$so"
    # The runtime's per-container monitor lives next to it in the build tree.
    [ "$name" = runtime-runc ] && printf 'shim = "%s"\n' "$build/plugins/runtime-runc/shim/flotilla-runc-shim"
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
  kill -TERM "$pid"; wait "$pid" || true; pid=""
  echo "$rss"
}

echo "flotillad idle RSS"
base=$(measure "store-local only (baseline)" "$(printf '[plugin.store-local]\npath = "%s"\n' "$build/plugins/store-local/flotilla-store-local.so")")
all=$(measure "every built plugin" "$(plugin_tables)")
limit=$((15 * 1024))
if [ "$all" -lt "$limit" ]; then
  echo "  target < 15 MiB with all plugins: met ($((all / 1024)) MiB; +$(((all - base) / 1024)) MiB over the baseline)"
else
  echo "  target < 15 MiB with all plugins: MISSED ($((all / 1024)) MiB)"
  exit 1
fi
