#!/usr/bin/env bash
# Install libdavi for C and C++ hosts into PREFIX, in the layout cargo-c would produce:
#
#   PREFIX/lib/libdavi.so.X.Y.Z           the library (SONAME libdavi.so.X)
#   PREFIX/lib/libdavi.so.X -> libdavi.so.X.Y.Z
#   PREFIX/lib/libdavi.so   -> libdavi.so.X    (for -ldavi at link time)
#   PREFIX/include/davi/davi.h             the cbindgen header (include/davi.h)
#   PREFIX/lib/pkgconfig/davi.pc           pkg-config --cflags --libs davi
#   PREFIX/lib/libdavi/plugins/*.so        with --with-plugins: the DAVI engine and classical
#                                          restoration plugins (for plugin hosts)
#   PREFIX/share/libdavi/models/*.safetensors  the default models, if the checkout has them
#
# libdavi links the libtorch of this checkout (.libtorch -> the pinned wheel); the library
# keeps an rpath to it and davi.pc adds one to programs, so nothing needs LD_LIBRARY_PATH.
#
# Usage: scripts/install.sh [--release | --debug | --from DIR] [--with-plugins] PREFIX
#   --release       build with `cargo build --release` and install that (the default)
#   --debug         build and install the dev profile
#   --from DIR      install libraries already built in DIR (no cargo run), e.g. target/debug
#   --with-plugins  also build/install libdavi_engine.so and libdavi_classical.so
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
profile=release
from=""
plugins=0
prefix=""

usage() {
    sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --release) profile=release ;;
        --debug) profile=debug ;;
        --from) [ $# -ge 2 ] || usage; from="$2"; shift ;;
        --with-plugins) plugins=1 ;;
        -h|--help) usage ;;
        -*) echo "install.sh: unknown option $1" >&2; usage ;;
        *) [ -z "$prefix" ] || usage; prefix="$1" ;;
    esac
    shift
done
[ -n "$prefix" ] || usage
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"

if [ -z "$from" ]; then
    packages=(-p davi-capi)
    [ "$plugins" = 1 ] && packages+=(-p davi-engine -p davi-classical)
    flags=()
    [ "$profile" = release ] && flags+=(--release)
    (cd "$root" && cargo build --locked "${flags[@]}" "${packages[@]}")
    from="${CARGO_TARGET_DIR:-$root/target}/$profile"
fi
lib="$from/libdavi.so"
[ -f "$lib" ] || { echo "install.sh: $lib not found (build davi-capi first)" >&2; exit 1; }

header="$root/include/davi.h"
version="$(sed -n 's/^#define DAVI_VERSION_STRING "\(.*\)"$/\1/p' "$header")"
[ -n "$version" ] || { echo "install.sh: no DAVI_VERSION_STRING in $header" >&2; exit 1; }
major="${version%%.*}"
if command -v readelf >/dev/null; then
    soname="$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')"
    if [ "$soname" != "libdavi.so.$major" ]; then
        echo "install.sh: $lib has SONAME '$soname', expected libdavi.so.$major" >&2
        exit 1
    fi
fi

libtorch="${LIBTORCH:-$root/.libtorch}"
case "$libtorch" in /*) ;; *) libtorch="$root/$libtorch" ;; esac
libtorch_lib="$(readlink -f "$libtorch/lib")"
[ -f "$libtorch_lib/libtorch_cpu.so" ] || {
    echo "install.sh: libtorch not found at $libtorch_lib (run scripts/setup.sh)" >&2
    exit 1
}

install -d "$prefix/lib/pkgconfig" "$prefix/include/davi"
install -m 0755 "$lib" "$prefix/lib/libdavi.so.$version"
ln -sfn "libdavi.so.$version" "$prefix/lib/libdavi.so.$major"
ln -sfn "libdavi.so.$major" "$prefix/lib/libdavi.so"
install -m 0644 "$header" "$prefix/include/davi/davi.h"

cat > "$prefix/lib/pkgconfig/davi.pc" <<EOF
prefix=$prefix
exec_prefix=\${prefix}
libdir=\${exec_prefix}/lib
includedir=\${prefix}/include
plugindir=\${libdir}/libdavi/plugins
modeldir=\${prefix}/share/libdavi/models
libtorchdir=$libtorch_lib

Name: davi
Description: DAVI one-step diffusion-prior image restoration (libdavi C API)
URL: https://github.com/libdavi/libdavi
Version: $version
Cflags: -I\${includedir}/davi
Libs: -L\${libdir} -ldavi -Wl,-rpath,\${libdir} -Wl,-rpath,\${libtorchdir}
EOF

if [ "$plugins" = 1 ]; then
    install -d "$prefix/lib/libdavi/plugins"
    for name in davi_engine davi_classical; do
        if [ -f "$from/lib$name.so" ]; then
            # Plugins are loaded with dlopen, never executed: 0644.
            install -m 0644 "$from/lib$name.so" "$prefix/lib/libdavi/plugins/lib$name.so"
        else
            echo "install.sh: warning: $from/lib$name.so not built; plugin not installed" >&2
        fi
    done
fi

shopt -s nullglob
models=("$root"/models/*.safetensors)
if [ ${#models[@]} -gt 0 ]; then
    install -d "$prefix/share/libdavi/models"
    install -m 0644 "${models[@]}" "$prefix/share/libdavi/models/"
fi

echo "installed libdavi $version into $prefix"
echo "  compile hosts with: PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --cflags --libs davi"
[ ${#models[@]} -gt 0 ] || echo "  no default models in $root/models; pass model files or set DAVI_MODEL_DIR"
