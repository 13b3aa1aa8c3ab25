#!/usr/bin/env bash
# Container start latency: Flotilla (API -> scheduler -> reconciler ->
# runtime-runc -> shim -> OCI runtime) against the raw OCI runtime's
# `run -d` on an equivalent bundle, in the same run.
# Target (issue 14): Flotilla's median at most 1.15x the raw runtime's, in 5
# of 5 runs on a quiet machine. Each result line ends with the load average.
#   tools/bench/container_start.sh BUILD_DIR [--runtime runc|crun|both] [--n N] [--poll] [--attach]
#
# --attach: the network attachment's share of a start. The daemon also
# loads net-overlay (no mesh) and every Flotilla run is made twice,
# alternating: `network = "host"` and `network = "bridge"` (namespace,
# veth pair, addresses, routes through the plugin); the difference of the
# medians is the attach cost. The whole benchmark then runs in a network
# namespace of its own (unshare -n) with a stand-in underlay (a veth pair),
# so the bridge, veths, sysctls and nft table never touch this machine's
# network.
#
# Flotilla, per iteration: POST /v1/jobs (a batch job running /bin/sleep
# 1000 from busybox:latest), then blocking queries (GET /v1/jobs/<name>
# ?index=<revision>, which answers as soon as the job's view changes, see
# docs/api.md) until the allocation's status is "running" (the reconciler
# reports that once the runtime's start returned). A client polling every
# millisecond instead competes with runc for this machine's two cores and
# slows the start it measures (by ~8 ms here); `--poll` measures that way.
# Then DELETE ?purge=true and wait until the container is gone.
# Raw, per iteration: `<runtime> --root R run -d --bundle B id-<i>` (returns
# once the process is exec'd), with the config.json Flotilla generated for
# the same task (only the cgroup path changed) on an overlay of the same
# image snapshot; then `delete --force`. Flotilla and raw runs alternate.
# Needs root. Prints "met"/"MISSED" and exits 0 either way; exits 1 when
# something broke. Everything lives in /tmp/flotilla-bench-start-XXXXXX.
set -euo pipefail

args=("$@")
build=""
runtimes="runc"
n=25
poll=0
attach=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runtime) runtimes=$2; shift 2 ;;
    --n) n=$2; shift 2 ;;
    --poll) poll=1; shift ;;
    --attach) attach=1; shift ;;
    -*) echo "usage: $0 BUILD_DIR [--runtime runc|crun|both] [--n N] [--poll] [--attach]" >&2; exit 2 ;;
    *) build=$1; shift ;;
  esac
done
[ "$runtimes" = both ] && runtimes="runc crun"
[ "$n" -ge 20 ] || { echo "--n must be at least 20" >&2; exit 2; }
build=$(cd "${build:-build}" && pwd)
src=$(cd "$(dirname "$0")/../.." && pwd)
. "$src/tools/bench/lib.sh"
bench_require "runs containers" curl jq python3 runc
if [ "$attach" = 1 ] && [ -z "${FLOTILLA_BENCH_NETNS:-}" ]; then
  # Again, in a network namespace of its own (gone when the script ends).
  FLOTILLA_BENCH_NETNS=1 exec unshare -n "$0" "${args[@]}"
fi
if [ "$attach" = 1 ]; then
  [ -e "$build/plugins/net-overlay/flotilla-net-overlay.so" ] || bench_die "net-overlay is not built"
  ip link set lo up
  ip link add ul0 type veth peer name ul1 && ip link set ul1 up && ip addr add 192.0.2.1/24 dev ul0 &&
    ip link set ul0 up && ip route add default via 192.0.2.254 dev ul0 || bench_die "no stand-in underlay"
fi

tmp=$(mktemp -d /tmp/flotilla-bench-start-XXXXXX)
tag=fbs$$
cur_root=""     # OCI root of the raw runs in progress
cur_bin=""
cgparents=()

