#!/usr/bin/env python3
"""What users run: `davi restore` of whole photographs with the default models (issue 15).

For every default model and photo size it runs the release CLI in a child process,
`davi restore IN -o OUT --task T --device cpu --stats-json S`, and reports

- seconds per megapixel of output (the child's wall time, model load, decoding and
  encoding included; and the restore alone, from --stats-json);
- the floor: the network FLOPs of the tiles (or windows) the restore actually ran, which the
  CLI counts (`Restorer::network_work`, from `UNetConfig::forward_flops`), divided by this
  machine's conv/GEMM rate measured in the same run (the better of a large f32 matrix
  product and a convolution of the shipped models' shape, libtorch at the restores' thread
  count), and the ratio time / floor;
- peak RSS of the child (wait4's ru_maxrss), its CPU time and minor page faults;
- the same with a second process keeping one core busy (`sh -c 'while :; do :; done'`,
  started beside each run in this process's session and killed after it), and the ratio
  loaded / quiet;
- a seam score for tiled models: the mean |step| between neighbouring output pixels on the
  rows and columns where tiles start or end, divided by the same 8 and 16 pixels to either
  side (1.0: tile edges look like their surroundings; a seam raises it).

Inputs are made once per size in the work folder: a photograph (data/photos/heldout, else a
synthetic picture) resized to the output size, then degraded by `davi degrade --task T`, so
every model gets the observation it is made for (sr4 gets a quarter-side input).

Run through scripts/bench-photo.sh, which builds the release CLI. Examples:

    scripts/bench-photo.sh                                   # all models, 1/4/12 MP, quiet + loaded
    scripts/bench-photo.sh --models denoise --mp 0.25 --conditions quiet     # a smoke run
    scripts/bench-photo.sh --models denoise --sizes 4096x4096 --conditions quiet  # the RSS target
    scripts/bench-photo.sh --models denoise --mp 1 --variants default,intraop,intraop-passive,no-mallopt

Targets (issue 15; printed, never asserted): time ≤ 1.5 × floor on a quiet machine; loaded /
quiet ≤ 1.3; a 4096×4096 RGB restore under 2 GiB peak RSS with no seams.
"""
import argparse
import glob
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["sr4", "deblur", "denoise", "inpaint", "colorize"]

# Named ways of running the CLI: (extra CLI flags, extra environment).
VARIANTS = {
    "default": ([], {}),
    # One tile batch at a time, split across libtorch's intra-op (OpenMP) threads: the
    # behaviour before tile workers; libgomp's default wait policy (spin ~300k rounds).
    "intraop": (["--tile-workers", "1"], {}),
    # The same with OpenMP told not to spin (must be in the environment before the process starts).
    "intraop-passive": (["--tile-workers", "1"], {"OMP_WAIT_POLICY": "PASSIVE"}),
    # Workers, with OpenMP told not to spin (only the few whole-image operations use a team).
    "passive": ([], {"OMP_WAIT_POLICY": "PASSIVE"}),
    # glibc's allocator defaults instead of the raised mmap/trim thresholds the CLI sets.
    "no-mallopt": ([], {"DAVI_MALLOPT": "off"}),
    # One thread in all.
    "threads1": (["--threads", "1"], {}),
}


def log(*a):
    print(*a, flush=True)


