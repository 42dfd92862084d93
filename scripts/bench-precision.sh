#!/usr/bin/env bash
# Reduced precision (issue 15; docs/performance.md, "Reduced precision"): what bf16 costs in
# PSNR/SSIM on the held-out photographs, and what it buys in speed on this CPU, against fp32,
# with the shipped default models.
#
# Quality: every crop of the held-out measurements that scripts/results.sh scores (PEERS, made
# by scripts/eval_peers.py --save-degraded: 256x256 crops of data/photos/heldout, two per
# photograph, the paper's operators, seeded noise) is restored with
#   davi restore <crop>/<task>.npy -o OUT.png --model models/photo-<task>.safetensors \
#       --device cpu --threads $THREADS --precision P
# for each precision P, and scored against the crop with eval_peers.py's PSNR and SSIM (the
# definitions of plugins/engine/src/metrics.rs, as scripts/score_restored.py does). Printed per
# task and precision: mean PSNR and SSIM; per reduced precision, the paired per-crop PSNR
# difference to fp32 (mean, worst, best) and the largest 8-bit difference between the outputs.
#
# Speed: one held-out photograph resized to SIZE (output pixels; default 1152x864, 1 MP) and
# degraded with `davi degrade --task T` (as scripts/bench_photo.py makes its inputs), restored
# ROUNDS times per precision with --threads $THREADS, alternating the order each round (fp32
# first, then bf16 first, ...). Printed: restore seconds per output megapixel (`restore_s` of
# --stats-json: measurement, tiles, blend; not model loading or PNG I/O), median per precision,
# and the median over rounds of the within-round ratio fp32/bf16 (> 1: bf16 is faster). On a
# machine shared with other jobs only that paired ratio means much.
#
#   scripts/bench-precision.sh                                  # build the release CLI, all of it
#   DAVI=target/debug/davi scripts/bench-precision.sh           # time a given binary
#   TASKS="denoise sr4" SPEED_TASKS=denoise ROUNDS=5 scripts/bench-precision.sh
#
# Environment: DAVI (binary; default target/release/davi, built when missing), PEERS (folder
# with peers.json and degraded/; default runs/peers, made with .venv-eval when missing),
# TASKS (quality; default all five), SPEED_TASKS (default "denoise sr4"; "" for none),
# PRECISIONS (default "fp32 bf16"; the first is the reference), ROUNDS (3), SIZE (1152x864),
# THREADS (1), WORK (scratch folder; default a new temporary one, removed at the end),
# JSON (write every number there).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
TASKS="${TASKS:-sr4 deblur denoise inpaint colorize}"
SPEED_TASKS="${SPEED_TASKS-denoise sr4}"
PRECISIONS="${PRECISIONS:-fp32 bf16}"
ROUNDS="${ROUNDS:-3}"
SIZE="${SIZE:-1152x864}"
THREADS="${THREADS:-1}"
PEERS="${PEERS:-runs/peers}"
if [ -n "${DAVI:-}" ]; then
  davi="$(realpath "$DAVI")"
else
  ./scripts/setup.sh >/dev/null
  cargo build --release --locked -p davi-cli
  davi="$root/target/release/davi"
fi
if [ -n "${WORK:-}" ]; then
  work="$WORK"; mkdir -p "$work"
else
  work="$(mktemp -d "${TMPDIR:-/tmp}/davi-bench-precision.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
fi
export OMP_NUM_THREADS="$THREADS" OMP_WAIT_POLICY=PASSIVE
if [ -n "$TASKS" ] && [ ! -f "$PEERS/peers.json" ]; then
  ./scripts/setup-eval.sh >/dev/null
  ./scripts/fetch-photos.sh
  mkdir -p "$PEERS"
  .venv-eval/bin/python scripts/eval_peers.py --images data/photos/heldout \
    --out "$PEERS/peers.json.tmp" --save-degraded "$PEERS/degraded" >/dev/null
  mv "$PEERS/peers.json.tmp" "$PEERS/peers.json"
fi

echo "# bench-precision: $("$davi" --version), $(getconf _NPROCESSORS_ONLN) cores, threads $THREADS, $(date -u '+%Y-%m-%d %H:%M UTC')"
grep -o -m1 -w -E 'avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | paste -sd' ' | sed 's/^/# CPU bf16 flags: /' || echo "# CPU bf16 flags: none"
for t in $TASKS $SPEED_TASKS; do
  echo "# models/photo-$t.safetensors sha256 $(sha256sum "models/photo-$t.safetensors" | cut -c1-16)"
done | sort -u

