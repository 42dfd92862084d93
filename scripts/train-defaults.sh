#!/usr/bin/env bash
# Train the shipped default generators, resumably, across working days (docs/models.md).
#
#   ./scripts/train-defaults.sh                  # both queues in parallel, until done
#   QUEUES="sr4 denoise|deblur" ./scripts/train-defaults.sh
#   CHUNK_MIN=20 ./scripts/train-defaults.sh     # minutes per turn of a task (default 15)
#   POLISH_ONLY="deblur" ./scripts/train-defaults.sh   # no phase 1 for these tasks: polish
#                                                     # the committed model (see below)
#
# Runs live in $DAVI_RUNS (default ${XDG_CACHE_HOME:-~/.cache}/libdavi/runs), outside the
# checkout, so they survive from one day to the next. Each task has two runs:
#   photo-<task>       phase 1, supervised (preset photo-<task>); a missing run warm-starts
#                      from the committed models/photo-<task>.safetensors;
#   photo-<task>-davi  phase 2, the DAVI polish (preset photo-<task>-davi), started from
#                      phase 1's best export once phase 1 has finished.
# To extend a finished phase 1 (more steps): move photo-<task>-davi into $DAVI_RUNS/archive/
# and raise run.total_steps in photo-<task>/config.toml; its new polish starts when it ends.
# Tasks: sr4, deblur, denoise, inpaint, colorize, and denoise-low, the measurement denoiser
# of the two window models (inpaint, colorize): each of their shipped files holds it
# (`davi attach-denoiser`), re-attached whenever either side ships anew.
# Every run evaluates on the held-out photographs every 250 steps and keeps its best
# evaluation as best.safetensors. After every turn the better of the two phases' best exports
# (phase 2 only if it is within 0.1 dB of phase 1) is copied into models/ — commit it at
# milestones. Queues (separated by `|`) run in parallel, one process each, at the lowest
# priority with one intra-op thread and OpenMP told not to spin (on a shared 2-core machine,
# oversubscribed spinning threads slow every process down many times). Stop any time: every
# turn ends on a checkpoint, and a run resumes bit-for-bit.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
RUNS="${DAVI_RUNS:-${XDG_CACHE_HOME:-$HOME/.cache}/libdavi/runs}"
QUEUES="${QUEUES:-sr4 deblur denoise-low|colorize inpaint denoise}"
CHUNK_MIN="${CHUNK_MIN:-15}"
POLISH_ONLY=" ${POLISH_ONLY:-} "
DAVI="${DAVI:-target/release/davi}"
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [ ! -x "$DAVI" ]; then
  ./scripts/setup.sh >/dev/null
  cargo build --release --locked -p davi-cli
fi
./scripts/fetch-photos.sh
mkdir -p "$RUNS"

# Best held-out PSNR of a run (empty when it has none yet).
best_psnr() { [ -f "$1/best.json" ] && python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["heldout_psnr"])' "$1/best.json" || true; }
# The held-out PSNR a model file's provenance records (empty when it has none).
model_psnr() { "$DAVI" info "$1" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["provenance"]["run"]["heldout"]["heldout_psnr"])' || true; }
# Whether a task polishes its committed model instead of running phase 1.
polish_only() { case "$POLISH_ONLY" in *" $1 "*) [ ! -f "$RUNS/photo-$1/config.toml" ] ;; *) false ;; esac; }
# The step a run's checkpoint is at, and the steps its config asks for.
run_step() { [ -f "$1/log.jsonl" ] && python3 -c 'import json,sys; print(max([json.loads(l).get("step",0) for l in open(sys.argv[1])] or [0]))' "$1/log.jsonl" || echo 0; }
total_steps() { python3 -c 'import sys,tomllib; print(tomllib.load(open(sys.argv[1],"rb"))["run"]["total_steps"])' "$1/config.toml"; }

# One turn of a run: resume it, or create it from its preset.
turn() {
  local dir="$1" preset="$2"; shift 2
  local src
  if [ -f "$dir/checkpoint.safetensors" ]; then
    src=(--config "$dir/config.toml" --resume)
  else
    src=(--preset "$preset" --set "run.out_dir=\"$dir\"" --set run.threads=1 "$@")
  fi
  nice -n 19 "$DAVI" train "${src[@]}" --quiet --minutes "$CHUNK_MIN"
}

# The window models, whose shipped files carry the measurement denoiser.
WINDOW_TASKS="inpaint colorize"
is_window() { case " $WINDOW_TASKS " in *" $1 "*) true ;; *) false ;; esac; }

# The run a model file was exported from (its provenance), e.g. photo-denoise-davi.
model_run() { "$DAVI" info "$1" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["provenance"]["config"])' || true; }

