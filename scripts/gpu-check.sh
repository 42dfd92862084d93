#!/usr/bin/env bash
# The CUDA check of issue 15 (docs/performance.md, "GPU check"), in one command, under 8
# minutes on one GPU: restores through the CLI and through the C API on CUDA (FFHQ-256
# configuration, fp32; batch 1 and 32), compared with the CPU result; reduced precision (bf16
# and fp16) through the CLI and the C API, compared with fp32; batch 1/32 timings of fp32 and
# bf16 through the bench binary; a few training steps of the diffusion prior
# and of DAVI with mixed precision (fp16) and data parallel over every visible GPU; peak GPU
# memory per section. Every section runs even when an earlier one failed, says PASS / FAIL /
# SKIP loudly, and the report file records what it got.
#
#   scripts/gpu-check.sh prepare [DIR]   # on a build machine: release CLI, libdavi.so and the
#                                        # bench binary, stripped, into DIR (default
#                                        # target/gpu-check: under target/, so git ignores it)
#   scripts/gpu-check.sh                 # on the CUDA machine: every section
#   scripts/gpu-check.sh --dry-run-cpu   # the same plumbing on a CPU (small sizes, "cuda" -> cpu)
#
# On a machine with the repository set up (cargo, .venv) `scripts/gpu-check.sh` prepares
# first when the binaries are missing. Elsewhere (e.g. a lent GPU machine with PyTorch but no
# Rust), carry DIR and run from the repository root; the binaries find libtorch through
# `python3 -c 'import torch'` (torch 2.11, the version tch 0.24 links).
#
# Environment: GPU_CHECK_BIN (DIR), DAVI / LIBDAVI / BENCH_BIN (single binaries),
# GPU_CHECK_WORK (scratch folder; default a new temporary one), GPU_CHECK_REPORT (report
# file; default $OUT/gpu-check-report.md when OUT is set, else WORK/gpu-check-report.md),
# GPU_CHECK_DEVICES (training devices; default cuda:all with 2+ GPUs, else cuda:0,cuda:0 —
# two replicas on one GPU still run the data-parallel path), TOL_F32 (max |Δ| of the raw
# fp32 restore, [-1, 1] units; default 0.05: fp32 convolutions run in TF32 on CUDA),
# TOL_REDUCED (max |Δ| of a bf16/fp16 restore against fp32 on the same device, [-1, 1] units;
# default 0.1: the bench measured 0.047 for bf16 on the CPU), TOL_U8 (max difference of 8-bit
# outputs in levels; default 8), SECTION_TIMEOUT (s, 150).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

mode=run
dry=0
case "${1:-}" in
  prepare) mode=prepare ;;
  --dry-run-cpu) dry=1 ;;
  ""|run) ;;
  *) echo "usage: scripts/gpu-check.sh [prepare [DIR] | run | --dry-run-cpu]" >&2; exit 2 ;;
esac
BIN_DIR="${GPU_CHECK_BIN:-${2:-target/gpu-check}}"
[ "$mode" = prepare ] || BIN_DIR="${GPU_CHECK_BIN:-target/gpu-check}"

# ---- prepare -------------------------------------------------------------------------------
prepare() {
  local dir="$1" py=python3
  [ -x .venv/bin/python ] && py=.venv/bin/python
  command -v cargo >/dev/null || { echo "gpu-check: prepare needs cargo" >&2; return 1; }
  [ -e .libtorch ] || ./scripts/setup.sh || return 1
  echo "== prepare: cargo build --release --locked -p davi-cli -p davi-capi"
  cargo build --release --locked -p davi-cli -p davi-capi || return 1
  echo "== prepare: cargo build --release --locked -p davi-engine --bench restore"
  local bench
  bench="$(cargo build --release --locked -p davi-engine --bench restore --message-format=json 2>/dev/null \
    | "$py" -c 'import sys, json
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "restore" and m.get("executable"):
        print(m["executable"])' | tail -n 1)"
  [ -n "$bench" ] && [ -x "$bench" ] || { echo "gpu-check: building the bench failed" >&2; return 1; }
  local rel="${CARGO_TARGET_DIR:-target}/release"
  mkdir -p "$dir"
  strip -o "$dir/davi" "$rel/davi" && strip -o "$dir/libdavi.so" "$rel/libdavi.so" && strip -o "$dir/bench-restore" "$bench" || return 1
  ls -la "$dir"
  du -sh "$dir"
  echo "prepared $dir (carry it; run scripts/gpu-check.sh from the repository root)"
}
if [ "$mode" = prepare ]; then
  prepare "$BIN_DIR"
  exit $?
