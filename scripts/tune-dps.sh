#!/usr/bin/env bash
# Choose DPS's step size per task on *training* photographs (never the held-out ones), as
# DPS needs when it runs with another project's operators (docs/algorithm.md §8.3): sweep
# `scale` over SCALES with DPS_NFE evaluations on VAL_IMAGES training photos cropped to
# MAX_SIDE, and keep the best mean PSNR. Writes scripts/dps-scales.txt ("task scale" lines, read by
# scripts/results.sh) and docs/dps-tuning.md (every number).
#
#   ./scripts/tune-dps.sh                       # 3 scales x 5 tasks x 2 photos, DPS-1000, 64 px
#   TASKS="sr4" SCALES="0.3 1.0" ./scripts/tune-dps.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${TASKS:-"sr4 deblur denoise inpaint colorize"}
SCALES=${SCALES:-"0.3 0.5 1.0"}
DPS_NFE=${DPS_NFE:-1000}
MAX_SIDE=${MAX_SIDE:-64}
VAL_IMAGES=${VAL_IMAGES:-"astronaut.png motorcycle_left.png"}
DAVI=${DAVI:-target/debug/davi}
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
./scripts/fetch-photos.sh >/dev/null
[ -x "$DAVI" ] || cargo build --locked -p davi-cli
val="$(mktemp -d)"
trap 'rm -rf "$val"' EXIT
for f in $VAL_IMAGES; do ln -s "$PWD/data/photos/train/$f" "$val/$f"; done
rows=()
best_lines=()
for t in $TASKS; do
  best=""; best_psnr="-1"
  for s in $SCALES; do
    "$DAVI" eval --images "$val" --task "$t" --prior models/photo-prior.safetensors \
      --methods dps --dps-nfe "$DPS_NFE" --dps-scale "$s" --max-side "$MAX_SIDE" --seed 0 \
      --device cpu --quiet --json "$val/$t-$s.json" >/dev/null
    psnr="$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["methods"][0]; print("%.2f" % m["psnr"])' "$val/$t-$s.json")"
    rows+=("| $t | $s | $psnr |")
    echo "$t scale $s: $psnr dB" >&2
    if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)' "$psnr" "$best_psnr"; then
      best="$s"; best_psnr="$psnr"
    fi
  done
  best_lines+=("$t $best")
done
{
  echo "# DPS step sizes chosen by scripts/tune-dps.sh (training photos only)"
  printf '%s\n' "${best_lines[@]}"
} > scripts/dps-scales.txt
{
  echo "# DPS step-size sweep"
  echo
  echo "\`scripts/tune-dps.sh\`: DPS-$DPS_NFE with the shipped prior (models/photo-prior.safetensors) on"
  echo "training photographs ($VAL_IMAGES; the held-out ones are never used), centre crops of"
  echo "$MAX_SIDE px, seed 0, mean PSNR on [0, 1]. The best scale per task (scripts/dps-scales.txt)"
  echo "is what scripts/results.sh gives DPS on the held-out photographs. $(date -u +%Y-%m-%d)."
  echo
  echo "| task | scale | PSNR (dB) |"
  echo "|---|---:|---:|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Chosen: $(printf '%s; ' "${best_lines[@]}")"
} > docs/dps-tuning.md
echo "wrote scripts/dps-scales.txt and docs/dps-tuning.md" >&2
