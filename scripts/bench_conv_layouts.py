#!/usr/bin/env python3
"""Channels-first (NCHW) against channels-last (NHWC) for the layer shapes of the shipped
photo U-Net (32-channel base, tiles of 64 px, batches of 16 tiles): one GroupNorm + SiLU +
3x3 convolution per shape, on the libtorch of the project's venv, best of N runs each.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_conv_layouts.py [--threads 1] [--reps 10]

Prints milliseconds, achieved GFLOP/s of the convolution, and the NCHW / NHWC time ratio
(above 1: channels-last is faster). Stop other CPU work first (docs/performance.md).
"""
import argparse
import time

import torch

# (input channels, output channels, side) of the photo U-Net's levels, plus one wider shape.
SHAPES = [(32, 32, 64), (32, 64, 32), (64, 64, 32), (64, 64, 16), (128, 128, 16)]
BATCH = 16


def best_time(x, conv, norm, reps):
    with torch.no_grad():
        for _ in range(3):
            conv(torch.nn.functional.silu(norm(x)))
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            conv(torch.nn.functional.silu(norm(x)))
            best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for cin, cout, side in SHAPES:
        x = torch.randn(BATCH, cin, side, side)
        norm = torch.nn.GroupNorm(32, cin)
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
        first = best_time(x, conv, norm, args.reps)
        conv_last = torch.nn.Conv2d(cin, cout, 3, padding=1).to(memory_format=torch.channels_last)
        last = best_time(x.contiguous(memory_format=torch.channels_last), conv_last, norm, args.reps)
        flop = 2 * BATCH * side * side * cin * cout * 9
        print(f"{cin:>3}->{cout:<3} {side:>3}px  NCHW {first * 1e3:7.2f} ms ({flop / first / 1e9:5.0f} GFLOP/s)"
              f"  NHWC {last * 1e3:7.2f} ms ({flop / last / 1e9:5.0f} GFLOP/s)  ratio {first / last:.2f}")


if __name__ == "__main__":
    main()