fi

# ---- set-up --------------------------------------------------------------------------------
# The first candidate that exists, else the first one named (so that messages name it).
pick() {
  local f first=""
  for f in "$@"; do
    [ -n "$f" ] || continue
    [ -n "$first" ] || first="$f"
    [ -e "$f" ] && { echo "$f"; return; }
  done
  echo "$first"
}
if [ -z "${DAVI:-}" ] && [ ! -x "$BIN_DIR/davi" ] && [ ! -x target/release/davi ] && command -v cargo >/dev/null; then
  prepare "$BIN_DIR" || echo "gpu-check: prepare FAILED; continuing with what exists"
fi
DAVI="$(pick "${DAVI:-}" "$BIN_DIR/davi" target/release/davi)"
LIBDAVI="$(pick "${LIBDAVI:-}" "$BIN_DIR/libdavi.so" target/release/libdavi.so)"
BENCH_BIN="$(pick "${BENCH_BIN:-}" "$BIN_DIR/bench-restore")"
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
W="${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/davi-gpu-check.XXXXXX")}"
mkdir -p "$W"
W="$(cd "$W" && pwd)"
if [ -n "${GPU_CHECK_REPORT:-}" ]; then REPORT="$GPU_CHECK_REPORT"
elif [ -n "${OUT:-}" ]; then REPORT="$OUT/gpu-check-report.md"
else REPORT="$W/gpu-check-report.md"; fi
LOG="${REPORT%.md}.log"
: >"$LOG"
TOL_F32="${TOL_F32:-0.05}"
TOL_REDUCED="${TOL_REDUCED:-0.1}"
TOL_U8="${TOL_U8:-8}"
SECTION_TIMEOUT="${SECTION_TIMEOUT:-150}"
if [ "$dry" = 1 ]; then
  GPU=cpu; SIZE=64; BATCH=4; PREC=fp32; DEVS="${GPU_CHECK_DEVICES:-cpu,cpu}"; TRAIN_BATCH=2
  SECTION_TIMEOUT="${SECTION_TIMEOUT_DRY:-1200}"
else
  GPU=cuda; SIZE=256; BATCH=32; PREC=fp16; TRAIN_BATCH=8
  ngpu="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
  if [ "${ngpu:-0}" -ge 2 ]; then DEVS="${GPU_CHECK_DEVICES:-cuda:all}"; else DEVS="${GPU_CHECK_DEVICES:-cuda:0,cuda:0}"; fi
fi
export OMP_WAIT_POLICY=PASSIVE
# The binaries' RUNPATH names the build machine's libtorch; elsewhere use this machine's torch.
if [ -n "$DAVI" ] && ldd "$DAVI" 2>/dev/null | grep -q 'not found'; then
  tl="$("$PY" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null || true)"
  [ -n "$tl" ] && export LD_LIBRARY_PATH="$tl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

say() { echo "$*" | tee -a "$LOG"; }
rep() { echo "$*" >>"$REPORT"; }
{
  echo "# libdavi GPU check"
  echo
  commit="not a git checkout"
  if git rev-parse --short HEAD >/dev/null 2>&1; then
    commit="commit $(git rev-parse --short HEAD)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  fi
  echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(hostname), $commit"
  [ "$dry" = 1 ] && echo && echo "**DRY RUN on the CPU** (--dry-run-cpu: device cpu, ${SIZE}x${SIZE}, batch $BATCH, fp32): plumbing only, no GPU result."
  echo
  echo "davi: \`${DAVI:-missing}\`; libdavi: \`${LIBDAVI:-missing}\`; bench: \`${BENCH_BIN:-missing}\`; work folder \`$W\`; full log \`$LOG\`"
  echo
  echo "| section | result | seconds | peak GPU MiB (all GPUs, above idle) | notes |"
  echo "|---|---|---:|---:|---|"
} >"$REPORT"

