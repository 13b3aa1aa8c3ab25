#!/usr/bin/env bash
# Proves the ABI stands alone: install the headers and flotilla-plugin.pc
# into a scratch root, build the C99 example plugin with only what
# `pkg-config --cflags flotilla-plugin` gives (-std=c99 -pedantic -Werror),
# then load that .so through the real plugin host.
set -euo pipefail
build=$1 src=$2 loader=$3
tmp=$(mktemp -d /tmp/flotilla-abi-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

meson install -C "$build" --destdir "$tmp/root" --tags devel --no-rebuild --quiet
pc=$(find "$tmp/root" -name flotilla-plugin.pc | head -n 1)
[ -n "$pc" ] || { echo "flotilla-plugin.pc was not installed" >&2; exit 1; }
export PKG_CONFIG_PATH=$(dirname "$pc") PKG_CONFIG_SYSROOT_DIR="$tmp/root"
cflags=$(pkg-config --cflags flotilla-plugin)
echo "pkg-config --cflags flotilla-plugin: $cflags"
case "$cflags" in *"$tmp/root"*) ;; *) echo "cflags do not point into the scratch root" >&2; exit 1 ;; esac

# Copy the source alone so no header next to it can be picked up.
cp "$src/tests/plugins/hello-c99/hello.c" "$tmp/hello.c"
cc -std=c99 -pedantic -Wall -Wextra -Werror -fPIC -shared -fvisibility=hidden \
   -Wl,--no-undefined $cflags "$tmp/hello.c" -o "$tmp/flotilla-hello-c99.so"
nm -D --defined-only "$tmp/flotilla-hello-c99.so" | grep -q ' flotilla_plugin_entry$' \
  || { echo "the built plugin does not export flotilla_plugin_entry" >&2; exit 1; }

HELLO_C99_PATH_OVERRIDE="$tmp/flotilla-hello-c99.so" "$loader" \
  --gtest_filter='PluginHostTest.C99PluginStartsServesItsInterfaceAndUsesTheHost'
