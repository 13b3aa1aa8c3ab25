#!/usr/bin/env bash
# `tools/setup.sh start` builds only what it installs: configure a scratch
# build with start's own options and check that every program and plugin in
# it is one `meson install` installs -- no test suites, no benchmarks, which
# made a fresh start take minutes longer than it needs to.
#   setup_start_targets.sh SOURCE_DIR
set -euo pipefail
src=$1
scratch=$(mktemp -d "${TMPDIR:-/tmp}/flotilla-start-targets.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

mapfile -t opts < <("$src/tools/setup.sh" start-options)
[ ${#opts[@]} -gt 0 ] || { echo "tools/setup.sh start-options printed nothing"; exit 1; }
if ! meson setup "$scratch/build" "$src" "${opts[@]}" >"$scratch/setup.log" 2>&1; then
  cat "$scratch/setup.log"
  exit 1
fi
meson introspect --targets "$scratch/build" >"$scratch/targets.json"
python3 - "$scratch/targets.json" <<'PY'
import json, sys
targets = json.load(open(sys.argv[1]))
built = [t for t in targets if t["type"] in ("executable", "shared module", "shared library")]
extra = sorted(t["name"] for t in built if not t.get("installed"))
installed = sorted(t["name"] for t in built if t.get("installed"))
print("start builds and installs:", ", ".join(installed))
if extra:
    print("start builds but never installs:", ", ".join(extra))
    sys.exit(1)
if not any(n == "flotillad" for n in installed):
    print("flotillad is not among the installed programs")
    sys.exit(1)
PY