# GPU memory sampler: "epoch-seconds used0,used1,..." every 0.2 s.
SMI="$W/gpu-mem.log"
: >"$SMI"
sampler_pid=""
if [ "$dry" = 0 ] && command -v nvidia-smi >/dev/null; then
  ( while :; do m="$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | tr -d ' ' | paste -sd, -)"; \
      echo "$(date +%s.%N) $m" >>"$SMI"; sleep 0.2; done ) &
  sampler_pid=$!
fi
cleanup() { [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null; }
trap cleanup EXIT
peak_mem() { # t0 t1 -> max over samples in [t0, t1] of the summed use, minus the first sample's
  "$PY" - "$SMI" "$1" "$2" <<'PY'
import sys
path, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = []
for line in open(path):
    try:
        t, m = line.split()
        rows.append((float(t), sum(float(v) for v in m.split(",") if v)))
    except ValueError:
        pass
base = rows[0][1] if rows else 0.0
inside = [m for t, m in rows if t0 - 0.3 <= t <= t1 + 0.3]
print(f"{max(inside) - base:.0f}" if inside else "–")
PY
}

NOTES=""
note() { NOTES="${NOTES:+$NOTES; }$*"; echo "   note: $*"; }
results=()
nsec=0
section() { # NAME FUNCTION: run (output to its own log, then appended to LOG), time, record
  local name="$1" fn="$2" t0 t1 rc status mem seclog
  nsec=$((nsec + 1))
  seclog="$W/section-$nsec.log"
  NOTES=""
  say ""
  say "== $name"
  t0="$(date +%s.%N)"
  "$fn" >"$seclog" 2>&1
  rc=$?
  t1="$(date +%s.%N)"
  { echo "== $name"; cat "$seclog"; } >>"$LOG"
  grep '^   note: ' "$seclog"
  case $rc in
    0) status=PASS ;;
    77) status=SKIP ;;
    124) status="FAIL (timeout)" ;;
    *) status="FAIL (exit $rc)" ;;
  esac
  mem="–"; [ -s "$SMI" ] && mem="$(peak_mem "$t0" "$t1")"
  local secs; secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')"
  say "== $name: $status (${secs} s)"
  if [ "$status" != PASS ] && [ "$status" != SKIP ]; then
    say "   last lines of its output:"
    { echo "--- $name: $status"; tail -n 15 "$seclog"; } | sed 's/^/   | /' | tee -a "$REPORT.tmp"
  fi
  rep "| $name | **$status** | $secs | $mem | ${NOTES//|//} |"
  results+=("$status")
}
T() { timeout "${SECTION_TIMEOUT}" "$@"; }
need() { for f in "$@"; do [ -n "$f" ] && [ -e "$f" ] || { note "missing: ${f:-a prerequisite}"; return 1; }; done; }

