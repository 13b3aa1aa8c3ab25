#!/usr/bin/env bash
# Flotilla set-up on a fresh Debian 12 machine, as root.
#
#   tools/setup.sh start   install what is missing, build, install, start a
#                          single host on the embedded store
#   tools/setup.sh test    install what is missing, build with warnings as
#                          errors, run every test suite, then the unit suite
#                          again under AddressSanitizer + UBSan
#   tools/setup.sh stop    stop the host that `start` started
#   tools/setup.sh test-packages
#                          install what the tests need (and tools/cluster-demo.sh)
#   tools/setup.sh bench-packages
#                          install what tools/bench/ needs as well
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "run as root (it installs Debian packages and starts the daemon)"
}

# What `start` builds: only what it installs (flotillad, flotilla, the
# plugins, the shim), optimised, without the test suites and benchmarks
# that only `test` runs. tools/tests/setup_start_targets.sh checks that every
# program and plugin these options build is one `meson install` installs.
# A unity build (meson compiles up to four .cc files of a target as one)
# takes about a third of the compile time: most of it is parsing and
# instantiating the same headers (nlohmann/json, toml++) in every file.
# build-asan in `test` is a unity build too, so a clash between two files'
# private names fails the tests, not a user's first command.
start_options=(--prefix=/usr/local --sysconfdir=/etc --localstatedir=/var
               -Doptimization=2 -Ddebug=false -Dtests=false -Dbenchmarks=false
               -Dunity=on)

