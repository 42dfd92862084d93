#!/usr/bin/env bash
# Build the DAVI OpenFX plug-in (davi_ofx.c) and install it as a self-contained bundle:
#
#   PREFIX/OFX/Plugins/DAVI.ofx.bundle/Contents/
#     Linux-x86-64/DAVI.ofx          the plug-in (rpath $ORIGIN; exports only the OFX entry points;
#                                    -z nodelete: loaded once, never unmapped)
#     Linux-x86-64/libdavi.so.0      libdavi (found through that rpath, no LD_LIBRARY_PATH)
#     Resources/<plug-in id>.png     one icon per effect
#     Resources/models/*.safetensors the default models (unless --no-models)
#
# Hosts find it with OFX_PLUGIN_PATH=PREFIX/OFX/Plugins, or install into the system folder
# (PREFIX=/usr gives /usr/OFX/Plugins, the Linux default of Resolve, Nuke and Natron).
#
# Usage: host-example/openfx/install.sh [--lib DIR] [--no-models] PREFIX
#   --lib DIR    take libdavi.so from DIR instead of building it (`cargo build --release -p davi-capi`)
#   --no-models  do not copy models/ (the plug-in then looks in $DAVI_MODEL_DIR, then libdavi's
#                own search)
# Environment: CC (default cc), CFLAGS (default -O2 -g; the tests add sanitizers), OFX_SDK_DIR
# (OpenFX headers; by default fetch-sdk.sh fetches the pinned ones).
#
# libdavi keeps its rpath to this checkout's libtorch (.libtorch), so the checkout must stay
# where it is; see docs/hosts/openfx.md for hosts that bring their own libtorch (Nuke).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
lib=""
models=1
prefix=""
while [ $# -gt 0 ]; do
  case "$1" in
    --lib) [ $# -ge 2 ] || { echo "install.sh: --lib needs a folder" >&2; exit 2; }; lib="$2"; shift ;;
    --no-models) models=0 ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    *) [ -z "$prefix" ] || { echo "install.sh: one PREFIX only" >&2; exit 2; }; prefix="$1" ;;
  esac
  shift
done
[ -n "$prefix" ] || { echo "usage: install.sh [--lib DIR] [--no-models] PREFIX" >&2; exit 2; }
if [ -z "$lib" ]; then
  (cd "$root" && cargo build --release --locked -p davi-capi)
  lib="${CARGO_TARGET_DIR:-$root/target}/release"
fi
[ -f "$lib/libdavi.so" ] || { echo "install.sh: no libdavi.so in $lib" >&2; exit 1; }
sdk="$("$here/fetch-sdk.sh")"

plugins="$prefix/OFX/Plugins"
bundle="$plugins/DAVI.ofx.bundle"
mkdir -p "$plugins"
tmp="$(mktemp -d "$plugins/.DAVI.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
bin="$tmp/Contents/Linux-x86-64"
res="$tmp/Contents/Resources"
mkdir -p "$bin" "$res"
cp "$lib/libdavi.so" "$bin/libdavi.so.0"
chmod 644 "$bin/libdavi.so.0"
# shellcheck disable=SC2086
"${CC:-cc}" -std=c11 -Wall -Wextra -Wpedantic -Werror ${CFLAGS:--O2 -g} \
  -shared -fPIC -fvisibility=hidden \
  -I"$root/include" -I"$sdk/include" \
  -o "$bin/DAVI.ofx" "$here/davi_ofx.c" \
  "$bin/libdavi.so.0" -lm -lpthread -ldl \
  -Wl,--version-script="$here/davi_ofx.map" -Wl,-rpath,'$ORIGIN' -Wl,-z,defs -Wl,-z,nodelete
chmod 755 "$bin/DAVI.ofx"
# The identifiers of davi_ofx.c's effects: hosts look for Resources/<identifier>.png.
for id in denoise deblur sr4 inpaint colorize; do
  cp "$here/davi.png" "$res/org.libdavi.davi.$id.png"
done
if [ "$models" = 1 ]; then
  for id in denoise deblur sr4 inpaint colorize; do
    model="$root/models/photo-$id.safetensors"
    if [ -f "$model" ]; then
      mkdir -p "$res/models"
      cp "$model" "$res/models/"
    else
      echo "install.sh: warning: $model missing; that effect needs DAVI_MODEL_DIR or a Model File" >&2
    fi
  done
fi
# Replace the installed bundle only once everything built.
rm -rf "$bundle"
mv "$tmp" "$bundle"
trap - EXIT
echo "installed $bundle (set OFX_PLUGIN_PATH=$plugins, or install with PREFIX=/usr)"
