#!/usr/bin/env bash
# Fetch the OpenFX API headers (and the HostSupport sources shipped beside them) that the
# DAVI OpenFX plug-in and its test host compile against, and print the folder holding them.
#
# The headers are an external API and are not kept in this repository. They come from the
# crates.io package openfx-sys 0.1.0, which bundles a BSD-3 snapshot of the OpenFX SDK
# (1.4-level API plus OfxSetHost; no ofxGPURender.h). The archive is pinned by its sha256,
# cached in ~/.cache/libdavi/ (or $XDG_CACHE_HOME/libdavi/) and taken from cargo's registry
# cache when `cargo fetch` already put it there; otherwise it is downloaded with curl.
#
#   host-example/openfx/fetch-sdk.sh            prints DIR; DIR/include has ofxCore.h …
#   OFX_SDK_DIR=/path host-example/openfx/fetch-sdk.sh   use an SDK checkout instead (its
#                                                include/ must have ofxImageEffect.h)
#
# DIR is target/openfx-sdk/openfx-sys-0.1.0/openfx of this checkout (HostSupport/ is there too).
set -euo pipefail
name=openfx-sys-0.1.0
sha256=8c33f9e9c468d420ce2d683397834faaa9249566af5160c1e8169a48bb799679
url="https://static.crates.io/crates/openfx-sys/$name.crate"

if [ -n "${OFX_SDK_DIR:-}" ]; then
  [ -f "$OFX_SDK_DIR/include/ofxImageEffect.h" ] ||
    { echo "fetch-sdk.sh: OFX_SDK_DIR=$OFX_SDK_DIR has no include/ofxImageEffect.h" >&2; exit 1; }
  echo "$OFX_SDK_DIR"
  exit 0
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${CARGO_TARGET_DIR:-$root/target}/openfx-sdk"
dir="$out/$name/openfx"
if [ -f "$dir/include/ofxImageEffect.h" ] && [ -f "$out/$name.sha256-ok" ]; then
  echo "$dir"
  exit 0
fi

cache="${XDG_CACHE_HOME:-$HOME/.cache}/libdavi"
crate="$cache/$name.crate"
check() { [ -f "$1" ] && echo "$sha256  $1" | sha256sum -c --status; }
if ! check "$crate"; then
  mkdir -p "$cache"
  found=""
  for c in "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$name.crate"; do
    if check "$c"; then found="$c"; break; fi
  done
  if [ -n "$found" ]; then
    cp "$found" "$crate.part"
  else
    echo "fetch-sdk.sh: downloading $url" >&2
    curl -sSfL --retry 2 -o "$crate.part" "$url" ||
      { echo "fetch-sdk.sh: cannot download $url (offline? put $name.crate in $cache)" >&2; exit 1; }
  fi
  if ! check "$crate.part"; then
    echo "fetch-sdk.sh: $crate.part does not have the pinned sha256 $sha256" >&2
    rm -f "$crate.part"
    exit 1
  fi
  mv -f "$crate.part" "$crate"
fi

rm -rf "$out/$name" "$out/$name.sha256-ok"
mkdir -p "$out"
tar -xzf "$crate" -C "$out" "$name/openfx/include" "$name/openfx/HostSupport" "$name/openfx/LICENSE.md"
touch "$out/$name.sha256-ok"
echo "$dir"