# The packages of the given sections of tools/debian-packages.txt.
packages_of() {  # packages_of SECTION...
  local want=" $* "
  awk -v want="$want" '
    /^[[:space:]]*(#|$)/ { next }
    /^\[[a-z]+\]$/ { section = substr($0, 2, length($0) - 2); next }
    index(want, " " section " ") { print $1 }' tools/debian-packages.txt
}

install_packages() {  # install_packages SECTION...
  local want missing=()
  mapfile -t want < <(packages_of "$@")
  [ ${#want[@]} -gt 0 ] || die "tools/debian-packages.txt lists no packages in: $*"
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${#missing[@]} Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

configure() {  # configure DIR [meson options...]
  local dir=$1; shift
  if [ -f "$dir/build.ninja" ]; then
    meson configure "$dir" "$@" >/dev/null
  else
    meson setup "$dir" "$@" >/dev/null
  fi
}

build() {  # build DIR [meson options...]
  configure "$@"
  say "building in $1"
  ninja -C "$1"
}

socket=/run/flotilla/flotilla.sock
pidfile=/run/flotilla/flotillad.pid
logfile=/var/log/flotilla/flotillad.log

stop_daemon() {
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    local pid; pid=$(cat "$pidfile")
    say "stopping flotillad (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$pidfile"
}

start() {
  need_root
  install_packages start
  build build "${start_options[@]}"
  say "installing into /usr/local"
  meson install -C build --quiet
  ldconfig
  mkdir -p /etc/flotilla /var/lib/flotilla /run/flotilla /var/log/flotilla
  if [ ! -f /etc/flotilla/flotillad.toml ]; then
    install -m 0644 examples/flotillad.toml /etc/flotilla/flotillad.toml
    say "wrote /etc/flotilla/flotillad.toml from examples/flotillad.toml"
  elif ! grep -q '^\[plugin\.net-overlay\]' /etc/flotilla/flotillad.toml; then
    # An older config: the example web job needs a network plugin for its
    # host port mapping.
    printf '\n# Added by tools/setup.sh: container networking (plugins/net-overlay/README.md).\n[plugin.net-overlay]\n' \
      >> /etc/flotilla/flotillad.toml
    say "added [plugin.net-overlay] to /etc/flotilla/flotillad.toml"
  fi
  /usr/local/sbin/flotillad --config /etc/flotilla/flotillad.toml --check-config
  stop_daemon
  say "starting flotillad (log: $logfile)"
  setsid /usr/local/sbin/flotillad --config /etc/flotilla/flotillad.toml >>"$logfile" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done
  [ -S "$socket" ] || { tail -n 20 "$logfile" >&2; die "flotillad did not come up; see $logfile"; }
  /usr/local/bin/flotilla node status
  if [ -x tools/quickstart-job.sh ]; then tools/quickstart-job.sh; fi
  cat <<MSG

Flotilla is running on this host (pid $(cat "$pidfile"), API $socket).
  flotilla node status            this host
  flotilla plugin ls              loaded plugins
  flotilla job run examples/jobs/hello.toml
  flotilla job status             jobs and their allocations
  tools/setup.sh stop             stop the daemon (containers keep running)
MSG
}

run_tests() {
  need_root
  install_packages start test
  build build-ci -Dwerror=true -Dbuildtype=debugoptimized
  say "running every test suite (unit, then end-to-end)"
  meson test -C build-ci --suite unit --print-errorlogs --num-processes 2 --logbase unit
  # libFuzzer targets, each for -Dfuzz_seconds (60): built by their own
  # scripts with clang-14 from the few files they cover.
  meson test -C build-ci --suite fuzz --print-errorlogs --num-processes 1 --logbase fuzz
  meson test -C build-ci --suite e2e --print-errorlogs --num-processes 1 --logbase e2e
  # GCC warns spuriously (-Wmaybe-uninitialized) under the sanitizers, so
  # warnings are fatal in build-ci only.
  # Unoptimised: GCC compiles sanitized code at -O2 about 3.5 times slower
  # than at -O0 (53 s against 15 s for core/config.cc), and the unit tests
  # do not need the speed. Only what the unit suite uses is built: meson
  # test builds the tests' own dependencies.
  configure build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dbenchmarks=false \
    -Doptimization=0 -Dunity=on
  say "building the unit suite in build-asan and running it under AddressSanitizer + UndefinedBehaviorSanitizer"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    meson test -C build-asan --suite unit --print-errorlogs --num-processes 2 --logbase asan-unit
  local passed=0 failed=0 n
  for log in build-ci/meson-logs/unit.json build-ci/meson-logs/fuzz.json \
             build-ci/meson-logs/e2e.json \
             build-asan/meson-logs/asan-unit.json; do
    n=$(grep -c '"result": "OK"' "$log" || true); passed=$((passed + n))
    n=$(grep -c '"result": "\(FAIL\|TIMEOUT\|ERROR\)"' "$log" || true); failed=$((failed + n))
  done
  say "all suites passed"
  echo "$passed passed, $failed failed"
  report_skips build-ci/meson-logs/unit.txt build-ci/meson-logs/fuzz.txt \
               build-ci/meson-logs/e2e.txt build-asan/meson-logs/asan-unit.txt
}

# A skipped check is not a pass: name every skipped test program and every
# skipped test case, with the reason it printed.
report_skips() {  # report_skips MESON_TEXT_LOG...
  local skipped
  skipped=$(awk '
    /^ *[0-9]+\/[0-9]+ .* SKIP / { sub(/^ *[0-9]+\/[0-9]+ +/, ""); sub(/ +SKIP .*/, ""); print "  program " $0; next }
    /: Skipped$/ { getline why; next }
    /^\[  SKIPPED \] .* \([0-9]+ ms\)$/ {
      name = $0; sub(/^\[  SKIPPED \] /, "", name); sub(/ \([0-9]+ ms\)$/, "", name)
      print "  " name ": " why }' "$@" 2>/dev/null | sort -u)
  if [ -n "$skipped" ]; then
    echo "skipped (not counted as passed), $(printf '%s\n' "$skipped" | wc -l):"
    printf '%s\n' "$skipped"
  else
    echo "nothing was skipped"
  fi
}

case "${1:-}" in
  start) start; say "ready in ${SECONDS}s" ;;
  stop) need_root; stop_daemon ;;
  test) run_tests ;;
  test-packages) need_root; install_packages start test ;;
  bench-packages) need_root; install_packages start test bench ;;
  packages) shift; packages_of "$@" ;;  # for tools/tests
  start-options) printf '%s\n' "${start_options[@]}" ;;  # for tools/tests
  *) echo "usage: tools/setup.sh start|stop|test|test-packages|bench-packages" >&2; exit 2 ;;
esac
