#!/usr/bin/env bash
# The main job, on a fresh machine: set-up (idempotent), fetch the sample photographs,
# build, then for every task restore held-out photographs with the shipped default models
# (models/) and write, per task, a side-by-side PNG (degraded | restored | reference) and a
# metrics table, into demo-out/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
./scripts/fetch-photos.sh
cargo build --locked -p davi-cli -p davi-classical
davi=target/debug/davi
out=demo-out
mkdir -p "$out"
tasks=(sr4 deblur denoise inpaint colorize)
for t in "${tasks[@]}"; do
  if [ ! -f "models/photo-$t.safetensors" ]; then
    echo "demo: models/photo-$t.safetensors is missing; skipping $t (see docs/models.md)" >&2
    continue
  fi
  for img in data/photos/heldout/*; do
    name="$(basename "${img%.*}")"
    "$davi" degrade "$img" -o "$out/$t-$name-degraded.png" --task "$t" --seed 0
    "$davi" restore "$out/$t-$name-degraded.png" -o "$out/$t-$name-restored.png" --task "$t" --seed 0
    "$davi" montage "$out/$t-$name-degraded.png" "$out/$t-$name-restored.png" "$img" -o "$out/$t-$name-side-by-side.png"
  done
  "$davi" eval --images data/photos/heldout --task "$t" --model "models/photo-$t.safetensors" \
    --methods davi,classical,lift --seed 0 --quiet --json "$out/$t.json" --markdown "$out/$t.md" > /dev/null
  echo "== $t"; cat "$out/$t.md"
done
echo "demo: side-by-side images and tables are in $out/"