cleanup() {
  set +e
  # Jobs of our daemon: stop and purge so it removes its containers.
  bench_purge_jobs "$tmp/flo/api.sock" "$tmp/flo/oci-root"
  bench_stop_daemon
  # Whatever is still under our own OCI roots, by id.
  for rt in runc crun; do
    bin=$rt; [ -x "$tmp/$rt/runtime" ] && bin="$tmp/$rt/runtime"
    bench_delete_containers "$bin" "$tmp/$rt/flo/oci-root" "$tmp/$rt/raw-root"
  done
  # Shims, mounts and cgroups, then $tmp.
  bench_remove_leftovers "$tmp" "${cgparents[@]}"
}
trap cleanup EXIT
die() { bench_die "$@"; }

# The busybox image, built once.
"$src/tools/mkimage-busybox" "$tmp/busybox-oci" >/dev/null || die "mkimage-busybox failed"

# An OCI runtime binary for RUNTIME: crun on a hybrid cgroup layout runs
# through the wrapper the runtime e2e tests use (hides cgroup2's mount).
runtime_binary() {  # runtime_binary RUNTIME DIR -> prints the path
  local rt=$1 dir=$2
  if [ "$rt" = crun ] && [ -e /sys/fs/cgroup/unified/cgroup.controllers ] &&
     grep -q '[a-z]' /sys/fs/cgroup/unified/cgroup.controllers; then
    cat > "$dir/runtime" <<'W'
#!/bin/sh
# crun, with the unified cgroup2 mount hidden (as runtime_e2e_test.cc does)
exec unshare -m --propagation private sh -c 'umount -l /sys/fs/cgroup/unified 2>/dev/null; exec crun "$@"' crun "$@"
W
    chmod 755 "$dir/runtime"
    echo "$dir/runtime"
  else
    command -v "$rt"
  fi
}

