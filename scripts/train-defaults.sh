#!/usr/bin/env bash
# Continue training the shipped default models, a chunk of steps per task in turn, then
# export each EMA generator into models/. Every chunk ends on a checkpoint, so the script can
# be stopped at any time and run again; it resumes each run from runs/photo-<task>/.
#
#   ./scripts/train-defaults.sh                 # 250 steps per task per round, 4 rounds
#   CHUNK=100 ROUNDS=1 TASKS="sr4 deblur" ./scripts/train-defaults.sh
#   DAVI=target/release/davi ./scripts/train-defaults.sh   # another build of the CLI
#
# A run that does not exist yet starts from its preset (plugins/engine/presets/photo-<task>.toml);
# an existing run continues with the config saved beside it (runs/photo-<task>/config.toml).
# One thread per run, and OpenMP told not to spin: on a shared 2-core machine libtorch's
# spin-waiting threads otherwise slow every process down many times (docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."
CHUNK=${CHUNK:-250}
ROUNDS=${ROUNDS:-4}
TASKS=${TASKS:-"sr4 deblur denoise inpaint colorize"}
MAX_STEPS=${MAX_STEPS:-20000}
DAVI=${DAVI:-target/debug/davi}
EXPORT=${EXPORT:-1}
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
if [ ! -x "$DAVI" ]; then ./scripts/setup.sh >/dev/null; cargo build -p davi-cli --locked; fi

for round in $(seq 1 "$ROUNDS"); do
  for t in $TASKS; do
    dir=runs/photo-$t
    if [ -f "$dir/checkpoint.safetensors" ]; then
      src=(--config "$dir/config.toml" --resume)
    else
      src=(--preset "photo-$t" --set davi.teacher=models/photo-prior.safetensors)
    fi
    echo "round $round/$ROUNDS: photo-$t +$CHUNK steps" >&2
    "$DAVI" train "${src[@]}" --steps "$CHUNK" --quiet \
      --set run.threads=1 --set run.total_steps="$MAX_STEPS" --set run.out_dir="$dir"
    if [ "$EXPORT" = 1 ]; then
      "$DAVI" export "$dir" -o "models/photo-$t.safetensors"
    fi
  done
done
