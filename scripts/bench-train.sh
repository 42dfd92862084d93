#!/usr/bin/env bash
# Training-step throughput of a preset: runs WARMUP + STEPS steps in a scratch run directory
# (no evaluation, no checkpoint until the end) and prints seconds/step, steps/s and images/s
# from the run's own log (median over the timed steps).
#
#   ./scripts/bench-train.sh                                # photo-sr4 (DAVI, batch 8) on the CPU
#   PRESET=photo-prior ./scripts/bench-train.sh             # the diffusion prior (batch 16), side by
#                                                           # side with the same step in PyTorch eager
#   DEVICE=cuda PRECISION=fp16 PRESET=ffhq256-gaussian TEACHER=ffhq.safetensors STEPS=20 \
#     ./scripts/bench-train.sh                              # the official FFHQ-256 iteration
#   DEVICE=cuda:all ...                                     # data parallel over every GPU
#
# THREADS sets libtorch's CPU threads (default 1); DAVI names the CLI binary
# (default target/release/davi, built if missing). The photo presets need
# scripts/fetch-photos.sh; their teacher defaults to models/photo-prior.safetensors.
#
# PyTorch comparison (prior presets on the CPU in fp32): PYTORCH=auto (default: on for prior
# presets when the project venv exists), 1 (required) or 0 (off). scripts/bench_train_pytorch.py
# runs the same step (same U-Net config and starting weights — the libdavi run's exported model
# —, batch, patch size, hybrid loss, AdamW, EMA, thread count) in PyTorch eager with the
# project's own ADM U-Net (scripts/bench_pytorch.py). The two alternate in ROUNDS rounds
# (default 3 with the comparison, else 1: libdavi then PyTorch, then PyTorch then libdavi, …),
# each WARMUP + STEPS steps; the medians pool every round's timed steps, and the script prints
# the ratio libdavi / PyTorch against the target ≤ 0.9 (docs/performance.md). PY names the
# Python (default .venv/bin/python).
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
PYTORCH=${PYTORCH:-auto}
PY=${PY:-.venv/bin/python}
if [ ! -x "$DAVI" ]; then
  ./scripts/setup.sh >/dev/null
  cargo build --release --locked -p davi-cli
fi
export OMP_WAIT_POLICY=PASSIVE
case "$PRESET" in
  *prior*) cmd=train-prior ;;
  *) cmd=train ;;
esac

compare=0
why=""
if [ "$PYTORCH" != 0 ]; then
  if [ "$cmd" != train-prior ]; then
    why="the PyTorch twin exists for prior presets only (PRESET=photo-prior)"
  elif [ "$DEVICE" != cpu ] || [ "$PRECISION" != fp32 ]; then
    why="the PyTorch twin runs on the CPU in fp32 only"
  elif [ ! -x "$PY" ]; then
    why="no Python at $PY (run scripts/setup.sh)"
  else
    compare=1
  fi
  if [ "$compare" = 0 ] && [ "$PYTORCH" = 1 ]; then
    echo "bench-train.sh: PYTORCH=1 but $why" >&2
    exit 2
  fi
fi
if [ "$compare" = 1 ]; then ROUNDS=${ROUNDS:-3}; else ROUNDS=${ROUNDS:-1}; fi

out="$(mktemp -d "${TMPDIR:-/tmp}/davi-bench-train.XXXXXX")"
trap 'rm -rf "$out"' EXIT
total=$((WARMUP + STEPS))

# Runs the CLI and, while it runs, records the process's CPU time (all threads, from
# /proc/PID/stat, 10 ms ticks) each time a row lands in its log: CPU seconds per step, which
# background load distorts far less than wall time. Arguments: the JSON to write
# ({"cpu_at_row": [...]}, one entry per log line), the log, a file for its stderr, the command.
monitor='
import json, os, subprocess, sys, time
out, log, err = sys.argv[1:4]
tick = os.sysconf("SC_CLK_TCK")
with open(err, "w") as e:
    p = subprocess.Popen(sys.argv[4:], stdout=subprocess.DEVNULL, stderr=e)
def cpu():
    try:
        f = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / tick
    except (OSError, IndexError, ValueError):
        return None
seen, size, at = 0, -1, []
while p.poll() is None:
    try:
        s = os.stat(log).st_size
        if s == size:
            time.sleep(0.002)
            continue
        size = s
        with open(log, "rb") as f:
            n = f.read().count(b"\n")
    except OSError:
        n = 0
    if n > seen:
        c = cpu()
        if c is not None:
            at.extend([c] * (n - seen))
        seen = n
    time.sleep(0.002)
json.dump({"cpu_at_row": at}, open(out, "w"))
sys.exit(p.returncode)
'
run_davi() { # $1 = run directory
  local sets=(--set "run.out_dir=\"$1\"" --set run.total_steps=$total --set run.log_every=1
              --set run.eval_every=1000000 --set run.checkpoint_every=1000000
              --set "run.device=\"$DEVICE\"" --set "run.precision=\"$PRECISION\"" --set run.threads=$THREADS)
  if [ "$cmd" = train ]; then sets+=(--set "davi.teacher=\"$TEACHER\""); fi
  if ! python3 -c "$monitor" "$1.cpu.json" "$1/log.jsonl" "$1.stderr" \
      "$DAVI" "$cmd" --preset "$PRESET" "${sets[@]}" --quiet; then
    cat "$1.stderr" >&2
    exit 1
  fi
}
run_torch() { # $1 = libdavi run directory (config and starting weights), $2 = JSON out
  "$PY" scripts/bench_train_pytorch.py --config "$1/config.toml" --weights "$1/model.safetensors" \
    --threads "$THREADS" --steps "$STEPS" --warmup "$WARMUP" --json "$2"
}