# bench RUNTIME (not in a subshell: cleanup must see $pid): prints one line "RUNTIME flo_median flo_p90 raw_median raw_p90"
bench() {
  local rt=$1 dir="$tmp/$1"
  mkdir -p "$dir/flo" "$dir/raw-root" "$dir/raw/bundle"
  rm -f "$tmp/flo"; ln -s "$dir/flo" "$tmp/flo"
  local bin; bin=$(runtime_binary "$rt" "$dir") || return 1
  local cg="$tag-$rt" cgraw="$tag-$rt-raw"
  cgparents+=("$cg" "$cgraw")
  cat > "$dir/flo/flotillad.toml" <<CFG
[node]
name = "bench"
data_dir = "$dir/flo/data"
[api]
socket = "$dir/flo/api.sock"
[log]
level = "warn"
[plugin.store-local]
path = "$build/plugins/store-local/flotilla-store-local.so"
[plugin.scheduler-binpack]
path = "$build/plugins/scheduler-binpack/flotilla-scheduler-binpack.so"
[plugin.runtime-runc]
path = "$build/plugins/runtime-runc/runtime/flotilla-runtime-runc.so"
shim = "$build/plugins/runtime-runc/shim/flotilla-runc-shim"
binary = "$bin"
root = "$dir/flo/oci-root"
cgroup_parent = "$cg"
CFG
  if [ "$attach" = 1 ]; then cat >> "$dir/flo/flotillad.toml" <<CFG
[plugin.net-overlay]
path = "$build/plugins/net-overlay/flotilla-net-overlay.so"
netns_dir = "$dir/flo/netns"
wireguard = "off"
underlay_interface = "ul0"
CFG
  fi
  local sock="$dir/flo/api.sock"
  bench_start_daemon "$build/core/flotillad" "$dir/flo/flotillad.toml" "$sock" "$dir/flo/log" || return 1
  "$build/tools/flotilla/flotilla" --socket "$sock" image import "$tmp/busybox-oci" --tag busybox:latest \
    >"$dir/import.log" 2>&1 || { cat "$dir/import.log" "$dir/flo/log" >&2; return 1; }

  { bench_py; cat <<'PY'
sock, d, binary, n, cgraw, rt = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
poll = sys.argv[7] == "1"
attach = sys.argv[8] == "1"
connect(sock)

def allocs(job, index=0):
    # index > 0: a blocking query, answered when the job's view changed
    # after that store revision (or after 60 s).
    st, body = req("GET", "/v1/jobs/" + job + ("?index=%d&wait=60s" % index if index else ""))
    if st != 200: return [], index
    j = json.loads(body)
    return j.get("allocs", []) or [], j.get("revision", index)

def allocs_left(job):
    st, body = req("GET", "/v1/allocs?job=" + job)
    return st != 200 or bool(json.loads(body).get("allocs"))

oci_root = d + "/flo/oci-root"
def containers_gone():
    return not os.path.isdir(oci_root) or not os.listdir(oci_root)

def job_toml(name, network):
    return ('name = "%s"\ntype = "batch"\n[[task]]\nname = "sleep"\nimage = "busybox:latest"\n'
            'command = "/bin/sleep"\nargs = ["1000"]\nkill_timeout = "1s"\n%s' %
            (name, 'network = "%s"\n' % network if network else "")).encode()

def flotilla_once(name, keep_config=False, network="host" if attach else ""):
    t0 = time.monotonic()
    st, body = req("POST", "/v1/jobs", job_toml(name, network), "application/toml")
    if st >= 300: sys.exit("POST /v1/jobs: %d %s" % (st, body.decode()))
    index = 0 if poll else json.loads(body)["revision"]
    deadline = t0 + 60
    while True:
        a, index = allocs(name, index)
        if a:
            s = status_of(a[0])
            if s == "running": break
            if s in ("failed", "complete", "lost"):
                sys.exit("job %s went %s: %s" % (name, s, json.dumps(a[0])))
        if time.monotonic() > deadline: sys.exit("job %s never ran: %s" % (name, json.dumps(a)))
        if poll: time.sleep(0.001)
    dt = time.monotonic() - t0
    if keep_config:  # the config.json Flotilla generated, for the raw bundle
        cfgs = glob.glob(d + "/flo/data/**/bundle/config.json", recursive=True)
        if not cfgs: sys.exit("no bundle/config.json under the data dir")
        with open(cfgs[0]) as f: cfg = json.load(f)
        with open(d + "/raw/flotilla-config.json", "w") as f: json.dump(cfg, f, indent=2)
    st, body = req("DELETE", "/v1/jobs/%s?purge=true" % name)
    if st >= 300: sys.exit("DELETE /v1/jobs/%s: %d %s" % (name, st, body.decode()))
    # Quiescent before the next start, as the raw side is after its
    # `delete`: the container is gone and the node has collected the
    # allocation's records (it does that after unmounting and removing the
    # container's files), so no clean-up competes with the next start.
    deadline = time.monotonic() + 60
    while not containers_gone() or allocs_left(name):
        if time.monotonic() > deadline: sys.exit("containers of %s not removed" % name)
        time.sleep(0.01)
    return dt

# Warm-up (image cache, first shim, first cgroup): not counted.
flotilla_once("warm-0", keep_config=True)
flotilla_once("warm-1")
if attach:
    flotilla_once("warm-b0", network="bridge"); flotilla_once("warm-b1", network="bridge")

# The raw bundle: Flotilla's config for the same task, rootfs = an overlay
# of the same image snapshot(s), like Flotilla mounts per container.
cfg = json.load(open(d + "/raw/flotilla-config.json"))
snaps = glob.glob(d + "/flo/data/plugins/runtime-runc/images/snapshots/*/rootfs")
if len(snaps) != 1: sys.exit("expected one image snapshot, found %d" % len(snaps))
b = d + "/raw/bundle"
for sub in ("rootfs", "upper", "work"): os.makedirs(d + "/raw/" + sub if sub != "rootfs" else b + "/rootfs", exist_ok=True)
subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                "lowerdir=%s,upperdir=%s/raw/upper,workdir=%s/raw/work" % (snaps[0], d, d),
                b + "/rootfs"], check=True)
cfg["root"] = {"path": "rootfs", "readonly": cfg.get("root", {}).get("readonly", False)}
# Flotilla joins each allocation's tasks to one network namespace it pins
# under its data dir (gone with the allocation); the raw run makes a new
# one instead, as runc does for a namespace without a path.
for ns in cfg.get("linux", {}).get("namespaces", []):
    if ns.get("path", "").startswith(d + "/flo/"): del ns["path"]