# ---- quality -------------------------------------------------------------------------------
for t in $TASKS; do
  for d in "$PEERS"/degraded/*/; do
    crop="$(basename "$d")"
    [ -f "$d/$t.npy" ] || continue
    mkdir -p "$work/q/$crop"
    for p in $PRECISIONS; do
      "$davi" restore "$d/$t.npy" -o "$work/q/$crop/${t}_$p.png" --model "models/photo-$t.safetensors" \
        --device cpu --threads "$THREADS" --precision "$p" 2>/dev/null
    done
  done
done

# ---- speed ---------------------------------------------------------------------------------
if [ -n "$SPEED_TASKS" ]; then
  mkdir -p "$work/s"
  w="${SIZE%x*}" h="${SIZE#*x}"
  .venv/bin/python - "$work/s/clean.png" "$w" "$h" <<'PY'
import glob, sys
from PIL import Image
out, w, h = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for p in sorted(glob.glob("data/photos/heldout/*.png")):
    im = Image.open(p).convert("RGB")
    if min(im.size) >= 256:
        im.resize((w, h), Image.LANCZOS).save(out)
        print(f"# speed input: {p} resized to {w}x{h}")
        break
else:
    sys.exit("no held-out photograph of at least 256 px: run scripts/fetch-photos.sh")
PY
  for t in $SPEED_TASKS; do
    "$davi" degrade "$work/s/clean.png" -o "$work/s/$t-obs.png" --task "$t"
    for r in $(seq 1 "$ROUNDS"); do
      order="$PRECISIONS"
      [ $((r % 2)) -eq 0 ] && order="$(echo "$PRECISIONS" | tr ' ' '\n' | tac | paste -sd' ')"
      for p in $order; do
        "$davi" restore "$work/s/$t-obs.png" -o "$work/s/$t-$p.png" --task "$t" --device cpu \
          --threads "$THREADS" --precision "$p" --stats-json "$work/s/$t-$p-$r.json"
      done
    done
  done
fi

# ---- report --------------------------------------------------------------------------------
py=.venv/bin/python
[ -n "$TASKS" ] && py=.venv-eval/bin/python
"$py" - "$work" "$PEERS" "$TASKS" "$SPEED_TASKS" "$PRECISIONS" "$ROUNDS" "${JSON:-}" <<'PY'
import glob, json, os, statistics, sys
work, peers, tasks, speed_tasks, precs, rounds, json_out = sys.argv[1:8]
tasks, speed_tasks, precs, rounds = tasks.split(), speed_tasks.split(), precs.split(), int(rounds)
ref = precs[0]
out = {"precisions": precs, "quality": {}, "speed": {}}
if tasks:
    sys.path.insert(0, "scripts")
    import numpy as np
    import eval_peers as ep
    crops = [c["name"] for c in json.load(open(os.path.join(peers, "peers.json")))["crop_list"]]
    print("\n## Quality on the held-out crops (PSNR dB / SSIM, mean over crops)\n")
    print("| task | crops | " + " | ".join(precs) + " | " + " | ".join(
        f"Δ PSNR {p} − {ref}: mean (worst, best) | Δ SSIM | max 8-bit Δ" for p in precs[1:]) + " |")
    print("|---|---:|" + "---|" * len(precs) + "---:|---:|---:|" * len(precs[1:]))
    for t in tasks:
        rows = {p: [] for p in precs}
        levels = {p: 0 for p in precs}
        for c in crops:
            refimg = os.path.join(peers, "degraded", c, "ref.png")
            outs = {p: os.path.join(work, "q", c, f"{t}_{p}.png") for p in precs}
            if not all(os.path.exists(o) for o in outs.values()):
                continue
            clean = ep.load_rgb(refimg)[0]
            imgs = {p: ep.load_rgb(o)[0] for p, o in outs.items()}
            for p in precs:
                rows[p].append((ep.psnr(imgs[p], clean), ep.ssim(imgs[p], clean)))
                levels[p] = max(levels[p], int(round(255 * float(np.abs(imgs[p] - imgs[ref]).max()))))
        n = len(rows[ref])
        if n == 0:
            continue
        q = {"crops": n}
        cells = []
        for p in precs:
            q[p] = {"psnr": statistics.mean(r[0] for r in rows[p]), "ssim": statistics.mean(r[1] for r in rows[p]),
                    "per_crop_psnr": [r[0] for r in rows[p]]}
            cells.append(f"{q[p]['psnr']:.3f} / {q[p]['ssim']:.4f}")
        for p in precs[1:]:
            d = [a[0] - b[0] for a, b in zip(rows[p], rows[ref])]
            ds = statistics.mean(a[1] - b[1] for a, b in zip(rows[p], rows[ref]))
            q[p].update({"dpsnr_mean": statistics.mean(d), "dpsnr_min": min(d), "dpsnr_max": max(d),
                         "dssim_mean": ds, "max_level_diff": levels[p]})
            cells += [f"{statistics.mean(d):+.4f} ({min(d):+.4f}, {max(d):+.4f})", f"{ds:+.5f}", str(levels[p])]
        out["quality"][t] = q
        print(f"| {t} | {n} | " + " | ".join(cells) + " |")
if speed_tasks:
    print("\n## Speed (restore seconds per output megapixel, median of the rounds)\n")
    print("| task | output | " + " | ".join(f"s/MP {p}" for p in precs) + " | " + " | ".join(
        f"{ref}/{p} paired (per round)" for p in precs[1:]) + " |")
    print("|---|---|" + "---:|" * len(precs) + "---|" * len(precs[1:]))
    for t in speed_tasks:
        s = {p: [] for p in precs}
        mp = None
        for r in range(1, rounds + 1):
            for p in precs:
                st = json.load(open(os.path.join(work, "s", f"{t}-{p}-{r}.json")))
                mp = st["output_width"] * st["output_height"] / 1e6
                s[p].append(st["restore_s"] / mp)
        sp = {"output_mp": mp}
        cells = [f"{statistics.median(s[p]):.2f}" for p in precs]
        for p in precs:
            sp[p] = {"s_per_mp": s[p], "median": statistics.median(s[p])}
        for p in precs[1:]:
            ratios = [a / b for a, b in zip(s[ref], s[p])]
            sp[p]["paired_ratio"] = ratios
            cells.append(f"**{statistics.median(ratios):.2f}** ({', '.join(f'{x:.2f}' for x in ratios)})")
        out["speed"][t] = sp
        print(f"| {t} | {mp:.2f} MP | " + " | ".join(cells) + " |")
if json_out:
    with open(json_out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\nwrote {json_out}")
PY
