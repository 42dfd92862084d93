#!/usr/bin/env bash
# What users run, timed (issue 15; docs/performance.md, "Whole photographs"): `davi restore`
# of whole photographs with every default model at 1, 4 and 12 megapixels, quiet and with a
# second process keeping one core busy. Prints s/MP, the floor (network FLOPs of the tiles
# actually run / this machine's conv/GEMM rate measured in the same run), their ratio, peak
# RSS, the loaded/quiet ratio and a seam score; writes every run as JSON.
#
#   scripts/bench-photo.sh                                    # the full sweep (about 20-40 min on 2 cores)
#   scripts/bench-photo.sh --models denoise --mp 0.25 --conditions quiet   # a one-minute smoke run
#   scripts/bench-photo.sh --models denoise --mp '' --sizes 4096x4096 --conditions quiet  # RSS target
#   scripts/bench-photo.sh --models denoise --mp 1 --variants all          # thread/allocator policies
#   scripts/bench-photo.sh --help                             # every option (scripts/bench_photo.py)
#
# Environment: DAVI = the CLI binary to time (default: build the release CLI with cargo;
# CARGO_TARGET_DIR is honoured, so `CARGO_TARGET_DIR=/tmp/t scripts/bench-photo.sh` leaves
# target/ alone). Close other programs first: a busy machine measures the machine, not davi.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ ! -x .venv/bin/python ] || [ ! -e .libtorch ]; then
  ./scripts/setup.sh
fi
py=.venv/bin/python
for a in "$@"; do
  if [ "$a" = "--help" ] || [ "$a" = "-h" ]; then
    exec "$py" scripts/bench_photo.py --davi /dev/null --help
  fi
done

bin="${DAVI:-}"
if [ -z "$bin" ]; then
  echo "== build: cargo build --release --locked -p davi-cli"
  cargo build --release --locked -p davi-cli
  bin="${CARGO_TARGET_DIR:-$root/target}/release/davi"
fi
if [ ! -x "$bin" ]; then
  echo "bench-photo.sh: no davi binary at $bin" >&2
  exit 1
fi
others="$(ps -eo pid,ni,pcpu,args | grep -E '[d]avi[^ ]* (train|restore|batch|serve|eval)' || true)"
if [ -n "$others" ]; then
  echo "NOTE: other davi processes are running and distort the timings:"
  echo "$others"
fi
exec "$py" scripts/bench_photo.py --davi "$bin" "$@"