for m in cfg.get("mounts", []):  # bind mounts from Flotilla's container dir would be gone
    if m.get("source", "").startswith(d + "/flo/"): sys.exit("config.json binds %s; cannot reuse" % m["source"])
root = d + "/raw-root"
devnull = open(os.devnull, "r+b")
def raw_once(cid):
    cfg["linux"]["cgroupsPath"] = "/%s/%s" % (cgraw, cid)
    with open(b + "/config.json", "w") as f: json.dump(cfg, f)
    t0 = time.monotonic()
    # No pipes: the container inherits its stdio, a pipe would never close.
    with open(d + "/raw/run.err", "w+b") as err:
        r = subprocess.run([binary, "--root", root, "run", "-d", "--bundle", b, cid],
                           stdin=devnull, stdout=devnull, stderr=err)
        dt = time.monotonic() - t0
        err.seek(0)
        if r.returncode != 0: sys.exit("%s run -d %s: %s" % (binary, cid, err.read().decode().strip()))
    r = subprocess.run([binary, "--root", root, "delete", "--force", cid], stdout=devnull, stderr=subprocess.PIPE)
    if r.returncode != 0: sys.exit("%s delete --force %s: %s" % (binary, cid, r.stderr.decode().strip()))
    return dt
raw_once("warm-0"); raw_once("warm-1")
# Alternating, so that whatever else this machine does at the time weighs
# on both sides alike.
flo, raw, bridge = [], [], []
for i in range(n):
    flo.append(flotilla_once("b-%d" % i))
    if attach: bridge.append(flotilla_once("br-%d" % i, network="bridge"))
    raw.append(raw_once("id-%d" % i))
print("%s %.2f %.2f %.2f %.2f %d %.2f %.2f" % (rt, 1000 * statistics.median(flo), 1000 * q(flo, 0.9),
                                     1000 * statistics.median(raw), 1000 * q(raw, 0.9), n,
                                     1000 * statistics.median(bridge) if bridge else 0,
                                     1000 * q(bridge, 0.9) if bridge else 0))
PY
  } | python3 - "$sock" "$dir" "$bin" "$n" "$cgraw" "$rt" "$poll" "$attach"
  local rc=$?
  bench_stop_daemon
  return $rc
}

how="watched with blocking queries (GET ?index=)"
[ "$poll" = 1 ] && how="polled every 1 ms"
echo "container start latency, $n runs each after 2 warm-up runs (ms; Flotilla = POST /v1/jobs until"
echo "the allocation is \"running\", $how;"
echo "raw = '<runtime> run -d' on Flotilla's own config.json for the task, rootfs an overlay of the same image)"
status=0
for rt in $runtimes; do
  if ! command -v "$rt" >/dev/null; then echo "  $rt: skipped ($rt is not installed)"; continue; fi
  if bench "$rt" >"$tmp/$rt.result" 2>"$tmp/$rt.err"; then
    read -r _ fm fp rm rp _ bm bp <"$tmp/$rt.result"
    awk -v rt="$rt" -v fm="$fm" -v fp="$fp" -v rm="$rm" -v rp="$rp" -v bm="$bm" -v bp="$bp" -v attach="$attach" \
        -v load="$(cut -d" " -f1-3 /proc/loadavg)" 'BEGIN {
      r = fm / rm
      printf "  %-5s Flotilla%s median %7.1f  p90 %7.1f | raw median %7.1f  p90 %7.1f | ratio %.2fx  target <= 1.15x: %s  (load %s)\n",
             rt, (attach == 1 ? " (network = host)" : ""), fm, fp, rm, rp, r, (r <= 1.15 ? "met" : "MISSED"), load
      if (attach == 1)
        printf "  %-5s Flotilla (network = bridge, net-overlay) median %7.1f  p90 %7.1f | attach cost %.1f ms = %.0f%% of a bridge-mode start\n",
               rt, bm, bp, bm - fm, 100 * (bm - fm) / bm }'
  elif [ "$rt" = crun ]; then
    echo "  crun: skipped, it failed here: $(tail -n 3 "$tmp/$rt.err" | tr '\n' ' ')"
  else
    cat "$tmp/$rt.err" >&2
    echo "  $rt: FAILED" >&2
    status=1
  fi
done
exit $status
