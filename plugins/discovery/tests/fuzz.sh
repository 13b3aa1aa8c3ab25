#!/usr/bin/env bash
# Build the DNS packet-path fuzzer with clang-14 and libFuzzer and run it
# for a bounded time: fuzz.sh OUTDIR SECONDS
#
# Compiles only the four files the packet path is made of (a few seconds),
# so it adds little to a CI run. Exit 77 (meson: skipped) when clang-14 or
# libFuzzer is missing. Crashes are left in OUTDIR/artifacts.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
out=${1:?usage: fuzz.sh OUTDIR SECONDS}
seconds=${2:-60}
cxx=${CLANGXX:-clang++-14}
if ! command -v "$cxx" >/dev/null; then
  echo "SKIPPED: $cxx is not installed (Debian: clang-14, libfuzzer-14-dev)"; exit 77
fi
mkdir -p "$out/artifacts" "$out/corpus"
flags=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -I"$src" $(pkg-config --cflags libknot))
if ! "$cxx" "${flags[@]}" "$here/fuzz_dns_answer.cc" "$src/dns_answer.cc" "$src/dns_answer_cache.cc" \
     "$src/dns_zone.cc" \
     $(pkg-config --libs libknot) -o "$out/fuzz_dns_answer" 2> "$out/build.log"; then
  if grep -q "libclang_rt.fuzzer\|cannot find -lclang_rt" "$out/build.log"; then
    echo "SKIPPED: libFuzzer runtime missing (Debian: libfuzzer-14-dev)"; exit 77
  fi
  cat "$out/build.log" >&2; exit 1
fi
# The checked-in seeds, then whatever earlier runs found.
cp -n "$here"/fuzz-corpus/* "$out/corpus/" 2>/dev/null || true
export ASAN_OPTIONS=abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
"$out/fuzz_dns_answer" -max_total_time="$seconds" -max_len=4096 -timeout=5 -rss_limit_mb=1024 \
  -artifact_prefix="$out/artifacts/" -print_final_stats=1 "$out/corpus" 2>&1 | tail -n 25
