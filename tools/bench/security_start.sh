#!/usr/bin/env bash
# Security plugin cost: profile compile time (security_compile_bench) and
# container start latency under the `default` profile against `unconfined`,
# in the same run on the same daemon, alternating the two so that drift in
# the machine hits both alike.
#   tools/bench/security_start.sh BUILD_DIR [--n N]
#
# Start latency, per iteration: POST /v1/jobs (a batch job running
# /bin/sleep 1000 from busybox:latest with [task.security] profile = ...),
# then GET /v1/jobs/<name> every 2 ms until the allocation is "running";
# then DELETE ?purge=true and wait until the container is gone. Prints
# median and p90 of each and the ratio default/unconfined. Then, to show
# how much of the gap is runc's own: raw `runc run -d` of /bin/sleep on a
# `runc spec` bundle with and without the plugin's default linux.seccomp
# (security_compile_bench --print default), alternating. Needs root.
# Everything lives in /tmp/flotilla-bench-sec-XXXXXX and is removed.
set -euo pipefail

build=""
n=25
while [ $# -gt 0 ]; do
  case "$1" in
    --n) n=$2; shift 2 ;;
    -*) echo "usage: $0 BUILD_DIR [--n N]" >&2; exit 2 ;;
    *) build=$1; shift ;;
  esac
done
[ "$n" -ge 20 ] || { echo "--n must be at least 20" >&2; exit 2; }
build=$(cd "${build:-build}" && pwd)
src=$(cd "$(dirname "$0")/../.." && pwd)
. "$src/tools/bench/lib.sh"
bench_require "runs containers" curl jq python3 runc

tmp=$(mktemp -d /tmp/flotilla-bench-sec-XXXXXX)
cg="fbsec$$"

cleanup() {
  set +e
  bench_purge_jobs "$tmp/api.sock" "$tmp/oci-root"
  bench_stop_daemon
  bench_delete_containers runc "$tmp/oci-root" "$tmp/raw-root"
  bench_remove_leftovers "$tmp" "$cg"
}
trap cleanup EXIT

echo "profile compile time (libseccomp, at plugin load):"
"$build/tools/bench/security_compile_bench" 50 | sed 's/^/  /'

"$src/tools/mkimage-busybox" "$tmp/busybox-oci" >/dev/null
cat > "$tmp/flotillad.toml" <<CFG
[node]
name = "bench"
data_dir = "$tmp/data"
[api]
socket = "$tmp/api.sock"
[log]
level = "warn"
[plugin.store-local]
path = "$build/plugins/store-local/flotilla-store-local.so"
[plugin.scheduler-binpack]
path = "$build/plugins/scheduler-binpack/flotilla-scheduler-binpack.so"
[plugin.runtime-runc]
path = "$build/plugins/runtime-runc/runtime/flotilla-runtime-runc.so"
shim = "$build/plugins/runtime-runc/shim/flotilla-runc-shim"
root = "$tmp/oci-root"
cgroup_parent = "$cg"
[plugin.security]
path = "$build/plugins/security/flotilla-security.so"
allow_unconfined = true
CFG
bench_start_daemon "$build/core/flotillad" "$tmp/flotillad.toml" "$tmp/api.sock" "$tmp/log" || exit 1
"$build/tools/flotilla/flotilla" --socket "$tmp/api.sock" image import "$tmp/busybox-oci" --tag busybox:latest >/dev/null