# Compare two arrays (.npy raw floats, or raw/PNG/PPM 8-bit images): prints max and mean |Δ|.
compare() { # KIND A B TOL
  "$PY" - "$@" <<'PY'
import sys, numpy as np
kind, a, b, tol = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
def load(p):
    if p.endswith(".npy"):
        return np.load(p).astype(np.float64)
    if p.endswith(".rgb"):
        return np.fromfile(p, dtype=np.uint8).astype(np.float64)
    from PIL import Image
    return np.asarray(Image.open(p)).astype(np.float64)
x, y = load(a), load(b)
if x.shape != y.shape:
    print(f"COMPARE {kind}: shapes differ {x.shape} vs {y.shape}"); sys.exit(1)
d = np.abs(x - y)
ok = d.max() <= tol
print(f"COMPARE {kind}: max abs diff {d.max():.4g}, mean abs diff {d.mean():.4g}, tolerance {tol:g}: {'OK' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
}
cmp_note() { # KIND A B TOL: compare and add the line to the notes
  local line rc
  line="$(compare "$@")"; rc=$?
  echo "$line"
  note "${line#COMPARE }"
  return $rc
}

# ---- sections ------------------------------------------------------------------------------
s_env() {
  uname -a; nproc; free -g 2>/dev/null | head -2
  if [ "$dry" = 0 ]; then
    nvidia-smi || { note "nvidia-smi failed"; }
    note "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | paste -sd'/' -)"
  fi
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "devices", torch.cuda.device_count())' || note "no PyTorch for $PY"
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  need "$DAVI" || return 1
  ldd "$DAVI" | grep -E 'torch|not found'
  if ldd "$DAVI" | grep -q 'not found'; then note "davi: unresolved libraries (see log)"; return 1; fi
  "$DAVI" --version || return 1
  # Every flag this script uses must exist (a renamed flag fails here, not halfway).
  local missing="" sub flag help
  declare -A helps=()
  for pair in "restore --model" "restore --task" "restore --device" "restore --seed" "restore --stats-json" "restore --tile-workers" \
              "restore --precision" "video --precision" \
              "degrade --task" "video --width" "video --height" "video --batch" "video --model" "video --task" "video --device" \
              "video --seed" "video --progress-json" "train-prior --preset" "train-prior --set" "train-prior --quiet" \
              "train --preset" "train --set" "train --quiet" "info --preset"; do
    sub="${pair% *}"; flag="${pair#* }"
    [ -n "${helps[$sub]:-}" ] || helps[$sub]="$("$DAVI" "$sub" --help 2>&1)"
    help="${helps[$sub]}"
    grep -q -- "$flag" <<<"$help" || missing="$missing $sub $flag;"
  done
  [ -z "$missing" ] || { note "CLI flags missing:$missing"; return 1; }
  if [ "$dry" = 0 ]; then
    "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || { note "PyTorch sees no CUDA device"; return 1; }
  fi
  note "training devices $DEVS, precision $PREC"
}

s_model() {
  need "$BENCH_BIN" || return 1
  # The FFHQ-256 architecture with random (non-trivial) weights, exported by the bench on the
  # CPU: a 93.6 M-parameter generator file (no operator; restored here with --task deblur).
  DAVI_BENCH_EXPORT="$W/ffhq" DAVI_BENCH_REPS=1 DAVI_BENCH_WARMUP=0 DAVI_BENCH_EXPERIMENTS=none T "$BENCH_BIN" || return $?
  need "$W/ffhq/model.safetensors" || return 1
  "$DAVI" info "$W/ffhq/model.safetensors" | head -n 5
  note "FFHQ-256 model $(du -h "$W/ffhq/model.safetensors" | cut -f1)"
}

