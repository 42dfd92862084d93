#!/usr/bin/env bash
# Training-step throughput of a preset: runs WARMUP + STEPS steps in a scratch run directory
# (no evaluation, no checkpoint until the end) and prints seconds/step, steps/s and images/s
# from the run's own log (median over the timed steps).
#
#   ./scripts/bench-train.sh                                # photo-sr4 (DAVI, batch 8) on the CPU
#   PRESET=photo-prior ./scripts/bench-train.sh             # the diffusion prior (batch 16)
#   DEVICE=cuda PRECISION=fp16 PRESET=ffhq256-gaussian TEACHER=ffhq.safetensors STEPS=20 \
#     ./scripts/bench-train.sh                              # the official FFHQ-256 iteration
#   DEVICE=cuda:all ...                                     # data parallel over every GPU
#
# THREADS sets libtorch's CPU threads (default 1); DAVI names the CLI binary
# (default target/release/davi, built if missing). The photo presets need
# scripts/fetch-photos.sh; their teacher defaults to models/photo-prior.safetensors.
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${PRESET:-photo-sr4}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
DEVICE=${DEVICE:-cpu}
PRECISION=${PRECISION:-fp32}
THREADS=${THREADS:-1}
TEACHER=${TEACHER:-models/photo-prior.safetensors}
DAVI=${DAVI:-target/release/davi}
if [ ! -x "$DAVI" ]; then
  ./scripts/setup.sh >/dev/null
  cargo build --release --locked -p davi-cli
fi
export OMP_WAIT_POLICY=PASSIVE
out="$(mktemp -d "${TMPDIR:-/tmp}/davi-bench-train.XXXXXX")"
trap 'rm -rf "$out"' EXIT
total=$((WARMUP + STEPS))
sets=(--set "run.out_dir=\"$out\"" --set run.total_steps=$total --set run.log_every=1
      --set run.eval_every=1000000 --set run.checkpoint_every=1000000
      --set "run.device=\"$DEVICE\"" --set "run.precision=\"$PRECISION\"" --set run.threads=$THREADS)
case "$PRESET" in
  *prior*) cmd=train-prior ;;
  *) cmd=train; sets+=(--set "davi.teacher=\"$TEACHER\"") ;;
esac
"$DAVI" "$cmd" --preset "$PRESET" "${sets[@]}" --quiet >/dev/null
batch="$(grep -E '^batch *=' "$out/config.toml" | head -1 | sed 's/.*= *//')"
python3 - "$out/log.jsonl" "$WARMUP" "$batch" "$PRESET" "$DEVICE" "$PRECISION" "$THREADS" <<'PY'
import json, statistics, sys
path, warm, batch, preset, device, precision, threads = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if '"eval"' not in l]
walls = [r["wall_s"] for r in rows]
dt = [b - a for a, b in zip(walls, walls[1:])][int(warm) - 1:]
med = statistics.median(dt)
print(f"{preset} on {device} ({precision}, {threads} CPU thread(s)), batch {batch}: "
      f"{len(dt)} timed steps, median {med:.3f} s/step (min {min(dt):.3f}), "
      f"{1 / med:.2f} steps/s, {int(batch) / med:.1f} images/s")
PY
