#!/usr/bin/env python3
"""PyTorch eager side of the FFHQ-256 benchmark (docs/performance.md).

Run with the project venv (torch 2.11.0), after the Rust bench has exported its model,
input and output (scripts/bench.sh does both):

    DAVI_BENCH_EXPORT=/tmp/davi-bench target/release/deps/restore-<hash>
    .venv/bin/python scripts/bench_pytorch.py /tmp/davi-bench

It holds its own, independent implementation of the ADM ("guided diffusion") U-Net forward,
written from the architecture in docs/algorithm.md (§2.2: cosine-then-sine
timestep embedding, GroupNorm(32) evaluated in f32, scale = first half of the embedding
projection, legacy head-first QKV attention with q and k each scaled by ch^-1/4 and the
softmax in f32, skip concatenation [h, skip]). No third-party model code is imported; the
weights are read from the Rust bench's safetensors file by a small parser (8-byte
little-endian header length, JSON header, raw little-endian data), not the safetensors
package.

It checks max |Δ| between this forward and the tch output for the same weights and input,
then times the eager forward (torch.no_grad, like the official evaluator; also
torch.inference_mode and channels-last) with the same intra-op thread count as the tch run,
and prints the ratio tch / PyTorch.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1", "BOOL": "?"}


def read_safetensors(path):
    """Return ({name: torch.Tensor}, metadata dict) from a safetensors file."""
    with open(path, "rb") as f:
        buf = bytearray(f.read())
    if len(buf) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    n = int.from_bytes(buf[:8], "little")
    header = json.loads(bytes(buf[8 : 8 + n]).decode("utf-8"))
    base = 8 + n
    meta = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, info in header.items():
        dt = info["dtype"]
        if dt not in DTYPES:
            raise ValueError(f"{name}: dtype {dt} not handled by this reader")
        begin, end = info["data_offsets"]
        np_dt = np.dtype(DTYPES[dt])
        count = (end - begin) // np_dt.itemsize
        arr = np.frombuffer(buf, dtype=np_dt, count=count, offset=base + begin)
        tensors[name] = torch.from_numpy(arr.reshape(info["shape"]).astype(np_dt.newbyteorder("="), copy=True))
    return tensors, meta


class ADMUNet:
    """ADM U-Net forward over a flat state dict with the official key names."""

    def __init__(self, weights, cfg):
        self.w = weights
        self.cfg = cfg
        self.mc = cfg["model_channels"]
        self.head_ch = cfg.get("num_head_channels", 64)
        self.num_heads = cfg.get("num_heads", 4)
        self.groups = cfg.get("norm_groups", 32)
        self.updown = cfg.get("resblock_updown", True)
        self.scale_shift = cfg.get("use_scale_shift_norm", True)
        self._plan()

    # ---- layout -------------------------------------------------------------------------
    def _plan(self):
        cfg = self.cfg
        mults = cfg["channel_mult"]
        nrb = cfg["num_res_blocks"]
        rates = {cfg["image_size"] // r for r in cfg["attention_resolutions"]}
        # each block: list of (kind, prefix, resample) with resample in {None, "up", "down"}
        enc = [[("conv", "input_blocks.0.0", None)]]
        ds = 1
        for level, _ in enumerate(mults):
            for _ in range(nrb):
                i = len(enc)
                block = [("res", f"input_blocks.{i}.0", None)]
                if ds in rates:
                    block.append(("attn", f"input_blocks.{i}.1", None))
                enc.append(block)
            if level != len(mults) - 1:
                i = len(enc)
                kind = "res" if self.updown else "down"
                enc.append([(kind, f"input_blocks.{i}.0", "down")])
                ds *= 2
        mid = [("res", "middle_block.0", None), ("attn", "middle_block.1", None), ("res", "middle_block.2", None)]
        dec = []
        for level in reversed(range(len(mults))):
            for i in range(nrb + 1):
                j = len(dec)
                block = [("res", f"output_blocks.{j}.0", None)]
                if ds in rates:
                    block.append(("attn", f"output_blocks.{j}.{len(block)}", None))
                if level > 0 and i == nrb:
                    kind = "res" if self.updown else "up"
                    block.append((kind, f"output_blocks.{j}.{len(block)}", "up"))
                    ds //= 2
                dec.append(block)
        assert len(dec) == len(enc), "one skip per decoder block"
        self.enc, self.mid, self.dec = enc, mid, dec

    # ---- primitives ---------------------------------------------------------------------
    def _p(self, name):
        return self.w.get(name)

    def gn(self, x, prefix):
        y = F.group_norm(x.float(), self.groups, self._p(prefix + ".weight").float(), self._p(prefix + ".bias").float(), 1e-5)
        return y.to(x.dtype)

    def conv(self, x, prefix, padding=1, stride=1):
        return F.conv2d(x, self._p(prefix + ".weight"), self._p(prefix + ".bias"), stride=stride, padding=padding)

    def linear(self, x, prefix):
        return F.linear(x, self._p(prefix + ".weight"), self._p(prefix + ".bias"))

    @staticmethod
    def resample(x, how):
        if how == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if how == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def timestep_embedding(self, t, dim):
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None, :]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
        return emb

    # ---- blocks -------------------------------------------------------------------------
    def resblock(self, x, emb, p, how):
        h = F.silu(self.gn(x, p + ".in_layers.0"))
        h = self.resample(h, how)
        x = self.resample(x, how)
        h = self.conv(h, p + ".in_layers.2")
        e = self.linear(F.silu(emb), p + ".emb_layers.1").to(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = torch.chunk(e, 2, dim=1)
            h = self.gn(h, p + ".out_layers.0") * (1 + scale) + shift
        else:
            h = self.gn(h + e, p + ".out_layers.0")
        h = self.conv(F.silu(h), p + ".out_layers.3")
        if self._p(p + ".skip_connection.weight") is not None:
            x = self.conv(x, p + ".skip_connection", padding=0)
        return x + h

    def attention(self, x, p):
        b, c, hh, ww = x.shape
        xf = x.reshape(b, c, hh * ww)
        qkv = F.conv1d(self.gn(xf, p + ".norm"), self._p(p + ".qkv.weight"), self._p(p + ".qkv.bias"))
        heads = c // self.head_ch if self.head_ch > 0 else self.num_heads
        ch = c // heads
        q, k, v = qkv.reshape(b * heads, 3 * ch, hh * ww).split(ch, dim=1)
        s = 1.0 / math.sqrt(math.sqrt(ch))
        w = torch.einsum("bct,bcs->bts", q * s, k * s)
        w = torch.softmax(w.float(), dim=-1).to(w.dtype)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, hh * ww)
        out = F.conv1d(a, self._p(p + ".proj_out.weight"), self._p(p + ".proj_out.bias"))
        return (xf + out).reshape(b, c, hh, ww)

    def layer(self, x, emb, spec):
        kind, p, how = spec
        if kind == "conv":
            return self.conv(x, p)
        if kind == "res":
            return self.resblock(x, emb, p, how)
        if kind == "attn":
            return self.attention(x, p)
        if kind == "down":  # plain Downsample (resblock_updown = False)
            if self._p(p + ".op.weight") is not None:
                return self.conv(x, p + ".op", padding=1, stride=2)
            return self.resample(x, "down")
        if kind == "up":  # plain Upsample
            x = self.resample(x, "up")
            if self._p(p + ".conv.weight") is not None:
                x = self.conv(x, p + ".conv")
            return x
        raise ValueError(kind)

    def forward(self, x, t):
        emb = self.timestep_embedding(t, self.mc).to(x.dtype)
        emb = self.linear(F.silu(self.linear(emb, "time_embed.0")), "time_embed.2")
        skips = []
        h = x
        for block in self.enc:
            for spec in block:
                h = self.layer(h, emb, spec)
            skips.append(h)
        for spec in self.mid:
            h = self.layer(h, emb, spec)
        for block in self.dec:
            h = torch.cat([h, skips.pop()], dim=1)
            for spec in block:
                h = self.layer(h, emb, spec)
        h = F.silu(self.gn(h, "out.0"))
        return self.conv(h, "out.2")


def stats(samples, cpu=None):
    d = {"median_s": statistics.median(samples), "min_s": min(samples), "samples_s": samples}
    if cpu:
        d.update(cpu_median_s=statistics.median(cpu), cpu_min_s=min(cpu), cpu_samples_s=cpu)
    return d


def paired_run(args, net, x, t, ref, threads, reps, report):
    """tch (co-process) and PyTorch forwards alternately, order flipped every rep."""
    env = dict(os.environ, DAVI_BENCH_SERVE="1", DAVI_BENCH_THREADS=str(threads))
    env.pop("DAVI_BENCH_DEVICE", None)
    proc = subprocess.Popen([args.tch_bin], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        ready = proc.stdout.readline().strip()
        if not ready.startswith("ready"):
            raise RuntimeError(f"tch co-process did not start: {ready!r}")

        def tch_forward():
            proc.stdin.write("forward\n")
            proc.stdin.flush()
            secs, cpu_s, mx = proc.stdout.readline().split()
            return float(secs), float(cpu_s), float(mx)

        def pt_forward():
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.no_grad():
                net.forward(x, t)
            return time.perf_counter() - t0, time.process_time() - c0

        tch_s, pt_s, tch_c, pt_c = [], [], [], []
        for _ in range(args.warmup):
            _, _, mx = tch_forward()
            pt_forward()
        for i in range(max(reps, 1)):
            if i % 2 == 0:
                a, ac, mx = tch_forward()
                b, bc = pt_forward()
            else:
                b, bc = pt_forward()
                a, ac, mx = tch_forward()
            tch_s.append(a)
            pt_s.append(b)
            tch_c.append(ac)
            pt_c.append(bc)
        proc.stdin.write("quit\n")
        proc.stdin.flush()
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    same = abs(mx - float(np.abs(ref).max())) <= 1e-6 * max(1.0, abs(mx))
    r = statistics.median(a / b for a, b in zip(tch_s, pt_s))
    rc = statistics.median(a / b for a, b in zip(tch_c, pt_c))
    print(f"[paired, tch co-process {ready}] tch forward wall median {statistics.median(tch_s):.4f} s min {min(tch_s):.4f} s,"
          f" cpu median {statistics.median(tch_c):.4f} s min {min(tch_c):.4f} s")
    print(f"[paired] PyTorch no_grad forward wall median {statistics.median(pt_s):.4f} s min {min(pt_s):.4f} s,"
          f" cpu median {statistics.median(pt_c):.4f} s min {min(pt_c):.4f} s (n={len(tch_s)})")
    print(f"ratio tch / PyTorch eager, paired call by call: wall median {r:.3f}, min/min {min(tch_s) / min(pt_s):.3f};"
          f" cpu median {rc:.3f}, min/min {min(tch_c) / min(pt_c):.3f}"
          f"  (co-process model {'matches' if same else 'DIFFERS from'} the exported one: max|out| {mx:.6e})")
    report["paired"] = {"tch": stats(tch_s, tch_c), "pytorch_no_grad": stats(pt_s, pt_c),
                        "ratio_tch_over_pytorch_paired_median": r, "ratio_min": min(tch_s) / min(pt_s),
                        "cpu_ratio_paired_median": rc, "cpu_ratio_min": min(tch_c) / min(pt_c), "threads": threads}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", help="folder the Rust bench exported to (DAVI_BENCH_EXPORT)")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the tch run's)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default: the tch run's)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--variants", default="no_grad,inference_mode,channels_last",
                    help="comma list of no_grad, inference_mode, channels_last")
    ap.add_argument("--tol", type=float, default=1e-4, help="max |Δ| allowed between tch and PyTorch")
    ap.add_argument("--tch-bin", default=None,
                    help="the Rust bench binary: also time tch and PyTorch alternately, call by call "
                         "(the binary runs as a co-process with DAVI_BENCH_SERVE=1), for a paired ratio")
    args = ap.parse_args()

    tch_report = {}
    tj = os.path.join(args.dir, "tch.json")
    if os.path.exists(tj):
        with open(tj) as f:
            tch_report = json.load(f)
    threads = args.threads or tch_report.get("threads") or torch.get_num_threads()
    reps = args.reps or tch_report.get("reps") or 5
    torch.set_num_threads(threads)

    weights, meta = read_safetensors(os.path.join(args.dir, "model.safetensors"))
    cfg = json.loads(meta["meta"])["unet"]
    net = ADMUNet(weights, cfg)
    x = torch.from_numpy(np.load(os.path.join(args.dir, "input.npy")).astype(np.float32))
    t = torch.full((x.shape[0],), 999, dtype=torch.int64)
    ref = np.load(os.path.join(args.dir, "forward_tch.npy")).astype(np.float32)
    nparams = sum(v.numel() for v in weights.values())

    print(f"== PyTorch {torch.__version__} eager, own ADM U-Net implementation ==")
    print(f"tensors {len(weights)}, parameters {nparams:,}; threads {threads} (torch.get_num_threads() = {torch.get_num_threads()}),"
          f" interop {torch.get_num_interop_threads()}; reps {reps}, warm-up {args.warmup}")
    print(f"mkldnn available {torch.backends.mkldnn.is_available()}, mkl {torch.backends.mkl.is_available()}")

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    report = {"torch": torch.__version__, "threads": threads, "reps": reps, "variants": {}}
    with torch.no_grad():
        out = net.forward(x, t)
    diff = float(np.abs(out.numpy() - ref).max())
    scale = float(np.abs(ref).max())
    ok = diff <= args.tol
    print(f"max |Δ| PyTorch vs tch = {diff:.3e} (max |out| {scale:.3e}, tolerance {args.tol:g}): {'OK' if ok else 'FAIL'}")
    report["max_abs_diff_vs_tch"] = diff

    fns = {}
    for v in variants:
        if v == "no_grad":
            def fn():
                with torch.no_grad():
                    return net.forward(x, t)
        elif v == "inference_mode":
            def fn():
                with torch.inference_mode():
                    return net.forward(x, t)
        elif v == "channels_last":
            xcl = x.contiguous(memory_format=torch.channels_last)

            def fn(xcl=xcl):
                with torch.no_grad():
                    return net.forward(xcl, t)
        else:
            print(f"unknown variant {v}", file=sys.stderr)
            continue
        fns[v] = fn
    # Variants alternate rep by rep (rotating order) so background load hits all alike.
    names = list(fns)
    outs = {v: None for v in names}
    samples = {v: [] for v in names}
    cpu = {v: [] for v in names}
    for _ in range(args.warmup):
        for v in names:
            outs[v] = fns[v]()
    for i in range(max(reps, 1)):
        k = i % len(names)
        for v in names[k:] + names[:k]:
            t0, c0 = time.perf_counter(), time.process_time()
            outs[v] = fns[v]()
            samples[v].append(time.perf_counter() - t0)
            cpu[v].append(time.process_time() - c0)
    for v in names:
        d = float(np.abs(outs[v].float().contiguous().numpy() - ref).max())
        st = stats(samples[v], cpu[v])
        report["variants"][v] = dict(st, max_abs_diff_vs_tch=d)
        line = (f"[pytorch {v}] forward wall median {st['median_s']:.4f} s  min {st['min_s']:.4f} s |"
                f" cpu median {st['cpu_median_s']:.4f} s  min {st['cpu_min_s']:.4f} s  (n={len(samples[v])})  max|Δ| vs tch {d:.2e}")
        if v != names[0]:
            base, cbase = samples[names[0]], cpu[names[0]]
            sp = statistics.median(b / s for b, s in zip(base, samples[v]))
            csp = statistics.median(b / s for b, s in zip(cbase, cpu[v]))
            line += f"\n    speed-up vs {names[0]}: wall paired median x{sp:.3f}, min/min x{min(base) / st['min_s']:.3f}; cpu paired median x{csp:.3f}"
            report["variants"][v]["speedup_vs_" + names[0]] = sp
            report["variants"][v]["cpu_speedup_vs_" + names[0]] = csp
        print(line)

    if "no_grad" in report["variants"] and "forward" in tch_report:
        pt = report["variants"]["no_grad"]
        tf = tch_report["forward"]
        r_med = tf["median_s"] / pt["median_s"]
        r_min = tf["min_s"] / pt["min_s"]
        report["ratio_tch_over_pytorch_median"] = r_med
        report["ratio_tch_over_pytorch_min"] = r_min
        print(f"ratio tch forward / PyTorch eager (no_grad), same threads, separate runs: wall median {r_med:.3f}  min {r_min:.3f}")
        if "cpu_median_s" in tf and "cpu_median_s" in pt:
            report["cpu_ratio_tch_over_pytorch_median"] = tf["cpu_median_s"] / pt["cpu_median_s"]
            print(f"    cpu median {tf['cpu_median_s'] / pt['cpu_median_s']:.3f}  min {tf['cpu_min_s'] / pt['cpu_min_s']:.3f}")
        tr = tch_report.get("restore")
        if tr:
            print(f"ratio tch one-step restore / PyTorch eager forward: median {tr['median_s'] / pt['median_s']:.3f}")
        print(f"ratio tch restore / tch forward (median): {tch_report.get('ratio_restore_over_forward_median', float('nan')):.3f}")
    if args.tch_bin:
        paired_run(args, net, x, t, ref, threads, reps, report)
    with open(os.path.join(args.dir, "pytorch.json"), "w") as f:
        json.dump(report, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