s_inputs() {
  mkdir -p "$W/train" "$W/in"
  "$PY" - "$W" "$SIZE" "$BATCH" <<'PY' || return 1
import sys, numpy as np
from PIL import Image
w, size, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
frames = []
for i in range(max(batch, 16)):
    f = rng.uniform(2, 9, 3)
    img = np.stack([0.5 + 0.4 * np.sin(f[0] * xx + i) * np.cos(f[1] * yy),
                    0.5 + 0.3 * np.sin(f[2] * (xx + yy) + i),
                    ((xx * 8 + yy * 8 + i).astype(int) % 2) * 0.5 + 0.25], -1)
    img = (np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(img).save(f"{w}/train/{i:03d}.png")
    if i < batch:
        frames.append(img)
np.stack(frames).tofile(f"{w}/in/frames.rgb")
print("wrote", max(batch, 16), "training images and", batch, "frames of", size, "px")
PY
  T "$DAVI" degrade "$W/train/000.png" -o "$W/in/obs.png" --task deblur || return $?
  "$PY" -c "from PIL import Image; Image.open('$W/in/obs.png').convert('RGB').save('$W/in/obs.ppm')" || return 1
}

s_cli_b1() {
  need "$W/ffhq/model.safetensors" "$W/in/obs.png" || return 77
  local d rc=0
  for d in cpu "$GPU"; do
    T "$DAVI" restore "$W/in/obs.png" -o "$W/cli-b1-$d.npy" --model "$W/ffhq/model.safetensors" --task deblur \
      --device "$d" --seed 1 --stats-json "$W/cli-b1-$d.json" || return $?
    T "$DAVI" restore "$W/in/obs.png" -o "$W/cli-b1-$d.png" --model "$W/ffhq/model.safetensors" --task deblur \
      --device "$d" --seed 1 || return $?
    note "$d restore $("$PY" -c "import json; s = json.load(open('$W/cli-b1-$d.json')); print(f\"{s['restore_s']:.3f} s (first call), load {s['load_s']:.2f} s\")")"
  done
  cmp_note "CLI fp32 b1 $GPU vs cpu (raw)" "$W/cli-b1-$GPU.npy" "$W/cli-b1-cpu.npy" "$TOL_F32" || rc=1
  return $rc
}

s_cli_b32() {
  need "$W/ffhq/model.safetensors" "$W/in/frames.rgb" || return 77
  local d
  for d in cpu "$GPU"; do
    T "$DAVI" video --width "$SIZE" --height "$SIZE" --batch "$BATCH" --model "$W/ffhq/model.safetensors" --task deblur \
      --device "$d" --seed 1 --progress-json <"$W/in/frames.rgb" >"$W/cli-b$BATCH-$d.rgb" 2>"$W/cli-b$BATCH-$d.progress" || { cat "$W/cli-b$BATCH-$d.progress"; return 1; }
    note "$d batch $BATCH: $(tail -n 1 "$W/cli-b$BATCH-$d.progress")"
  done
  cmp_note "CLI video b$BATCH $GPU vs cpu (8-bit levels)" "$W/cli-b$BATCH-$GPU.rgb" "$W/cli-b$BATCH-cpu.rgb" "$TOL_U8"
}

s_capi() {
  need "$LIBDAVI" "$W/ffhq/model.safetensors" "$W/in/obs.ppm" || return 77
  local cc=""
  for c in "${CC:-}" cc gcc clang; do [ -n "$c" ] && command -v "$c" >/dev/null && { cc="$c"; break; }; done
  [ -n "$cc" ] || { note "no C compiler: C API restore not run"; return 1; }
  mkdir -p "$W/lib"
  ln -sf "$(cd "$(dirname "$LIBDAVI")" && pwd)/$(basename "$LIBDAVI")" "$W/lib/libdavi.so"
  ln -sf "$W/lib/libdavi.so" "$W/lib/libdavi.so.0"
  "$cc" -std=c11 -O2 -Wall host-example/c/restore.c -I include -L "$W/lib" -ldavi -Wl,-rpath,"$W/lib" -o "$W/restore-c" || return 1
  local d rc=0
  for d in cpu "$GPU"; do
    T "$W/restore-c" --model "$W/ffhq/model.safetensors" --task deblur --device "$d" --seed 1 --quiet \
      "$W/in/obs.ppm" "$W/capi-$d.ppm" || return $?
  done
  cmp_note "C API fp32 $GPU vs cpu (8-bit)" "$W/capi-$GPU.ppm" "$W/capi-cpu.ppm" "$TOL_U8" || rc=1
  if [ -e "$W/cli-b1-$GPU.png" ]; then
    cmp_note "C API vs CLI on $GPU (8-bit)" "$W/capi-$GPU.ppm" "$W/cli-b1-$GPU.png" 1 || rc=1
  fi
  return $rc
}

s_reduced() {
  # bf16 and fp16 (CUDA only: the dry run on a CPU does bf16 alone) through the CLI and the
  # C API, each against the fp32 restore on the same device, and the C API against the CLI;
  # then davi video at batch BATCH in bf16 for its frames per second.
  need "$W/ffhq/model.safetensors" "$W/in/obs.png" "$W/cli-b1-$GPU.npy" || return 77
  local p precs="bf16 fp16" rc=0
  [ "$dry" = 1 ] && precs="bf16"
  for p in $precs; do
    T "$DAVI" restore "$W/in/obs.png" -o "$W/cli-$p-$GPU.npy" --model "$W/ffhq/model.safetensors" --task deblur \
      --device "$GPU" --seed 1 --precision "$p" --stats-json "$W/cli-$p-$GPU.json" || return $?
    note "$p restore $("$PY" -c "import json; s = json.load(open('$W/cli-$p-$GPU.json')); print(f\"{s['restore_s']:.3f} s (first call), precision {s['precision']}\")")"
    cmp_note "CLI $p vs fp32 on $GPU (raw)" "$W/cli-$p-$GPU.npy" "$W/cli-b1-$GPU.npy" "$TOL_REDUCED" || rc=1
    if [ -x "$W/restore-c" ]; then
      T "$DAVI" restore "$W/in/obs.png" -o "$W/cli-$p-$GPU.png" --model "$W/ffhq/model.safetensors" --task deblur \
        --device "$GPU" --seed 1 --precision "$p" || return $?
      T "$W/restore-c" --model "$W/ffhq/model.safetensors" --task deblur --device "$GPU" --precision "$p" --seed 1 \
        --quiet "$W/in/obs.ppm" "$W/capi-$p-$GPU.ppm" || return $?
      cmp_note "C API vs CLI $p on $GPU (8-bit)" "$W/capi-$p-$GPU.ppm" "$W/cli-$p-$GPU.png" 1 || rc=1
    else
      note "no C host built (section C API): C API $p not run"; rc=1
    fi
  done
  T "$DAVI" video --width "$SIZE" --height "$SIZE" --batch "$BATCH" --model "$W/ffhq/model.safetensors" --task deblur \
    --device "$GPU" --seed 1 --precision bf16 --progress-json <"$W/in/frames.rgb" >"$W/cli-b$BATCH-bf16-$GPU.rgb" \
    2>"$W/cli-b$BATCH-bf16-$GPU.progress" || { cat "$W/cli-b$BATCH-bf16-$GPU.progress"; return 1; }
  note "bf16 batch $BATCH: $(tail -n 1 "$W/cli-b$BATCH-bf16-$GPU.progress")"
  cmp_note "CLI video b$BATCH bf16 vs fp32 on $GPU (8-bit levels)" "$W/cli-b$BATCH-bf16-$GPU.rgb" "$W/cli-b$BATCH-$GPU.rgb" "$TOL_U8" || rc=1
  return $rc
}

s_bench() {
  need "$BENCH_BIN" || return 77
  # fp32 (TF32 convolutions) and bf16, batch 1 and BATCH: forward and one-step restore (both
  # through Restorer::restore_lifted), with bf16's max |Δ| against fp32.
  if [ "$dry" = 1 ]; then
    DAVI_BENCH_MATRIX=1 DAVI_BENCH_BATCHES="1,2" DAVI_BENCH_REPS=1 DAVI_BENCH_WARMUP=0 T "$BENCH_BIN" | tee "$W/bench.txt" || return 1
  else
    DAVI_BENCH_DEVICE=cuda DAVI_BENCH_BATCHES="1,$BATCH" DAVI_BENCH_REPS=20 DAVI_BENCH_WARMUP=5 T "$BENCH_BIN" | tee "$W/bench.txt" || return 1
  fi
  note "fp32/bf16 timing matrix: see the log"
}

train_ok() { # RUN_DIR STEPS: the log has STEPS training rows with finite losses; prints s/step
  "$PY" - "$1/log.jsonl" "$2" <<'PY'
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steps = [r for r in rows if "eval" not in r and "step" in r]
bad = [r for r in steps for k, v in r.items() if isinstance(v, float) and "loss" in k and not math.isfinite(v)]
walls = [r["wall_s"] for r in steps if "wall_s" in r]
dt = [b - a for a, b in zip(walls, walls[1:])]
print(f"{len(steps)} steps logged, last {json.dumps(steps[-1]) if steps else '-'}")
print(f"s/step after the first: {' '.join(f'{d:.3f}' for d in dt)}")
sys.exit(0 if len(steps) >= int(sys.argv[2]) and not bad else 1)
PY
}

# The FFHQ-256 U-Net (UNetConfig::ffhq256) as a prior, on SIZE-pixel images.
FFHQ_PRIOR=(--set prior.unet.image_size=256 --set prior.unet.model_channels=128 --set 'prior.unet.channel_mult=[1,1,2,2,4,4]'
            --set 'prior.unet.attention_resolutions=[16]' --set prior.unet.num_head_channels=64)
run_sets() { # OUT_DIR STEPS: the overrides every training section uses, into SETS
  SETS=(--set "run.out_dir=\"$1\"" --set "run.total_steps=$2" --set run.log_every=1 --set run.eval_every=1000000
        --set run.checkpoint_every=1000000 --set "run.device=\"$DEVS\"" --set "run.precision=\"$PREC\""
        --set "data.train_dir=\"$W/train\"" --set "data.size=$SIZE" --set 'data.crop="center"')
}

s_train_prior() {
  need "$W/train/000.png" || return 77
  local out="$W/prior-run"
  rm -rf "$out"
  run_sets "$out" 4
  T "$DAVI" train-prior --preset photo-prior "${SETS[@]}" --set "data.heldout_dir=\"$W/train\"" \
    "${FFHQ_PRIOR[@]}" --set prior.batch="$TRAIN_BATCH" --quiet || return $?
  local line; line="$(train_ok "$out" 4)" || { echo "$line"; return 1; }
  echo "$line"; note "prior FFHQ-256 $PREC on $DEVS: ${line##*$'\n'}"
  need "$out/model.safetensors"
}

s_train_davi() {
  need "$W/prior-run/model.safetensors" "$W/train/000.png" || return 77
  local out="$W/davi-run"
  rm -rf "$out"
  run_sets "$out" 3
  T "$DAVI" train --preset ffhq256-gaussian "${SETS[@]}" --set "davi.teacher=\"$W/prior-run/model.safetensors\"" \
    --set davi.batch="$TRAIN_BATCH" --set davi.micro_batch="$((TRAIN_BATCH / 2))" --quiet || return $?
  local line; line="$(train_ok "$out" 3)" || { echo "$line"; return 1; }
  echo "$line"; note "DAVI ffhq256-gaussian $PREC on $DEVS: ${line##*$'\n'}"
}

section "environment and CLI flags" s_env
section "FFHQ-256 model (bench export, CPU)" s_model
section "inputs" s_inputs
section "CLI restore, fp32, batch 1, $GPU vs cpu" s_cli_b1
section "CLI restore (davi video), fp32, batch $BATCH, $GPU vs cpu" s_cli_b32
section "C API restore (host-example/c), fp32, $GPU vs cpu and vs CLI" s_capi
section "reduced precision (CLI and C API), $GPU vs fp32" s_reduced
section "bench: fp32 and bf16, batch 1 and $BATCH" s_bench
section "train-prior FFHQ-256, $PREC, data parallel" s_train_prior
section "train DAVI ffhq256-gaussian, $PREC, data parallel" s_train_davi

fails=0
for r in "${results[@]}"; do case "$r" in FAIL*) fails=$((fails + 1)) ;; esac; done
{
  echo
  echo "$(( ${#results[@]} - fails )) of ${#results[@]} sections passed or were skipped; $fails failed."
  if [ -s "$REPORT.tmp" ]; then echo; echo "## Failure excerpts"; echo; echo '```'; cat "$REPORT.tmp"; echo '```'; fi
  if [ -s "$W/bench.txt" ]; then echo; echo "## Bench (fp32/bf16 matrix)"; echo; echo '```'; grep -vE '^\s*$' "$W/bench.txt" | tail -n 60; echo '```'; fi
} >>"$REPORT"
rm -f "$REPORT.tmp"
say ""
say "report: $REPORT"
cat "$REPORT"
[ "$fails" = 0 ]
