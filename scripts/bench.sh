#!/usr/bin/env bash
# The FFHQ-256 benchmark in one command (docs/performance.md): builds the tch bench
# (release profile), runs it — bare forward, one-step restore, their ratio, and the
# threads / channels-last / autograd / bf16 experiments — exporting its random model, input
# and output; then runs the independent PyTorch eager implementation on the same weights and
# input with the same thread count, checks max |Δ| and prints the tch / PyTorch ratio.
#
# Environment (all optional): DAVI_BENCH_REPS (5), DAVI_BENCH_THREADS (libtorch default),
# DAVI_BENCH_EXPERIMENTS (threads,channels_last,grad,bf16 | none), DAVI_BENCH_EXPORT (folder
# kept after the run; default a temporary folder that is removed), DAVI_BENCH_DEVICE=cuda
# (GPU run of the tch bench only: fp32/TF32 and bf16, batch 1 and 32; the PyTorch
# comparison is CPU-only and is skipped), DAVI_BENCH_MALLOPT (default: the thresholds the davi
# CLI sets, 134217728,1073741824; `off` for glibc's defaults; PyTorch runs with glibc's defaults,
# so the tch / PyTorch ratio compares what davi ships with plain PyTorch eager).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ ! -x .venv/bin/python ] || [ ! -e .libtorch ]; then
  ./scripts/setup.sh
fi
py=.venv/bin/python

echo "== build: cargo bench -p davi-engine --bench restore --no-run"
bin="$(cargo bench -p davi-engine --bench restore --no-run --message-format=json 2>/dev/null \
  | "$py" -c 'import sys, json
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "restore" and m.get("executable"):
        print(m["executable"])' | tail -n 1)"
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "bench.sh: building the bench failed; rerun: cargo bench -p davi-engine --bench restore --no-run" >&2
  exit 1
fi
echo "bench binary: $bin"

echo "== machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs"
others="$(ps -eo pid,pcpu,args | grep -E '[d]avi[^ ]* (train|restore|serve|degrade|eval)' || true)"
if [ -n "$others" ]; then
  echo "NOTE: other davi processes are running concurrently and distort the timings:"
  echo "$others"
else
  echo "no other davi process running"
fi

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); busiest processes:"
ps -eo pid,pcpu,comm --sort=-pcpu | head -n 5

if [ "${DAVI_BENCH_DEVICE:-cpu}" != "cpu" ]; then
  exec "$bin"
fi

keep=1
out="${DAVI_BENCH_EXPORT:-}"
if [ -z "$out" ]; then
  out="$(mktemp -d "${TMPDIR:-/tmp}/davi-bench.XXXXXX")"
  keep=0
fi
cleanup() { if [ "$keep" = 0 ]; then rm -rf "$out"; fi; }
trap cleanup EXIT

echo "== tch"
DAVI_BENCH_EXPORT="$out" "$bin"
echo "== PyTorch eager"
set +e
"$py" scripts/bench_pytorch.py "$out" --tch-bin "$bin"
rc=$?
set -e
echo "== after: load average $(cut -d' ' -f1-3 /proc/loadavg)"
exit $rc
