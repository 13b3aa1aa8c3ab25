#!/bin/sh
# Staleness of a failed backend on the 3-host harness (issue 12): from the
# registry saying "critical" (its check crossed failures_before_critical)
# to every host's DNS and VIP map no longer serving it, over N trials.
#
#   tools/bench/staleness.sh BUILD [--trials N]      (root; default 20)
#
# Runs DiscoveryCluster.StalenessOverTrials of the e2e discovery_cluster
# binary (tests/cluster/test_discovery_cluster.cc): three flotillad hosts
# in network namespaces on real etcd, real runc containers, the discovery
# plugin on every host. The harness makes and removes everything (its own
# prefix) and stops only what it started.
set -eu
usage() { echo "usage: $0 BUILD [--trials N]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$1; shift
TRIALS=20
while [ $# -gt 0 ]; do
  case $1 in
    --trials) TRIALS=$2; shift 2 ;;
    *) usage ;;
  esac
done
BIN=$BUILD/tests/cluster/test_discovery_cluster
[ -x "$BIN" ] || { echo "$BIN is not built (ninja -C $BUILD)" >&2; exit 1; }
echo "staleness: $TRIALS trials; $(date -u +%FT%TZ); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
FLOTILLA_STALENESS_TRIALS=$TRIALS "$BIN" --gtest_filter=DiscoveryCluster.StalenessOverTrials |
  grep -E '^\[ measured \]|every trial|^\[  (PASSED|FAILED|SKIPPED)|SKIPPED|Failure' || true
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
