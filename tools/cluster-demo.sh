#!/usr/bin/env bash
# A cluster of three flotillad hosts on this one machine, as root, in one
# command: the multi-host test harness (tests/cluster/) left running.
#
#   tools/cluster-demo.sh up [HOSTS]   build if needed, then start etcd and
#                                      HOSTS (3) daemons, each in a network
#                                      namespace on one bridge
#   tools/cluster-demo.sh status       each host's API and `node status`
#   tools/cluster-demo.sh down         stop and remove everything it made
#
# Everything it makes is named flc<pid>x0-* (namespaces) or lives under
# /var/tmp/flotilla-cluster-demo-*; `down` removes exactly what `up` listed
# in that dir's manifest. Builds into build/ (tools/setup.sh's dir).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
die() { printf 'cluster-demo: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (network namespaces, cgroups, containers)"

cmd=${1:-}
case "$cmd" in
  up|down|status) ;;
  *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

demo=build/tests/cluster/cluster_demo
if [ "$cmd" = up ]; then
  # etcd, wireguard-go and the rest are test packages, which `start` leaves out.
  tools/setup.sh test-packages
  # `tools/setup.sh start` configures build/ without the tests, where the
  # demo (tests/cluster/cluster_demo) lives.
  if [ -f build/build.ninja ]; then
    meson configure build -Dtests=true >/dev/null
  else
    meson setup build >/dev/null
  fi
  ninja -C build >/dev/null
fi
[ -x "$demo" ] || die "$demo is not built: run tools/cluster-demo.sh up"
exec "$demo" "$@"
