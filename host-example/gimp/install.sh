#!/usr/bin/env bash
# Build the GIMP 2.10 plug-in (davi-gimp.c) and install it, self-contained, into a
# per-plug-in folder of GIMP's plug-ins directory:
#
#   PLUG_INS/davi-gimp/davi-gimp          the plug-in executable (rpath $ORIGIN)
#   PLUG_INS/davi-gimp/libdavi.so.0       libdavi (not executable, so GIMP never queries it)
#   PLUG_INS/davi-gimp/models/*.safetensors  the default models (found beside the executable)
#
# Usage: host-example/gimp/install.sh [--lib DIR] [--no-models] [PLUG_INS]
#   PLUG_INS     default: $GIMP2_DIRECTORY/plug-ins, else ~/.config/GIMP/2.10/plug-ins
#   --lib DIR    take libdavi.so from DIR instead of building it (`cargo build --release -p davi-capi`)
#   --no-models  do not copy models/ (libdavi then looks in $DAVI_MODEL_DIR and in this checkout)
#
# Needs Debian's libgimp2.0-dev (scripts/setup-hosts.sh installs it). libdavi keeps its rpath
# to this checkout's libtorch (.libtorch), so the checkout must stay where it is.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
lib=""
models=1
dest=""
while [ $# -gt 0 ]; do
  case "$1" in
    --lib) lib="$2"; shift ;;
    --no-models) models=0 ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    *) dest="$1" ;;
  esac
  shift
done
if [ -z "$dest" ]; then
  dest="${GIMP2_DIRECTORY:-$HOME/.config/GIMP/2.10}/plug-ins"
fi
if [ -z "$lib" ]; then
  (cd "$root" && cargo build --release --locked -p davi-capi)
  lib="$root/target/release"
fi
[ -f "$lib/libdavi.so" ] || { echo "install.sh: no libdavi.so in $lib" >&2; exit 1; }
pkg-config --exists gimpui-2.0 gegl-0.4 ||
  { echo "install.sh: libgimp2.0-dev is missing (scripts/setup-hosts.sh installs it)" >&2; exit 1; }

out="$dest/davi-gimp"
mkdir -p "$out"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cp "$lib/libdavi.so" "$tmp/libdavi.so.0"
chmod 644 "$tmp/libdavi.so.0"
# shellcheck disable=SC2046
cc -std=gnu11 -O2 -Wall -Wextra -Werror -Wno-deprecated-declarations -o "$tmp/davi-gimp" "$here/davi-gimp.c" \
  -I"$root/include" $(pkg-config --cflags --libs gimpui-2.0 gegl-0.4) -lm \
  "$tmp/libdavi.so.0" -Wl,-rpath,'$ORIGIN'
if [ "$models" = 1 ] && ls "$root"/models/*.safetensors >/dev/null 2>&1; then
  mkdir -p "$tmp/models"
  cp "$root"/models/*.safetensors "$tmp/models/"
fi
# Replace the installed files only once everything built.
rm -rf "$out/models"
for f in "$tmp"/*; do mv -f "$f" "$out/"; done
echo "installed $out/davi-gimp (menu: Filters → Enhance → DAVI Restore)"