# ---- machine -------------------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def busiest(n=5):
    try:
        out = subprocess.run(["ps", "-eo", "pid,ni,pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True, timeout=10).stdout
        return out.strip().splitlines()[: n + 1]
    except (OSError, subprocess.SubprocessError):
        return []


def measure_rate(threads, seconds=2.0):
    """GFLOP/s of libtorch (this venv's, the library the CLI links) at `threads` intra-op
    threads: the best of repeated runs of a 2048³ f32 matrix product and of a 3×3
    convolution shaped like the shipped models' middle layers (16 tiles, 64 → 64 channels,
    32×32). Returns a dict."""
    import torch

    torch.set_num_threads(threads)
    res = {"threads": threads, "torch": torch.__version__}
    with torch.no_grad():
        a = torch.randn(2048, 2048)
        b = torch.randn(2048, 2048)
        x = torch.randn(16, 64, 32, 32)
        w = torch.randn(64, 64, 3, 3)
        x0 = torch.randn(16, 32, 64, 64)
        w0 = torch.randn(32, 32, 3, 3)
        cases = {
            "gemm_2048": (lambda: a @ b, 2.0 * 2048 ** 3),
            "conv3x3_16x64x32x32": (lambda: torch.nn.functional.conv2d(x, w, padding=1), 2.0 * 64 * 64 * 9 * 16 * 32 * 32),
            "conv3x3_16x32x64x64": (lambda: torch.nn.functional.conv2d(x0, w0, padding=1), 2.0 * 32 * 32 * 9 * 16 * 64 * 64),
        }
        for name, (fn, flops) in cases.items():
            fn()
            fn()
            best, t_end = float("inf"), time.perf_counter() + seconds
            n = 0
            while n < 3 or time.perf_counter() < t_end:
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
                n += 1
            res[name + "_gflops"] = flops / best / 1e9
    res["conv_gflops"] = max(res["conv3x3_16x64x32x32_gflops"], res["conv3x3_16x32x64x64_gflops"])
    res["rate_gflops"] = max(res["gemm_2048_gflops"], res["conv_gflops"])
    return res


# ---- inputs --------------------------------------------------------------------------------

def size_for_mp(mp):
    """Output W×H of about `mp` megapixels, 4:3, both multiples of 16."""
    w = int(round(math.sqrt(mp * 1e6 * 4 / 3) / 16)) * 16
    h = int(round(w * 3 / 4 / 16)) * 16
    return max(w, 16), max(h, 16)


def parse_sizes(args):
    sizes = []
    for mp in filter(None, (s.strip() for s in (args.mp or "").split(","))):
        w, h = size_for_mp(float(mp))
        sizes.append((f"{float(mp):g}MP", w, h))
    for s in filter(None, (s.strip() for s in (args.sizes or "").split(","))):
        w, h = (int(v) for v in s.lower().split("x"))
        if w % 4 or h % 4:
            raise SystemExit(f"bench_photo: --sizes {s}: width and height must be multiples of 4 (sr4)")
        sizes.append((f"{w}x{h}", w, h))
    return sizes


def source_photo(path):
    if path:
        return Image.open(path).convert("RGB")
    found = sorted(glob.glob(os.path.join(ROOT, "data", "photos", "heldout", "*.png")))
    for p in found:
        im = Image.open(p).convert("RGB")
        if min(im.size) >= 256:
            return im
    # Synthetic: smooth gradients, edges and texture (restore cost does not depend on content).
    h, w = 768, 1024
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(0)
    img = np.stack([
        0.5 + 0.4 * np.sin(xx / 37.0) * np.cos(yy / 53.0),
        0.5 + 0.3 * np.sin((xx + yy) / 71.0),
        (xx // 64 + yy // 64) % 2 * 0.5 + 0.25,
    ], -1) + rng.normal(0, 0.03, (h, w, 3))
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))


def make_inputs(davi, work, photo, label, w, h, task, env):
    d = os.path.join(work, "inputs")
    os.makedirs(d, exist_ok=True)
    clean = os.path.join(d, f"clean-{w}x{h}.png")
    if not os.path.exists(clean):
        photo.resize((w, h), Image.LANCZOS).save(clean + ".tmp.png")
        os.replace(clean + ".tmp.png", clean)
    obs = os.path.join(d, f"{task}-{w}x{h}.png")
    if not os.path.exists(obs):
        r = subprocess.run([davi, "degrade", clean, "-o", obs + ".tmp.png", "--task", task], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"davi degrade --task {task} failed: {r.stderr.strip()}")
        os.replace(obs + ".tmp.png", obs)
    return obs


# ---- one run -------------------------------------------------------------------------------

def starts(length, tile, overlap):
    """Tile starts, as plugins/engine/src/tiling.rs computes them."""
    if length <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    s = [i * stride for i in range(length) if i * stride + tile < length]
    s.append(length - tile)
    return sorted(set(s))


def seam_score(out_png, tile, overlap):
    """Mean |step| between neighbouring pixels across tile edges, divided by the mean |step|
    8 and 16 pixels to either side of those edges (the same phase modulo 4 and 8, so the
    block structure of a 4x super-resolution does not count as a seam)."""
    a = np.asarray(Image.open(out_png).convert("RGB"), dtype=np.int16)
    h, w = a.shape[:2]
    dx = np.abs(np.diff(a, axis=1)).mean(axis=(0, 2))  # step between column c and c+1
    dy = np.abs(np.diff(a, axis=0)).mean(axis=(1, 2))

    def edges_and_reference(length, t, steps):
        edges = sorted({c for s in starts(length, t, overlap) for c in (s - 1, s + t - 1) if 0 <= c < length - 1})
        ref = sorted({c + d for c in edges for d in (-16, -8, 8, 16) if 0 <= c + d < length - 1} - set(edges))
        return steps[edges], steps[ref]

    ex, rx = edges_and_reference(w, min(tile, w), dx)
    ey, ry = edges_and_reference(h, min(tile, h), dy)
    at_edges, near = np.concatenate([ex, ey]), np.concatenate([rx, ry])
    if at_edges.size == 0 or near.size == 0 or near.mean() == 0:
        return None
    return float(at_edges.mean() / near.mean())


def proc_cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run_restore(davi, inp, out, stats, task, flags, env, timeout, loaded):
    busy, busy_cpu0, busy_cpu = None, None, None
    if loaded:
        # Same session and nice level as the restore: one more runnable thread competing for
        # the cores, like a desktop application busy on one core.
        busy = subprocess.Popen(["sh", "-c", "while :; do :; done"])
        time.sleep(0.5)
        busy_cpu0 = proc_cpu_seconds(busy.pid)
    cmd = [davi, "restore", inp, "-o", out, "--task", task, "--device", "cpu", "--stats-json", stats] + flags
    status, ru = None, None
    with open(stats + ".stderr", "w+b") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            _, status, ru = wait4_timeout(p, timeout)
        finally:
            wall = time.perf_counter() - t0
            if busy is not None:
                busy_cpu = proc_cpu_seconds(busy.pid)
                busy.kill()
                busy.wait()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    res = {
        "cmd": " ".join(cmd),
        "wall_s": wall,
        "returncode": os.waitstatus_to_exitcode(status) if status is not None else None,
        "peak_rss_mib": ru.ru_maxrss / 1024 if ru else None,
        "cpu_s": (ru.ru_utime + ru.ru_stime) if ru else None,
        "user_s": ru.ru_utime if ru else None,
        "sys_s": ru.ru_stime if ru else None,
        "minor_faults": ru.ru_minflt if ru else None,
    }
    if busy is not None and busy_cpu is not None and busy_cpu0 is not None:
        res["busy_loop_cpu_share"] = (busy_cpu - busy_cpu0) / max(wall, 1e-9)
    if res["returncode"] != 0:
        res["error"] = stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        return res
    with open(stats) as f:
        res["stats"] = json.load(f)
    return res


def wait4_timeout(p, timeout):
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return pid, status, ru
        if time.monotonic() > deadline:
            p.send_signal(signal.SIGKILL)
            pid, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            return pid, status, ru
        time.sleep(0.05)


# ---- report --------------------------------------------------------------------------------

def fmt(v, spec=".2f", none="–"):
    return none if v is None else format(v, spec)


def summarise(r, rate_gflops):
    s = r.get("stats")
    if not s:
        return r
    mp = s["output_width"] * s["output_height"] / 1e6
    flops = s["network"]["flops"]
    floor = flops / (rate_gflops * 1e9) if rate_gflops else None
    r.update({
        "output_mp": mp,
        "s_per_mp": r["wall_s"] / mp,
        "restore_s_per_mp": s["restore_s"] / mp,
        "floor_s": floor,
        "ratio": r["wall_s"] / floor if floor else None,
        "restore_ratio": s["restore_s"] / floor if floor else None,
        "network_gflop": flops / 1e9,
        "achieved_gflops": flops / s["restore_s"] / 1e9 if s["restore_s"] > 0 else None,
    })
    return r


def table(rows):
    head = ("| model | variant | size | cond. | s/MP | restore s/MP | floor s | time/floor | restore/floor "
            "| GFLOP/s achieved | peak RSS MiB | CPU s | seams | loaded/quiet |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "stats" not in r:
            out.append(f"| {r['model']} | {r['variant']} | {r['size']} | {r['condition']} | FAILED: {' '.join(r.get('error', []))} |")
            continue
        out.append(
            f"| {r['model']} | {r['variant']} | {r['width']}x{r['height']} ({r['output_mp']:.2f} MP) | {r['condition']} "
            f"| {r['s_per_mp']:.2f} | {r['restore_s_per_mp']:.2f} | {fmt(r['floor_s'])} | {fmt(r['ratio'])} "
            f"| {fmt(r['restore_ratio'])} | {fmt(r['achieved_gflops'], '.1f')} | {r['peak_rss_mib']:.0f} "
            f"| {r['cpu_s']:.1f} | {fmt(r.get('seam_score'), '.3f')} | {fmt(r.get('loaded_over_quiet'))} |"
        )
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description="davi restore on whole photographs: s/MP, floor, RSS, load (issue 15)")
    ap.add_argument("--davi", required=True, help="the davi CLI binary (release build)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--mp", default="1,4,12", help="output megapixels, comma list (4:3); '' for none")
    ap.add_argument("--sizes", default="", help="extra output sizes WxH, comma list (e.g. 4096x4096)")
    ap.add_argument("--conditions", default="quiet,loaded", help="quiet, loaded (one core kept busy), or both")
    ap.add_argument("--variants", default="default", help=f"comma list of {', '.join(VARIANTS)}, or all")
    ap.add_argument("--threads", type=int, default=None, help="--threads for every restore (default: libtorch's)")
    ap.add_argument("--reps", type=int, default=1, help="runs per configuration (the fastest counts)")
    ap.add_argument("--photo", default=None, help="source photograph (default: data/photos/heldout, else synthetic)")
    ap.add_argument("--work", default=None, help="folder for inputs, outputs and the report (default: a temporary one)")
    ap.add_argument("--json", default=None, help="write every run as JSON here (default: WORK/bench-photo.json)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per restore before it is killed")
    args = ap.parse_args()

    davi = os.path.abspath(args.davi)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"bench_photo: unknown model {m} (known: {', '.join(MODELS)})")
    variants = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"bench_photo: unknown variant {v} (known: {', '.join(VARIANTS)})")
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    for c in conditions:
        if c not in ("quiet", "loaded"):
            raise SystemExit(f"bench_photo: unknown condition {c} (quiet, loaded)")
    sizes = parse_sizes(args)
    if not sizes:
        raise SystemExit("bench_photo: no sizes (--mp / --sizes)")
    work = args.work or os.path.join(os.environ.get("TMPDIR", "/tmp"), f"davi-bench-photo-{os.getpid()}")
    os.makedirs(work, exist_ok=True)
    base_env = dict(os.environ)
    threads = args.threads
    import torch  # noqa: E402  (after argument errors, which should be fast)

    rate_threads = threads or torch.get_num_threads()
    log(f"== machine: {cpu_model()}, {os.cpu_count()} CPUs; {platform.platform()}")
    log(f"load average {loadavg()}; busiest processes:")
    for line in busiest():
        log("   " + line)
    log(f"davi: {davi}; work folder: {work}")
    log(f"models {models}; sizes {[s[0] for s in sizes]}; conditions {conditions}; variants {variants}; threads {threads or 'default'}")

    log(f"== conv/GEMM rate (libtorch {torch.__version__}, {rate_threads} threads)")
    rate0 = measure_rate(rate_threads)
    log("   " + ", ".join(f"{k} {v:.1f}" for k, v in rate0.items() if k.endswith("gflops")))

    photo = source_photo(args.photo)
    rows = []
    for model in models:
        for label, w, h in sizes:
            obs = make_inputs(davi, work, photo, label, w, h, model, base_env)
            for variant in variants:
                flags, extra = VARIANTS[variant]
                flags = list(flags) + (["--threads", str(threads)] if threads and "--threads" not in flags else [])
                env = dict(base_env, **extra)
                by_cond = {}
                for cond in conditions:
                    best = None
                    for rep in range(args.reps):
                        tag = f"{model}-{variant}-{label}-{cond}-{rep}"
                        out = os.path.join(work, f"out-{tag}.png")
                        stats = os.path.join(work, f"stats-{tag}.json")
                        log(f"-- {model} {variant} {label} ({w}x{h}) {cond} rep {rep + 1}/{args.reps}; load avg {loadavg()}")
                        r = run_restore(davi, obs, out, stats, model, flags, env, args.timeout, cond == "loaded")
                        r.update({"model": model, "variant": variant, "size": label, "width": w, "height": h, "condition": cond, "rep": rep})
                        summarise(r, rate0["rate_gflops"])
                        if "stats" in r:
                            st = r["stats"]
                            if st.get("tile"):
                                t = st["tile"]
                                r["seam_score"] = seam_score(out, t, t // 4)
                            log(f"   wall {r['wall_s']:.2f} s ({r['s_per_mp']:.2f} s/MP; restore {st['restore_s']:.2f} s), "
                                f"floor {fmt(r['floor_s'])} s, ratio {fmt(r['ratio'])}, peak RSS {r['peak_rss_mib']:.0f} MiB, "
                                f"CPU {r['cpu_s']:.1f} s (sys {r['sys_s']:.1f}), {st['network']['calls']} network calls, "
                                f"{st['network']['samples']} tiles/windows" +
                                (f", busy loop got {r['busy_loop_cpu_share']:.0%} of a core" if "busy_loop_cpu_share" in r else ""))
                        else:
                            log(f"   FAILED (exit {r['returncode']}): {' '.join(r.get('error', []))}")
                        if best is None or ("stats" in r and ("stats" not in best or r["wall_s"] < best["wall_s"])):
                            best = r
                        if os.path.exists(out) and not args.work:
                            os.remove(out)
                    by_cond[cond] = best
                    rows.append(best)
                q, l = by_cond.get("quiet"), by_cond.get("loaded")
                if q and l and "stats" in q and "stats" in l:
                    l["loaded_over_quiet"] = l["wall_s"] / q["wall_s"]
                    log(f"   loaded / quiet = {l['loaded_over_quiet']:.2f}")

    log(f"== conv/GEMM rate again, after the runs ({rate_threads} threads)")
    rate1 = measure_rate(rate_threads)
    log("   " + ", ".join(f"{k} {v:.1f}" for k, v in rate1.items() if k.endswith("gflops")))
    log(f"load average {loadavg()}")

    log("\n== results (floor = network FLOPs of the tiles run / "
        f"{rate0['rate_gflops']:.1f} GFLOP/s, the best rate measured at the start; time = the child's wall clock)\n")
    log(table(rows))
    log("\nTargets (issue 15): time/floor ≤ 1.5 quiet; loaded/quiet ≤ 1.3; 4096x4096 under 2048 MiB peak RSS, seams ≈ 1.0.")
    for r in rows:
        if r.get("width") == 4096 and r.get("height") == 4096 and "stats" in r:
            ok = r["peak_rss_mib"] < 2048
            log(f"4096x4096 {r['model']} {r['variant']} {r['condition']}: peak RSS {r['peak_rss_mib']:.0f} MiB "
                f"({'under' if ok else 'OVER'} 2 GiB), seam score {fmt(r.get('seam_score'), '.3f')}")
    report = {
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "rate_start": rate0, "rate_end": rate1, "runs": rows,
    }
    path = args.json or os.path.join(work, "bench-photo.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    log(f"\nwrote {path}")
    failed = [r for r in rows if "stats" not in r]
    if not args.work:
        shutil.rmtree(os.path.join(work, "inputs"), ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
