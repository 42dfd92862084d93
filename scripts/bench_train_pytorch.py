#!/usr/bin/env python3
"""PyTorch eager side of the training-throughput benchmark (docs/performance.md).

scripts/bench-train.sh runs it next to `davi train-prior` for prior presets:

    .venv/bin/python scripts/bench_train_pytorch.py --config RUN/config.toml \
        --weights RUN/model.safetensors --steps 20 --warmup 3 --json out.json

It times the same optimiser step that libdavi's prior trainer (plugins/engine/src/train/
prior.rs) runs, written here in plain PyTorch with no third-party diffusion code:

- the network: the project's own eager ADM U-Net (`ADMUNet` from scripts/bench_pytorch.py,
  legacy einsum attention and f32 GroupNorm as in the official guided-diffusion code), its
  weights made trainable leaves; the U-Net config comes from the weights' safetensors
  metadata and is checked against the run's `[prior.unet]`;
- the data: a fresh random batch `(batch, 3, size, size)` in [-1, 1] per step (libdavi crops
  photos in a background prefetch thread; that work is not reproduced here);
- the loss: uniform t, ε ~ N(0, I), x_t = q_sample(x0, t, ε), the improved-DDPM hybrid loss with
  learned-range variance: per-sample ε-MSE plus the variational-bound term (KL between the true
  and the model posterior, or the discretised Gaussian NLL at t = 0, in bits), with ε̂
  detached inside the VB term so only v gets its gradient; the beta schedule (`i2sb`,
  `linear` or `cosine`) and its DDPM arrays are computed in float64 as libdavi does;
- backward of the batch mean, `.item()` of the MSE and VB means (libdavi logs them);
- torch.optim.AdamW with libdavi's settings (lr from the config, betas 0.9/0.999, eps 1e-8,
  weight decay 0.01 — PyTorch's defaults), zero_grad;
- the EMA of libdavi / ema_pytorch (beta 0.9999, every 5th call, hard copies up to call 100).

Each step is timed from the start of the batch to the end of the EMA update; the first
`--warmup` steps are not counted.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pytorch import ADMUNet, read_safetensors  # noqa: E402


# ---- diffusion arrays (float64, as plugins/engine/src/diffusion/schedule.rs) -------------
def betas_for(schedule, steps):
    t = float(steps)
    scale = 1000.0 / t
    if schedule == "linear":
        return np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)
    if schedule == "i2sb":
        return np.linspace(math.sqrt(scale * 1e-4), math.sqrt(scale * 0.02), steps, dtype=np.float64) ** 2
    if schedule == "cosine":
        def abar(u):
            return math.cos(((u / t) + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1.0 - abar(i + 1.0) / abar(float(i)), 0.999) for i in range(steps)])
    raise ValueError(f"unknown schedule {schedule!r}")


class Diffusion:
    def __init__(self, schedule, steps):
        b = betas_for(schedule, steps)
        abar = np.cumprod(1.0 - b)
        abar_prev = np.concatenate([[1.0], abar[:-1]])
        post_var = b * (1.0 - abar_prev) / (1.0 - abar)
        post_logvar = np.log(np.concatenate([post_var[1:2], post_var[1:]]) if steps > 1 else post_var)
        arrays = {
            "sqrt_abar": np.sqrt(abar),
            "sqrt_1m_abar": np.sqrt(1.0 - abar),
            "sqrt_recip_abar": np.sqrt(1.0 / abar),
            "sqrt_recipm1_abar": np.sqrt(1.0 / abar - 1.0),
            "post_coef1": b * np.sqrt(abar_prev) / (1.0 - abar),
            "post_coef2": (1.0 - abar_prev) * np.sqrt(1.0 - b) / (1.0 - abar),
            "post_logvar": post_logvar,
            "log_betas": np.log(b),
        }
        self.n = steps
        self.a = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}

    def g(self, name, t, like):
        """arr[t] per sample, cast to like's dtype, shaped [B, 1, 1, 1]."""
        return self.a[name].index_select(0, t).to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0, t, eps):
        return self.g("sqrt_abar", t, x0) * x0 + self.g("sqrt_1m_abar", t, x0) * eps

    def posterior(self, x0, x_t, t):
        mean = self.g("post_coef1", t, x_t) * x0 + self.g("post_coef2", t, x_t) * x_t
        return mean, self.g("post_logvar", t, x_t).expand_as(x_t)


def normal_kl(m1, lv1, m2, lv2):
    return 0.5 * (lv2 - lv1 - 1.0 + torch.exp(lv1 - lv2) + (m1 - m2) ** 2 * torch.exp(-lv2))


def std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_ll(x, mean, log_scale):
    c = x - mean
    inv = torch.exp(-log_scale)
    cdf_plus = std_normal_cdf(inv * (c + 1.0 / 255.0))
    cdf_min = std_normal_cdf(inv * (c - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_1m_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    mid = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_1m_cdf_min, mid))


def hybrid_loss(diff, net, x0, t, eps):
    """Per-sample (mse, vb): ε-MSE plus the VB term of the learned-range variance."""
    x_t = diff.q_sample(x0, t, eps)
    out = net.forward(x_t, t)
    c = x0.shape[1]
    eps_hat, v = out[:, :c], out[:, c:]
    mse = ((eps - eps_hat) ** 2).flatten(1).mean(1)
    eps_d = eps_hat.detach()
    pred_x0 = diff.g("sqrt_recip_abar", t, x_t) * x_t - diff.g("sqrt_recipm1_abar", t, x_t) * eps_d
    model_mean, _ = diff.posterior(pred_x0, x_t, t)
    frac = (v + 1.0) / 2.0
    model_logvar = frac * diff.g("log_betas", t, v) + (1.0 - frac) * diff.g("post_logvar", t, v)
    true_mean, true_logvar = diff.posterior(x0, x_t, t)
    kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).flatten(1).mean(1) / math.log(2.0)
    nll = -discretized_gaussian_ll(x0, model_mean, 0.5 * model_logvar).flatten(1).mean(1) / math.log(2.0)
    vb = torch.where(t == 0, nll, kl)
    return mse, vb


