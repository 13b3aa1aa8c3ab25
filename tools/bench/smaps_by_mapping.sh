#!/usr/bin/env bash
# Where a process's resident memory is, per mapped file (and [anon], [heap],
# [stack]...), largest first, in KiB: Rss, Pss, shared pages, private clean,
# private dirty (written copies of file pages: relocations, .data) and the
# anonymous part of them. Reads a saved smaps file or a live process.
#   tools/bench/smaps_by_mapping.sh SMAPS_FILE|PID [N]
set -euo pipefail
src=$1
[ -f "$src" ] || src=/proc/$1/smaps
awk '
/^[0-9a-f]+-[0-9a-f]+ / { n = ($6 == "" ? "[anon]" : $6); sub(".*/", "", n); next }
/^Rss:/ { r[n] += $2; tr += $2 } /^Pss:/ { p[n] += $2; tp += $2 }
/^Shared_(Clean|Dirty):/ { s[n] += $2; ts += $2 }
/^Private_Clean:/ { pc[n] += $2; tpc += $2 } /^Private_Dirty:/ { pd[n] += $2; tpd += $2 }
/^Anonymous:/ { a[n] += $2; ta += $2 }
END {
  printf "%7d %7d %7d %7d %7d %7d  total\n", tr, tp, ts, tpc, tpd, ta
  for (k in r) if (r[k] > 0) printf "%7d %7d %7d %7d %7d %7d  %s\n", r[k], p[k], s[k], pc[k], pd[k], a[k], k | "sort -rn"
}' "$src" | { echo "    Rss     Pss  Shared PrivCln PrivDty    Anon  mapping (KiB)"; head -n "${2:-1000}"; }