# The better phase's best export of a task (empty when neither has one yet): phase 2 only if
# it is within 0.1 dB of phase 1 (or, polishing a committed model, of that model's score).
# A shipped DAVI polish is only ever replaced by a polish: while a phase 1 is extended (its
# old polish run archived, its total_steps raised), the committed polish stays.
pick_export() {
  local t="$1" p1="$RUNS/photo-$1" p2="$RUNS/photo-$1-davi" pick=""
  local s1 s2
  s1="$(best_psnr "$p1")"; s2="$(best_psnr "$p2")"
  if [ -z "$s2" ] && [ -f "models/photo-$t.safetensors" ]; then
    case "$(model_run "models/photo-$t.safetensors")" in *-davi) return 0 ;; esac
  fi
  [ -n "$s1" ] && pick="$p1"
  if [ -z "$pick" ] && polish_only "$t"; then s1="$(model_psnr "models/photo-$t.safetensors")"; fi
  if [ -n "$s2" ] && { [ -z "$s1" ] || python3 -c "import sys; sys.exit(0 if $s2 >= $s1 - 0.1 else 1)"; }; then pick="$p2"; fi
  [ -n "$pick" ] && echo "$pick/best.safetensors"
  return 0
}

# Ship window model $1 made of window network $2 (an export, or the shipped file itself) and
# the shipped measurement denoiser; skipped when neither input changed since the last time.
ship_window() {
  local t="$1" src="$2" den="models/photo-denoise-low.safetensors" stamp="$RUNS/.shipped-$1"
  local key
  if [ ! -f "$den" ]; then  # no measurement denoiser shipped yet: the window network alone
    cmp -s "$src" "models/photo-$t.safetensors" || { cp "$src" "models/.photo-$t.tmp" && mv "models/.photo-$t.tmp" "models/photo-$t.safetensors"; }
    return 0
  fi
  key="$(cat "$src" "$den" | sha256sum | cut -c1-64)"
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && return 0
  "$DAVI" attach-denoiser "$src" --denoiser "$den" -o "models/photo-$t.safetensors"
  # The key of what models/ now holds, so re-attaching to the shipped file is not repeated.
  if [ "$src" = "models/photo-$t.safetensors" ]; then
    key="$(cat "$src" "$den" | sha256sum | cut -c1-64)"
  fi
  echo "$key" > "$stamp"
  echo "$(date -u +%FT%TZ) shipped $src with the measurement denoiser as models/photo-$t.safetensors" >&2
}

# Ship the better phase's best export into models/.
ship() {
  local t="$1" export pick
  export="$(pick_export "$t")"
  [ -n "$export" ] || return 0
  pick="$(dirname "$export")"
  if is_window "$t"; then
    ship_window "$t" "$export"
    return 0
  fi
  if ! cmp -s "$pick/best.safetensors" "models/photo-$t.safetensors"; then
    cp "$pick/best.safetensors" "models/.photo-$t.tmp" && mv "models/.photo-$t.tmp" "models/photo-$t.safetensors"
    echo "$(date -u +%FT%TZ) shipped $(basename "$pick") best ($(best_psnr "$pick") dB) as models/photo-$t.safetensors" >&2
    if [ "$t" = denoise-low ]; then
      for w in $WINDOW_TASKS; do
        local src
        src="$(pick_export "$w")"
        ship_window "$w" "${src:-models/photo-$w.safetensors}"
      done
    fi
  fi
}

# A queue of tasks, one turn each in rotation until every run is finished. A turn that fails
# (a full disk, a run folder removed under it) is logged and its task leaves the rotation, so
# one broken run never stops the other tasks of its queue.
worker() {
  local busy=1 failed=" "
  while [ "$busy" = 1 ]; do
    busy=0
    for t in $1; do
      case "$failed" in *" $t "*) continue ;; esac
      local p1="$RUNS/photo-$t" p2="$RUNS/photo-$t-davi" ok=1
      local phase1=1 init2="$p1/best.safetensors"
      if polish_only "$t"; then phase1=0 init2="$root/models/photo-$t.safetensors"; fi
      if [ "$phase1" = 1 ] && { [ ! -f "$p1/config.toml" ] || [ "$(run_step "$p1")" -lt "$(total_steps "$p1")" ]; }; then
        echo "$(date -u +%FT%TZ) photo-$t: phase 1 from step $(run_step "$p1")" >&2
        turn "$p1" "photo-$t" --set "davi.init=\"$root/models/photo-$t.safetensors\"" || ok=0
        busy=1
      elif [ ! -f "$p2/config.toml" ] || [ "$(run_step "$p2")" -lt "$(total_steps "$p2")" ]; then
        echo "$(date -u +%FT%TZ) photo-$t: phase 2 from step $(run_step "$p2")" >&2
        turn "$p2" "photo-$t-davi" --set "davi.init=\"$init2\"" || ok=0
        busy=1
      fi
      if [ "$ok" = 0 ]; then
        echo "$(date -u +%FT%TZ) photo-$t: the turn failed (see above); skipped until the next start" >&2
        failed="$failed$t "
      fi
      ship "$t"
    done
  done
}

IFS='|' read -ra queues <<< "$QUEUES"
pids=()
for q in "${queues[@]}"; do
  worker "$q" &
  pids+=($!)
done
wait "${pids[@]}"