class Ema:
    """libdavi's Ema (ema_pytorch defaults): every 5th call; hard copy until call 100."""

    def __init__(self, params, beta=0.9999, every=5, after=100, power=2.0 / 3.0):
        self.shadow = [p.detach().clone() for p in params]
        self.beta, self.every, self.after, self.power = beta, every, after, power
        self.calls = 0

    def decay_at(self, n):
        if n % self.every:
            return None
        if n <= self.after:
            return 0.0
        return min(max(1.0 - (1.0 + (n - self.after)) ** -self.power, 0.0), self.beta)

    @torch.no_grad()
    def update(self, params):
        d = self.decay_at(self.calls)
        self.calls += 1
        if d is None:
            return
        for e, p in zip(self.shadow, params):
            if d == 0.0:
                e.copy_(p)
            else:
                e.lerp_(p, 1.0 - d)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="the libdavi run's config.toml (batch, patch size, lr, schedule, U-Net, threads)")
    ap.add_argument("--weights", required=True, help="initial weights: a libdavi model file (safetensors with its U-Net config)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--schedule", default=None)
    ap.add_argument("--diffusion-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the config's run.threads, else 1)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--json", help="write the step times and settings here")
    ap.add_argument("--label", default="PyTorch eager")
    args = ap.parse_args()

    cfg = {}
    if args.config:
        if tomllib is None:
            sys.exit("--config needs Python 3.11 (tomllib)")
        with open(args.config, "rb") as f:
            cfg = tomllib.load(f)
        if "prior" not in cfg:
            sys.exit(f"{args.config}: not a prior run (no [prior] section); only the prior step has a PyTorch twin")
    prior, run, data = cfg.get("prior", {}), cfg.get("run", {}), cfg.get("data", {})
    batch = args.batch or prior.get("batch", 16)
    size = args.size or data.get("size", 32)
    lr = args.lr or prior.get("lr", 2e-4)
    schedule = args.schedule or prior.get("schedule", "i2sb")
    nsteps = args.diffusion_steps or prior.get("diffusion_steps", 1000)
    threads = args.threads or run.get("threads") or 1
    if prior.get("micro_batch") not in (None, batch):
        print(f"note: the run uses micro_batch {prior['micro_batch']}; this step runs the whole batch at once", file=sys.stderr)
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)

    weights, meta = read_safetensors(args.weights)
    ucfg = json.loads(meta["meta"])["unet"]
    want = prior.get("unet")
    if want:
        diffs = {k: (ucfg.get(k), v) for k, v in want.items() if ucfg.get(k) != v}
        if diffs:
            sys.exit(f"{args.weights}: U-Net config differs from the run's [prior.unet]: {diffs}")
    params = []
    for k in sorted(weights):
        weights[k] = weights[k].float().contiguous().requires_grad_(True)
        params.append(weights[k])
    net = ADMUNet(weights, ucfg)
    diff = Diffusion(schedule, nsteps)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    ema = Ema(params)
    nparams = sum(p.numel() for p in params)
    c = ucfg.get("in_channels", 3)

    unused = None

    def step():
        nonlocal unused
        x0 = torch.rand(batch, c, size, size) * 2.0 - 1.0
        opt.zero_grad()
        t = torch.randint(0, diff.n, (batch,), dtype=torch.int64)
        eps = torch.randn_like(x0)
        mse, vb = hybrid_loss(diff, net, x0, t, eps)
        (mse + vb).mean().backward()
        if unused is None:
            unused = [k for k in sorted(weights) if weights[k].grad is None]
        m, v = mse.mean().item(), vb.mean().item()
        opt.step()
        opt.zero_grad()
        ema.update(params)
        return m, v

    times, cpu, first = [], [], None
    for i in range(args.warmup + args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        m, v = step()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if first is None:
            first = (m, v)
        if not (math.isfinite(m) and math.isfinite(v)):
            sys.exit(f"non-finite loss at step {i + 1}: mse {m} vb {v}")
        if i >= args.warmup:
            times.append(dt)
            cpu.append(dc)
    if unused:
        print(f"warning: {len(unused)} tensors got no gradient: {unused[:5]}", file=sys.stderr)
    med = statistics.median(times)
    print(f"{args.label} (torch {torch.__version__}, {threads} thread(s)), batch {batch}, {size}x{size}, "
          f"{nparams / 1e6:.2f} M params: {len(times)} timed steps, median {med:.3f} s/step (min {min(times):.3f}), "
          f"cpu median {statistics.median(cpu):.3f} s; first-step mse {first[0]:.4f} vb {first[1]:.4f}, last mse {m:.4f} vb {v:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": threads, "batch": batch, "size": size, "lr": lr,
                       "schedule": schedule, "diffusion_steps": nsteps, "params": nparams, "step_s": times,
                       "cpu_s": cpu, "median_s": med, "min_s": min(times), "first_terms": first, "last_terms": [m, v],
                       "no_grad_tensors": unused}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
