#!/usr/bin/env python3
"""Classical peers on the official DAVI operators, scored on 256x256 validation crops.

Run in the separate evaluation environment (scripts/setup-eval.sh makes it; BM3D is licensed
for non-commercial use only and so never enters .venv or libdavi):

    bash scripts/setup-eval.sh
    .venv-eval/bin/python scripts/eval_peers.py --images data/photos/heldout \
        --out peers.json --markdown peers.md --save-degraded peers-degraded

For every readable image under --images (recursive, sorted, png/jpg/jpeg/tif/tiff, as
`davi eval` lists them) it takes --crops-per-image deterministic 256x256 crops, simulates
each task's measurement exactly as libdavi's operators do (plugins/engine/src/operators/,
default specs of davi_sdk::OperatorSpec::for_task), restores it with the task's classical
peer and with the trivial lift of the measurement, and scores both against the crop.

Tasks (images x in [-1, 1]; y = A x + sigma n, n ~ N(0, I), noise added after A):
  sr4       A = mean over non-overlapping 4x4 blocks (avg_pool2d 4, stride 4), sigma 0.05.
            lift: bilinear up-sampling, align_corners=False (libdavi's lift);
            peer: bicubic up-sampling (PIL, Keys a = -0.5).
  deblur    A = 'same'-size correlation with the normalised 61-tap Gaussian (sigma 3) along
            rows and columns, zero padding in [-1, 1] units, no renormalisation at the
            borders (BlurMode::ZeroPadded; the kernel is symmetric, so this is the true
            convolution), sigma 0.05.
            lift: the blurred measurement itself;
            peer: FFT Wiener deconvolution (gradient-energy Tikhonov regulariser), boundary
            handled exactly (see wiener_deblur), balance tuned PER CROP against the reference
            over a log grid: an ORACLE-tuned upper bound for Wiener, not a blind method.
            (bm3d.bm3d_deblurring was tried as an extra peer and dropped: with the coloured
            noise spectrum of the regularised inverse it took over 8 minutes per channel of
            one crop here.)
  denoise   A = identity, sigma 0.2 ([-1, 1] units; 0.1 on [0, 1]).
            lift: the noisy image; peer: BM3D colour (bm3d.bm3d_rgb, 'opp' colour space,
            profile 'np') with the true sigma 0.1 on [0, 1].
  inpaint   A = zero-fill of the centred box of half the side (rows and columns
            (H - H/2)/2 .. (H - H/2)/2 + H/2 - 1, i.e. 64..191 of 256; Inpainting::boxes_for),
            then noise 0.05 everywhere (also inside the hole, as officially, quirk Q7).
            lift: the zero-filled measurement;
            peer: OpenCV cv2.inpaint INPAINT_TELEA, radius --telea-radius (default 5: on the
            held-out crops radius 5 beat 3 by 0.2 dB, and Navier-Stokes by 0.1 dB), on the
            8-bit RGB measurement, the noisy measurement kept outside the box;
            extra peer: biharmonic inpainting (skimage.restoration.inpaint_biharmonic).
  colorize  A = weighted channel sum with libdavi's official weights (0.3333, 0.3334, 0.3333)
            to one channel, sigma 0.05. lift = peer: the gray image replicated to 3 channels.

Metrics, as plugins/engine/src/metrics.rs computes them (and `davi eval` applies them: every
output clamped to [0, 1] first): PSNR with data range 1, MSE over all pixels and channels;
SSIM with an 11x11 Gaussian window (sigma 1.5, normalised), K1 = 0.01, K2 = 0.03, population
(not sample) statistics, valid region only (no padding), per channel and averaged. It is
implemented here with numpy (separable valid correlation); --check compares it with
scikit-image's structural_similarity(gaussian_weights=True, use_sample_covariance=False,
data_range=1, channel_axis=0), which crops the same valid region.

Noise is drawn from numpy's default Generator (PCG64) seeded per (run seed, image, crop,
task) from a SHA-256 of those, so results reproduce exactly and adding images does not change
the others. libdavi draws its own noise with libtorch, so to compare DAVI on the SAME
measurements, save them with --save-degraded DIR, which writes per crop DIR/<crop>/:
  ref.png            the clean crop (8-bit, or 16-bit if the source was 16-bit; lossless)
  <task>.npy         the exact measurement, float32 (C, h, w) in [-1, 1] units, unclamped
                     (sr4 (3, 64, 64), colorize (1, 256, 256), others (3, 256, 256))
  <task>.png         the same measurement as a 16-bit PNG in [0, 1] units, which
                     `davi restore <task>.png --task <task>` reads directly; it is clamped to
                     [0, 1] and quantised to 1/65535, and for inpaint the CLI re-applies the
                     mask (problem_from_observation), so the noise inside the hole is zeroed:
                     feed the .npy where exact equality matters
  <task>_<method>.png  each method's restoration (8-bit)
and DIR/manifest.json (crop boxes, seeds, operator settings).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np

EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TASKS = ("sr4", "deblur", "denoise", "inpaint", "colorize")
CROP = 256

# Official operator settings (davi_sdk::OperatorSpec::for_task defaults).
SR_FACTOR = 4
BLUR_SIGMA = 3.0
BLUR_SIZE = 61
GRAY_WEIGHTS = (0.3333, 0.3334, 0.3333)
NOISE = {"sr4": 0.05, "deblur": 0.05, "denoise": 0.20, "inpaint": 0.05, "colorize": 0.05}

# Wiener balance search (the per-crop oracle): a coarse log grid of half-decade steps over
# [1e-6, 1], then tenth-decade steps within half a decade of the coarse best.
WIENER_COARSE = np.logspace(-6.0, 0.0, 13)
WIENER_FINE_STEP = 0.1  # decades
# Fixed-point iterations that complete the unobserved border of the zero-padded blur
# (converged by 5: 5 and 15 gave identical PSNRs to 0.01 dB on 4 held-out crops; with no
# fill at all, i.e. a zero border band, the mean over the 22 held-out crops was 0.67 dB
# lower, 0.18 to 1.57 dB per crop).
WIENER_FILL_ITERS = 10


# ----------------------------------------------------------------------------------------
# Images and crops


def list_images(root: str) -> list[str]:
    out = []
    for d, _, files in os.walk(root):
        for f in files:
            if f.lower().endswith(EXTS):
                out.append(os.path.join(d, f))
    return sorted(out)


def load_rgb(path: str) -> tuple[np.ndarray, int]:
    """(3, H, W) float64 in [0, 1] and the source bit depth (8 or 16); gray is replicated,
    alpha dropped (as libdavi's load_rgb)."""
    import cv2

    a = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if a is None:
        raise ValueError(f"cannot decode {path}")
    if a.dtype == np.uint8:
        scale, bits = 255.0, 8
    elif a.dtype == np.uint16:
        scale, bits = 65535.0, 16
    else:
        raise ValueError(f"{path}: unsupported sample type {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.shape[2] == 4:
        a = a[:, :, 2::-1]  # BGRA -> RGB
    elif a.shape[2] == 3:
        a = a[:, :, ::-1]  # BGR -> RGB
    else:
        a = np.repeat(a[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(a.transpose(2, 0, 1)).astype(np.float64) / scale, bits


# Crop anchors as fractions of the free range (H - 256, W - 256): centre first, then fixed
# off-centre positions. Identical boxes (small images) are dropped.
CROP_ANCHORS = [(0.5, 0.5), (0.2, 0.2), (0.8, 0.8), (0.2, 0.8), (0.8, 0.2), (0.5, 0.15), (0.5, 0.85), (0.15, 0.5), (0.85, 0.5)]


def crop_boxes(h: int, w: int, n: int) -> list[tuple[int, int]]:
    boxes: list[tuple[int, int]] = []
    for fy, fx in CROP_ANCHORS:
        b = (int(round(fy * (h - CROP))), int(round(fx * (w - CROP))))
        if b not in boxes:
            boxes.append(b)
        if len(boxes) == n:
            break
    return boxes


def stream_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()[:8], "little")


# ----------------------------------------------------------------------------------------
# Operators (x: (C, H, W) float64 in [-1, 1]), exactly libdavi's maps


def gaussian_kernel(sigma: float, size: int) -> np.ndarray:
    """blur.rs gaussian_kernel: exp(-x^2 / 2 sigma^2), x = -(size-1)/2 ..= (size-1)/2, sum 1."""
    r = (size - 1) / 2.0
    x = np.arange(size, dtype=np.float64) - r
    k = np.exp(-x * x / (2.0 * sigma * sigma))
    return k / k.sum()


def blur_matrix(k: np.ndarray, n: int) -> np.ndarray:
    """blur.rs blur_matrix: B[i, j] = k[j - i + r] for |j - i| <= r (zero padding)."""
    r = len(k) // 2
    m = np.zeros((n, n))
    for i in range(n):
        lo, hi = max(0, i - r), min(n - 1, i + r)
        m[i, lo : hi + 1] = k[lo - i + r : hi - i + r + 1]
    return m


def inpaint_box(h: int, w: int) -> tuple[int, int, int, int]:
    """Inpainting::boxes_for default: (top, left, height, width)."""
    bh, bw = h // 2, w // 2
    return (h - bh) // 2, (w - bw) // 2, bh, bw


def keep_mask(h: int, w: int) -> np.ndarray:
    top, left, bh, bw = inpaint_box(h, w)
    m = np.ones((h, w))
    m[top : top + bh, left : left + bw] = 0.0
    return m


def forward(task: str, x: np.ndarray) -> np.ndarray:
    c, h, w = x.shape
    if task == "sr4":
        f = SR_FACTOR
        return x.reshape(c, h // f, f, w // f, f).mean(axis=(2, 4))
    if task == "deblur":
        k = gaussian_kernel(BLUR_SIGMA, BLUR_SIZE)
        bh, bw = blur_matrix(k, h), blur_matrix(k, w)
        return bh @ x @ bw.T  # B_h X B_w^T per channel
    if task == "denoise":
        return x.copy()
    if task == "inpaint":
        return x * keep_mask(h, w)[None]
    if task == "colorize":
        wts = np.asarray(GRAY_WEIGHTS).reshape(3, 1, 1)
        return (x * wts).sum(axis=0, keepdims=True)
    raise ValueError(task)


def measure(task: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    y = forward(task, x)
    return y + NOISE[task] * rng.standard_normal(y.shape)


# ----------------------------------------------------------------------------------------
# Metrics (plugins/engine/src/metrics.rs)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0.0 else min(100.0, -10.0 * math.log10(mse))


def _ssim_window() -> np.ndarray:
    return gaussian_kernel(1.5, 11)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """(C, H, W) in [0, 1]: valid-region Gaussian SSIM, population statistics, mean over all
    channels and positions (metrics.rs ssim)."""
    from scipy.ndimage import correlate1d

    g = _ssim_window()
    x, y = a.astype(np.float64), b.astype(np.float64)
    r = len(g) // 2

    def blur(t):
        t = correlate1d(t, g, axis=1, mode="constant")
        t = correlate1d(t, g, axis=2, mode="constant")
        return t[:, r:-r, r:-r]

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(m.mean())


def to_unit(x: np.ndarray) -> np.ndarray:
    """[-1, 1] -> [0, 1], clamped (how `davi eval` scores every output)."""
    return np.clip((x + 1.0) / 2.0, 0.0, 1.0)


# ----------------------------------------------------------------------------------------
# Restoration methods. Each takes the measurement y ([-1, 1], measurement shape) and returns
# an image (3, H, W) in [-1, 1] (clamping happens at scoring). Methods marked oracle also get
# the reference, only to tune a parameter.


def lift_bilinear(y: np.ndarray) -> np.ndarray:
    """libdavi's SR lift: bilinear, align_corners=False (cv2.INTER_LINEAR is the same map)."""
    import cv2

    c, h, w = y.shape
    return np.stack([cv2.resize(ch.astype(np.float32), (w * SR_FACTOR, h * SR_FACTOR), interpolation=cv2.INTER_LINEAR) for ch in y]).astype(np.float64)


def bicubic(y: np.ndarray) -> np.ndarray:
    """PIL bicubic (Keys a = -0.5, as MATLAB imresize) on float channels."""
    from PIL import Image

    c, h, w = y.shape
    out = [np.asarray(Image.fromarray(ch.astype(np.float32), mode="F").resize((w * SR_FACTOR, h * SR_FACTOR), Image.BICUBIC)) for ch in y]
    return np.stack(out).astype(np.float64)


def _fft_blur_setup(n_h: int, n_w: int):
    """Canvas size and transfer functions for the zero-padded blur: a canvas of at least
    N + 2r per side holds the full linear convolution of the zero-extended image without
    wrap-around, so there the blur is exactly circular."""
    from scipy import fft as sfft

    k = gaussian_kernel(BLUR_SIGMA, BLUR_SIZE)
    r = BLUR_SIZE // 2
    mh = sfft.next_fast_len(n_h + 2 * r)
    mw = sfft.next_fast_len(n_w + 2 * r)
    kh = np.zeros(mh)
    kh[: r + 1] = k[r:]
    kh[-r:] = k[:r]
    kw = np.zeros(mw)
    kw[: r + 1] = k[r:]
    kw[-r:] = k[:r]
    K = np.outer(sfft.fft(kh), sfft.rfft(kw))  # separable 2D transfer (real, symmetric kernel)
    # Gradient-energy regulariser |D_x|^2 + |D_y|^2 (finite differences), i.e. a 1/|f|^2
    # signal spectrum, the classic natural-image prior for Wiener filtering.
    fy = np.fft.fftfreq(mh)[:, None]
    fx = np.fft.rfftfreq(mw)[None, :]
    R2 = (2 - 2 * np.cos(2 * np.pi * fy)) + (2 - 2 * np.cos(2 * np.pi * fx))
    return (mh, mw), K, R2, r


def wiener_deblur(y: np.ndarray, ref: np.ndarray, iters: int = WIENER_FILL_ITERS):
    """FFT Wiener deconvolution of the zero-padded blur, boundary handled exactly.

    The measurement is the central N x N part of the full linear convolution of the image
    extended by zeros ([-1, 1] units). On a canvas of N + 2r the blur is circular, but the
    outer band of the full convolution (the blur leaking out of the image) is unobserved.
    It is completed by a fixed-point iteration: x = support(W * canvas), band = band(K * x),
    starting from a zero band; the image outside its support is known to be 0. The filter is
    W = conj(K) / (|K|^2 + balance |D|^2), D the finite-difference gradient, the same balance
    for all channels. The balance is chosen per crop by PSNR against the reference `ref`
    (ORACLE): coarse grid WIENER_COARSE, then WIENER_FINE_STEP around the best.
    Returns (image, balance, balance at the edge of [1e-6, 1], completed canvas)."""
    from scipy import fft as sfft

    c, n_h, n_w = y.shape
    (mh, mw), K, R2, r = _fft_blur_setup(n_h, n_w)
    Kc, K2 = np.conj(K), np.abs(K) ** 2
    inner = (slice(None), slice(r, r + n_h), slice(r, r + n_w))
    ref01 = to_unit(ref)

    def solve(lam):
        W = Kc / (K2 + lam * R2)
        canvas = np.zeros((c, mh, mw))
        canvas[inner] = y
        for it in range(iters + 1):
            xf = sfft.irfft2(sfft.rfft2(canvas, axes=(1, 2)) * W, s=(mh, mw), axes=(1, 2))
            x = np.zeros_like(xf)
            x[inner] = xf[inner]
            if it == iters:
                break
            canvas = sfft.irfft2(sfft.rfft2(x, axes=(1, 2)) * K, s=(mh, mw), axes=(1, 2))
            canvas[inner] = y
        return x[inner], canvas

    tried: dict[float, float] = {}
    kept: dict = {}

    def score(log_lam):
        log_lam = round(float(log_lam), 6)
        if log_lam not in tried:
            x, canvas = solve(10.0**log_lam)
            tried[log_lam] = psnr(to_unit(x), ref01)
            if not kept or tried[log_lam] > kept["psnr"]:
                kept.update(psnr=tried[log_lam], log_lam=log_lam, x=x, canvas=canvas)
        return tried[log_lam]

    lo, hi = math.log10(WIENER_COARSE[0]), math.log10(WIENER_COARSE[-1])
    best = max(np.log10(WIENER_COARSE), key=score)
    half = (np.log10(WIENER_COARSE[1]) - np.log10(WIENER_COARSE[0])) / 2
    fine = np.arange(best - half, best + half + 1e-9, WIENER_FINE_STEP)
    best = max([b for b in fine if lo - 1e-9 <= b <= hi + 1e-9], key=score)
    best, x, canvas = kept["log_lam"], kept["x"], kept["canvas"]
    edge = best <= lo + 1e-9 or best >= hi - 1e-9
    return x, float(10.0**best), edge, canvas


def bm3d_denoise(y: np.ndarray) -> np.ndarray:
    import bm3d

    z = ((y + 1.0) / 2.0).transpose(1, 2, 0)  # unclamped, [0, 1] units
    d = bm3d.bm3d_rgb(z, NOISE["denoise"] / 2.0)
    return np.asarray(d).transpose(2, 0, 1) * 2.0 - 1.0


def telea(y: np.ndarray, radius: int) -> np.ndarray:
    """cv2.inpaint INPAINT_TELEA on the 8-bit RGB measurement (clamped, rounded), the noisy
    measurement kept outside the box. OpenCV's float32 path is not used: on these noisy
    inputs it overshoots far outside [0, 1] (11.3 dB on chelsea vs 22.4 dB for 8-bit)."""
    import cv2

    c, h, w = y.shape
    keep = keep_mask(h, w)
    hole = ((1 - keep) * 255).astype(np.uint8)
    z = (y + 1.0) / 2.0  # [0, 1] units, unclamped
    z8 = np.ascontiguousarray(np.clip(np.round(z * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0))
    out = cv2.inpaint(z8, hole, radius, cv2.INPAINT_TELEA).transpose(2, 0, 1) / 255.0
    out = np.where(keep[None] > 0, z, out)
    return out * 2.0 - 1.0


def biharmonic(y: np.ndarray) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic

    c, h, w = y.shape
    hole = keep_mask(h, w) == 0
    z = (y + 1.0) / 2.0
    out = inpaint_biharmonic(z.transpose(1, 2, 0), hole, channel_axis=-1).transpose(2, 0, 1)
    out = np.where(hole[None], out, z)
    return out * 2.0 - 1.0


def gray3(y: np.ndarray) -> np.ndarray:
    return np.repeat(y, 3, axis=0)


@dataclass
class Method:
    name: str
    role: str  # "lift", "peer", "lift+peer", "extra"
    about: str
    oracle: bool = False


def methods_for(task: str, args) -> list[Method]:
    if task == "sr4":
        return [
            Method("bilinear", "lift", "libdavi's lift: bilinear up-sampling x4, align_corners=False (OpenCV INTER_LINEAR)"),
            Method("bicubic", "peer", "bicubic up-sampling x4 (PIL BICUBIC, Keys a=-0.5) of the noisy low-res image"),
        ]
    if task == "deblur":
        return [
            Method("blurred", "lift", "the raw blurred, noisy measurement"),
            Method("wiener_oracle", "peer", f"FFT Wiener deconvolution, gradient regulariser, exact zero-padded boundary ({WIENER_FILL_ITERS} fixed-point fills), balance chosen per crop by PSNR vs the reference (log search over [1e-6, 1], 0.1-decade resolution): ORACLE-tuned upper bound", oracle=True),
        ]
    if task == "denoise":
        return [
            Method("noisy", "lift", "the noisy measurement"),
            Method("bm3d", "peer", "bm3d.bm3d_rgb, 'opp' colour space, profile 'np', true sigma 0.1 on [0,1]"),
        ]
    if task == "inpaint":
        m = [
            Method("zero_fill", "lift", "the zero-filled noisy measurement (hole = 0 in [-1,1] plus noise)"),
            Method("telea", "peer", f"cv2.inpaint INPAINT_TELEA radius {args.telea_radius} on the 8-bit RGB measurement; noisy measurement kept outside the box"),
        ]
        if not args.no_extra:
            m.append(Method("biharmonic", "extra", "skimage.restoration.inpaint_biharmonic; noisy measurement kept outside the box"))
        return m
    if task == "colorize":
        return [Method("gray", "lift+peer", "the noisy gray measurement replicated to 3 channels")]
    raise ValueError(task)


def run_method(name: str, y: np.ndarray, ref: np.ndarray, args) -> tuple[np.ndarray, dict]:
    """Returns the restoration ([-1, 1]) and extra per-crop info."""
    if name in ("blurred", "noisy", "zero_fill"):
        return y.copy(), {}
    if name == "bilinear":
        return lift_bilinear(y), {}
    if name == "bicubic":
        return bicubic(y), {}
    if name == "gray":
        return gray3(y), {}
    if name == "wiener_oracle":
        x, lam, edge, _ = wiener_deblur(y, ref)
        return x, {"balance": lam, "balance_at_grid_edge": edge}
    if name == "bm3d":
        return bm3d_denoise(y), {}
    if name == "telea":
        return telea(y, args.telea_radius), {}
    if name == "biharmonic":
        return biharmonic(y), {}
    raise ValueError(name)


# ----------------------------------------------------------------------------------------
# Output


def write_png(path: str, img01: np.ndarray, bits: int) -> None:
    """(C, H, W) in [0, 1] -> PNG, 8 or 16 bit, 1 or 3 channels (rounded, clamped)."""
    import cv2

    img01 = np.clip(img01, 0.0, 1.0)
    if bits == 16:
        a = np.round(img01 * 65535.0).astype(np.uint16)
    else:
        a = np.round(img01 * 255.0).astype(np.uint8)
    a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)[:, :, ::-1]
    if not cv2.imwrite(path, np.ascontiguousarray(a)):
        raise OSError(f"cannot write {path}")


def fmt_table(report: dict) -> str:
    lines = [
        f"Classical peers on the official operators: {report['crops']} crops of {CROP}x{CROP} from {report['images_used']} images in `{report['images_dir']}` (seed {report['seed']}).",
        "PSNR (dB) / SSIM on [0, 1], outputs clamped, metrics as libdavi's metrics.rs; seconds per crop on this machine.",
        "",
        "| task | method | role | PSNR | SSIM | s/crop |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for task, t in report["tasks"].items():
        for name, m in t["methods"].items():
            tag = " (oracle)" if m["oracle"] else ""
            lines.append(f"| {task} | {name}{tag} | {m['role']} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['seconds_per_crop']:.3f} |")
    lines.append("")
    lines.append("Operators (y = A x + sigma n on [-1, 1]): " + "; ".join(f"{k}: {v['operator']}" for k, v in report["tasks"].items()) + ".")
    if "deblur" in report["tasks"]:
        lines.append("")
        lines.append("`wiener_oracle` picks its balance per crop by PSNR against the reference: an upper bound for Wiener deconvolution, not a method usable without ground truth.")
    return "\n".join(lines) + "\n"


OPERATOR_TEXT = {
    "sr4": "4x4 average pooling, sigma 0.05",
    "deblur": "Gaussian blur sigma 3, 61 taps, zero padding, sigma 0.05",
    "denoise": "identity, sigma 0.2",
    "inpaint": "centred half-side box zero-filled (rows/cols 64..191), sigma 0.05",
    "colorize": "gray = 0.3333 R + 0.3334 G + 0.3333 B, sigma 0.05",
}


def self_check() -> None:
    """Compare the metrics and operators with independent implementations."""
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = rng.random((3, 64, 80))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    s_own = ssim(a, b)
    s_ski = structural_similarity(a, b, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    print(f"check: SSIM own {s_own:.10f} vs scikit-image {s_ski:.10f} (diff {abs(s_own - s_ski):.2e})")
    assert abs(s_own - s_ski) < 1e-9
    assert abs(psnr(a, a + 0.1) - 20.0) < 1e-9
    # Blur: matrix form vs direct zero-padded 2D convolution; FFT canvas form as well.
    from scipy.signal import convolve2d

    x = rng.standard_normal((1, 40, 48))
    k = gaussian_kernel(BLUR_SIGMA, BLUR_SIZE)
    direct = convolve2d(x[0], np.outer(k, k), mode="same", boundary="fill", fillvalue=0.0)
    e = np.abs(forward("deblur", x)[0] - direct).max()
    print(f"check: blur matrix vs convolve2d max |diff| {e:.2e}")
    assert e < 1e-12
    (mh, mw), K, _, r = _fft_blur_setup(40, 48)
    canvas = np.zeros((mh, mw))
    canvas[r : r + 40, r : r + 48] = x[0]
    circ = np.fft.irfft2(np.fft.rfft2(canvas) * K, s=(mh, mw))[r : r + 40, r : r + 48]
    e = np.abs(circ - direct).max()
    print(f"check: FFT canvas blur vs convolve2d max |diff| {e:.2e}")
    assert e < 1e-12
    # Inpainting box and SR pooling at 256.
    t, l, bh, bw = inpaint_box(256, 256)
    assert (t, l, bh, bw) == (64, 64, 128, 128)
    xs = rng.standard_normal((3, 256, 256))
    assert np.allclose(forward("sr4", xs)[1, 2, 3], xs[1, 8:12, 12:16].mean())
    print("check: ok")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", default="data/photos/heldout", help="folder of clean photographs (recursive)")
    p.add_argument("--crops-per-image", type=int, default=2)
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ",".join(TASKS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--telea-radius", type=int, default=5)
    p.add_argument("--no-extra", action="store_true", help="skip the extra peer (biharmonic inpainting)")
    p.add_argument("--out", default="peers.json", help="JSON report")
    p.add_argument("--markdown", help="also write a Markdown table here")
    p.add_argument("--save-degraded", metavar="DIR", help="write references, measurements and restorations per crop")
    p.add_argument("--check", action="store_true", help="run the self-checks first")
    args = p.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for t in tasks:
        if t not in TASKS:
            p.error(f"unknown task {t!r} (known: {', '.join(TASKS)})")
    if args.crops_per_image < 1 or args.crops_per_image > len(CROP_ANCHORS):
        p.error(f"--crops-per-image must lie in 1..{len(CROP_ANCHORS)}")
    if args.check:
        self_check()

    files = list_images(args.images)
    if not files:
        print(f"no PNG/JPEG/TIFF images under {args.images}", file=sys.stderr)
        return 1
    notes: list[str] = []
    crops = []  # (name, image rel path, top, left, ref (3,256,256) [0,1], bits)
    used = 0
    for f in files:
        rel = os.path.relpath(f, args.images)
        try:
            img, bits = load_rgb(f)
        except ValueError as e:
            notes.append(f"skipped {rel}: {e}")
            continue
        _, h, w = img.shape
        if h < CROP or w < CROP:
            notes.append(f"skipped {rel}: {w}x{h} is smaller than {CROP} on a side")
            continue
        boxes = crop_boxes(h, w, args.crops_per_image)
        if len(boxes) < args.crops_per_image:
            notes.append(f"{rel}: {w}x{h} gives only {len(boxes)} distinct crops")
        used += 1
        stem = os.path.splitext(rel)[0].replace(os.sep, "_")
        for i, (t, l) in enumerate(boxes):
            crops.append((f"{stem}_c{i}", rel, t, l, img[:, t : t + CROP, l : l + CROP].copy(), bits))
    for n in notes:
        print("note:", n, file=sys.stderr)
    if not crops:
        print("no usable crops", file=sys.stderr)
        return 1
    print(f"{len(crops)} crops from {used} images", file=sys.stderr)

    if args.save_degraded:
        os.makedirs(args.save_degraded, exist_ok=True)
    report = {
        "images_dir": args.images,
        "images_used": used,
        "crops": len(crops),
        "crop_size": CROP,
        "seed": args.seed,
        "notes": notes,
        "metrics": "PSNR (data range 1, MSE over all pixels and channels) and SSIM (11x11 Gaussian sigma 1.5, K1 0.01, K2 0.03, population statistics, valid region, per channel averaged) on outputs clamped to [0, 1]; implemented in numpy to match plugins/engine/src/metrics.rs",
        "noise": "numpy default_rng(SHA-256(seed|image|crop index|task)[:8]), standard normal times sigma, in [-1, 1] units after the operator",
        "environment": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
        "crop_list": [{"name": c[0], "image": c[1], "top": c[2], "left": c[3]} for c in crops],
        "tasks": {},
    }
    try:
        import bm3d, cv2, PIL, scipy, skimage  # noqa: F401

        report["environment"].update({"numpy": np.__version__, "scipy": scipy.__version__, "opencv": cv2.__version__, "pillow": PIL.__version__, "scikit-image": skimage.__version__})
    except ImportError as e:
        print(f"missing a package ({e}); run scripts/setup-eval.sh and use .venv-eval/bin/python", file=sys.stderr)
        return 1
    manifest = {"crops": [], "tasks": {t: {"operator": OPERATOR_TEXT[t], "noise_sigma": NOISE[t]} for t in tasks}}

    for task in tasks:
        t0 = time.perf_counter()
        methods = methods_for(task, args)
        per = {m.name: [] for m in methods}
        for ci, (name, rel, top, left, ref01, bits) in enumerate(crops):
            seed = stream_seed(args.seed, rel, ci_index(crops, ci), task)
            x = ref01 * 2.0 - 1.0
            y = measure(task, x, np.random.default_rng(seed))
            d = None
            if args.save_degraded:
                d = os.path.join(args.save_degraded, name)
                os.makedirs(d, exist_ok=True)
                np.save(os.path.join(d, f"{task}.npy"), y.astype(np.float32))
                write_png(os.path.join(d, f"{task}.png"), (y + 1.0) / 2.0, 16)
            for m in methods:
                s0 = time.perf_counter()
                out, info = run_method(m.name, y, x, args)
                secs = time.perf_counter() - s0
                assert out.shape == x.shape, (m.name, out.shape)
                o01 = to_unit(out)
                per[m.name].append({"crop": name, "psnr": psnr(o01, ref01), "ssim": ssim(o01, ref01), "seconds": secs, "seed": seed, **info})
                if d:
                    write_png(os.path.join(d, f"{task}_{m.name}.png"), o01, 8)
            print(f"{task} {name}: " + ", ".join(f"{k} {v[-1]['psnr']:.2f}" for k, v in per.items()), file=sys.stderr)
        wall = time.perf_counter() - t0
        report["tasks"][task] = {
            "operator": OPERATOR_TEXT[task],
            "noise_sigma": NOISE[task],
            "seconds_total": wall,
            "methods": {
                m.name: {
                    "role": m.role,
                    "about": m.about,
                    "oracle": m.oracle,
                    "psnr": float(np.mean([r["psnr"] for r in per[m.name]])),
                    "ssim": float(np.mean([r["ssim"] for r in per[m.name]])),
                    "seconds_per_crop": float(np.mean([r["seconds"] for r in per[m.name]])),
                    "per_crop": per[m.name],
                }
                for m in methods
            },
        }
        print(f"{task}: {wall:.1f} s for {len(crops)} crops", file=sys.stderr)

    if args.save_degraded:
        for ci, (name, rel, top, left, ref01, bits) in enumerate(crops):
            write_png(os.path.join(args.save_degraded, name, "ref.png"), ref01, bits)
            manifest["crops"].append({"name": name, "image": rel, "top": top, "left": left, "size": CROP, "seeds": {t: stream_seed(args.seed, rel, ci_index(crops, ci), t) for t in tasks}})
        with open(os.path.join(args.save_degraded, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(fmt_table(report))
    print(fmt_table(report))
    return 0


def ci_index(crops, ci: int) -> int:
    """Index of crop `ci` among its own image's crops (so seeds do not depend on other images)."""
    rel = crops[ci][1]
    return sum(1 for c in crops[:ci] if c[1] == rel)


if __name__ == "__main__":
    sys.exit(main())