{ bench_py; cat <<'PY'
sock, oci_root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
connect(sock)
def once(name, profile):
    toml = ('name = "%s"\ntype = "batch"\n[[task]]\nname = "sleep"\nimage = "busybox:latest"\n'
            'command = "/bin/sleep"\nargs = ["1000"]\nkill_timeout = "1s"\n'
            '[task.security]\nprofile = "%s"\n' % (name, profile)).encode()
    t0 = time.monotonic()
    st, body = req("POST", "/v1/jobs", toml, "application/toml")
    if st >= 300: sys.exit("POST /v1/jobs: %d %s" % (st, body.decode()))
    while True:
        st, body = req("GET", "/v1/jobs/" + name)
        j = json.loads(body) if st == 200 else {}
        a = j.get("allocations", j.get("allocs", [])) or []
        if a and status_of(a[0]) == "running": break
        if a and status_of(a[0]) in ("failed", "complete"): sys.exit("%s went %s: %s" % (name, status_of(a[0]), json.dumps(a[0])))
        if time.monotonic() - t0 > 60: sys.exit("%s never ran" % name)
        time.sleep(0.002)
    dt = time.monotonic() - t0
    req("DELETE", "/v1/jobs/%s?purge=true" % name)
    t1 = time.monotonic()
    while os.path.isdir(oci_root) and os.listdir(oci_root):
        if time.monotonic() - t1 > 60: sys.exit("containers of %s not removed" % name)
        time.sleep(0.01)
    return dt
once("warm-d", "default"); once("warm-u", "unconfined")
d, u = [], []
for i in range(n):
    d.append(once("d-%d" % i, "default"))
    u.append(once("u-%d" % i, "unconfined"))
md, mu = statistics.median(d), statistics.median(u)
print("container start latency, %d runs each, alternating, after 2 warm-up runs (ms, POST until running):" % n)
print("  default    median %7.1f  p90 %7.1f" % (1000 * md, 1000 * q(d, 0.9)))
print("  unconfined median %7.1f  p90 %7.1f" % (1000 * mu, 1000 * q(u, 0.9)))
print("  ratio default/unconfined (medians): %.3fx" % (md / mu))
PY
} | python3 - "$tmp/api.sock" "$tmp/oci-root" "$n"

# Raw runc, the same filter with and without: runc compiles it with
# libseccomp in every container's init.
mkdir -p "$tmp/raw/bundle/rootfs/bin" "$tmp/raw-root"
cp /bin/busybox "$tmp/raw/bundle/rootfs/bin/busybox"
ln -s busybox "$tmp/raw/bundle/rootfs/bin/sleep"
(cd "$tmp/raw/bundle" && runc spec)
"$build/tools/bench/security_compile_bench" --print default >"$tmp/raw/patch.json"
python3 - "$tmp/raw" "$tmp/raw-root" "$n" "$cg" <<'PY'
import json, os, shutil, statistics, subprocess, sys, time
d, root, n, cg = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
c = json.load(open(d + "/bundle/config.json"))
c["process"]["args"] = ["/bin/sleep", "1000"]
c["process"]["terminal"] = False
plain = json.loads(json.dumps(c))
filtered = json.loads(json.dumps(c))
filtered["linux"]["seccomp"] = json.load(open(d + "/patch.json"))["linux"]["seccomp"]
devnull = open(os.devnull, "r+b")
def once(cfg, cid):
    cfg["linux"]["cgroupsPath"] = "/%s/%s" % (cg, cid)
    with open(d + "/bundle/config.json", "w") as f: json.dump(cfg, f)
    t0 = time.monotonic()
    # No pipes: the container inherits its stdio, a pipe would never close.
    with open(d + "/run.err", "w+b") as err:
        r = subprocess.run(["runc", "--root", root, "run", "-d", "--bundle", d + "/bundle", cid],
                           stdin=devnull, stdout=devnull, stderr=err)
        dt = time.monotonic() - t0
        err.seek(0)
        if r.returncode: sys.exit("runc run -d %s: %s" % (cid, err.read().decode().strip()))
    subprocess.run(["runc", "--root", root, "delete", "--force", cid], stdout=devnull, stderr=devnull)
    return dt
once(plain, "warm-p"); once(filtered, "warm-f")
p, f = [], []
for i in range(n):
    p.append(once(plain, "p-%d" % i))
    f.append(once(filtered, "f-%d" % i))
print("raw 'runc run -d', %d runs each, alternating (ms):" % n)
print("  with the default filter    median %7.1f" % (1000 * statistics.median(f)))
print("  without a filter           median %7.1f" % (1000 * statistics.median(p)))
print("  difference (runc compiling and installing the filter): %+.1f ms" % (1000 * (statistics.median(f) - statistics.median(p))))
PY