if [ "$compare" = 1 ]; then
  echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(getconf _NPROCESSORS_ONLN) CPUs;" \
    "load average $(cut -d' ' -f1-3 /proc/loadavg)"
  others="$(ps -eo pid,ni,pcpu,args --sort=-pcpu | awk 'NR > 1 && $3 >= 10' | cut -c1-110 || true)"
  if [ -n "$others" ]; then
    echo "NOTE: other busy processes share the CPUs and distort the timings (pid nice %cpu command):"
    echo "$others"
  fi
  echo "$ROUNDS round(s) of $WARMUP + $STEPS steps each, libdavi ($DAVI) and PyTorch alternating:"
fi
logs=()
jsons=()
for r in $(seq 1 "$ROUNDS"); do
  dir="$out/run$r"
  if [ "$compare" = 1 ] && [ $((r % 2)) = 0 ]; then
    # Even rounds: PyTorch first, from the previous round's libdavi weights.
    run_torch "$out/run$((r - 1))" "$out/torch$r.json" | sed "s/^/  round $r: /"
    run_davi "$dir"
  else
    run_davi "$dir"
    if [ "$compare" = 1 ]; then
      run_torch "$dir" "$out/torch$r.json" | sed "s/^/  round $r: /"
    fi
  fi
  logs+=("$dir")
  if [ "$compare" = 1 ]; then jsons+=("$out/torch$r.json"); fi
done
batch="$(grep -E '^batch *=' "$out/run1/config.toml" | head -1 | sed 's/.*= *//')"
python3 - "$WARMUP" "$batch" "$PRESET" "$DEVICE" "$PRECISION" "$THREADS" "${#logs[@]}" "${logs[@]}" "${jsons[@]}" <<'PY'
import json, statistics, sys
warm, batch, preset, device, precision, threads, nlogs = sys.argv[1:8]
logs = sys.argv[8:8 + int(nlogs)]
jsons = sys.argv[8 + int(nlogs):]

def steps(run):
    """Wall and CPU seconds of the timed steps of one libdavi run (its log, the monitor's CPU)."""
    lines = open(run + "/log.jsonl").read().splitlines()
    try:
        cpu_at = json.load(open(run + ".cpu.json"))["cpu_at_row"]
    except (OSError, ValueError, KeyError):
        cpu_at = []
    keep = [i for i, l in enumerate(lines) if '"eval"' not in l]
    walls = [json.loads(lines[i])["wall_s"] for i in keep]
    w = [b - a for a, b in zip(walls, walls[1:])][int(warm) - 1:]
    c = []
    if len(cpu_at) >= len(lines):
        cpus = [cpu_at[i] for i in keep]
        c = [b - a for a, b in zip(cpus, cpus[1:])][int(warm) - 1:]
    return w, c

per_round = [steps(p) for p in logs]
dt = [d for w, _ in per_round for d in w]
cdt = [d for _, c in per_round for d in c]
med = statistics.median(dt)
rounds = f" in {len(logs)} rounds" if len(logs) > 1 else ""
print(f"{preset} on {device} ({precision}, {threads} CPU thread(s)), batch {batch}: "
      f"{len(dt)} timed steps{rounds}, median {med:.3f} s/step (min {min(dt):.3f}), "
      f"{1 / med:.2f} steps/s, {int(batch) / med:.1f} images/s")
if jsons:
    pt = [json.load(open(p)) for p in jsons]
    pdt = [d for j in pt for d in j["step_s"]]
    pcdt = [d for j in pt for d in j["cpu_s"]]
    pmed = statistics.median(pdt)
    print(f"PyTorch {pt[0]['torch']} eager, same step ({pt[0]['threads']} CPU thread(s)), batch {pt[0]['batch']}: "
          f"{len(pdt)} timed steps in {len(pt)} rounds, median {pmed:.3f} s/step (min {min(pdt):.3f}), "
          f"{1 / pmed:.2f} steps/s, {pt[0]['batch'] / pmed:.1f} images/s")
    ratio = med / pmed
    rr = ", ".join(f"{statistics.median(w) / statistics.median(j['step_s']):.2f}" for (w, _), j in zip(per_round, pt))
    p10 = lambda xs: statistics.quantiles(xs, n=10)[0] if len(xs) >= 2 else xs[0]
    print(f"ratio libdavi / PyTorch step time: {ratio:.3f} (wall medians; 10th percentiles "
          f"{p10(dt):.3f} / {p10(pdt):.3f} s = {p10(dt) / p10(pdt):.3f}; min/min {min(dt) / min(pdt):.3f}; "
          f"per round {rr}); target <= 0.9: {'met' if ratio <= 0.9 else 'NOT met'}")
    if cdt:
        cmed, pcmed = statistics.median(cdt), statistics.median(pcdt)
        print(f"CPU time per step (all threads; less sensitive to other processes): libdavi median {cmed:.3f} s "
              f"(10 ms ticks, prefetch thread included), PyTorch median {pcmed:.3f} s; ratio {cmed / pcmed:.3f} "
              f"(10th percentiles {p10(cdt):.3f} / {p10(pcdt):.3f} s = {p10(cdt) / p10(pcdt):.3f})")
PY
if [ "$compare" = 1 ]; then
  echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
elif [ -n "$why" ] && [ "$PYTORCH" = auto ]; then
  echo "(no PyTorch comparison: $why)"
fi
