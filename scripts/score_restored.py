#!/usr/bin/env python3
"""Score libdavi restorations of the measurements `eval_peers.py --save-degraded` saved, and
write the side-by-side results page (docs/results.md) with the classical peers.

    .venv-eval/bin/python scripts/score_restored.py --peers peers.json --degraded DIR \
        --variant "DAVI (shipped)=davi" --variant "phase 1 (supervised)=p1" \
        --json-dir docs/results --markdown docs/results.md

Each `--variant LABEL=TAG` reads DIR/<crop>/<task>_<TAG>.png (written by scripts/results.sh
with `davi restore <task>.npy`) for every crop of the peers report, scores it against
DIR/<crop>/ref.png with eval_peers.py's PSNR and SSIM (the definitions of
plugins/engine/src/metrics.rs), and adds a row per task. Variants missing for a task are
left out of that task's table. The "strongest peer" of a task is the classical method with
the best mean PSNR (the trivial lift is not a peer, except for colorization, where the gray
image is the peer); DAVI's margin over it is reported in PSNR and SSIM. `--peer-variant
LABEL=TAG` reads restorations the same way and scores them as a classical peer: results.sh
uses it for libdavi's own classical plug-in (`davi restore --plugin-id classical`).
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eval_peers as ep  # noqa: E402

TITLES = {
    "sr4": "4× super-resolution (average pooling, noise 0.05)",
    "deblur": "Gaussian deblurring (σ 3 px, 61 taps, zero padding, noise 0.05)",
    "denoise": "Denoising (σ 0.2 in [-1, 1], 0.1 in [0, 1])",
    "inpaint": "Box inpainting (centred box of half the side, noise 0.05)",
    "colorize": "Colorization (noise 0.05)",
}


def load01(path: str) -> np.ndarray:
    return ep.load_rgb(path)[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", required=True, help="JSON report of eval_peers.py")
    p.add_argument("--degraded", required=True, help="its --save-degraded folder, holding the restorations")
    p.add_argument("--variant", action="append", default=[], help="LABEL=TAG (repeatable)")
    p.add_argument("--peer-variant", action="append", default=[],
                   help="LABEL=TAG read like --variant but scored as a classical peer (repeatable)")
    p.add_argument("--json-dir", help="write <task>.json here (peers and DAVI, per crop)")
    p.add_argument("--markdown", help="write the results page here")
    p.add_argument("--header", help="Markdown text placed above the tables")
    p.add_argument("--footer", help="Markdown file appended below the tables")
    args = p.parse_args(argv)

    with open(args.peers) as f:
        report = json.load(f)
    crops = [c["name"] for c in report["crop_list"]]
    variants = [v.split("=", 1) for v in args.variant]
    peer_variants = [v.split("=", 1) for v in args.peer_variant]
    lines = [args.header.rstrip() + "\n"] if args.header else []
    summary = []
    for task, tr in report["tasks"].items():
        methods = tr["methods"]
        for (label, tag), role in [(v, "davi") for v in variants] + [(v, "peer") for v in peer_variants]:
            rows = []
            for c in crops:
                out = os.path.join(args.degraded, c, f"{task}_{tag}.png")
                if not os.path.exists(out):
                    rows = None
                    break
                a, ref = load01(out), load01(os.path.join(args.degraded, c, "ref.png"))
                rows.append({"crop": c, "psnr": ep.psnr(a, ref), "ssim": ep.ssim(a, ref)})
            if rows:
                methods[label] = {
                    "role": role,
                    "about": f"libdavi one-step restoration ({tag})" if role == "davi"
                    else f"restored by libdavi's classical plug-in ({tag})",
                    "oracle": False,
                    "psnr": float(np.mean([r["psnr"] for r in rows])),
                    "ssim": float(np.mean([r["ssim"] for r in rows])),
                    "per_crop": rows,
                }
        peers = {k: m for k, m in methods.items() if m.get("role") in ("peer", "lift+peer", "extra")}
        best = max(peers.items(), key=lambda kv: kv[1]["psnr"]) if peers else None
        # SSIM is compared with the peer best in SSIM, which need not be the best in PSNR.
        best_ssim = max(peers.items(), key=lambda kv: kv[1]["ssim"]) if peers else None
        lines.append(f"\n### {TITLES.get(task, task)}\n")
        lines.append("| method | PSNR (dB) | SSIM | notes |")
        lines.append("|---|---:|---:|---|")
        for name, m in sorted(methods.items(), key=lambda kv: -kv[1]["psnr"]):
            note = []
            if m.get("role") == "davi":
                note.append("**libdavi**")
            if best and name == best[0]:
                note.append("strongest classical peer")
            if best_ssim and name == best_ssim[0] and name != best[0]:
                note.append("classical peer best in SSIM")
            if m.get("oracle"):
                note.append("oracle-tuned per crop")
            if m.get("role") in ("lift", "lift+peer"):
                note.append("the measurement itself, lifted")
            lines.append(f"| {name} | {m['psnr']:.2f} | {m['ssim']:.4f} | {', '.join(note)} |")
        for label, _ in variants:
            if label in methods and best:
                d = methods[label]
                wins = sum(1 for r, q in zip(d["per_crop"], best[1]["per_crop"]) if r["psnr"] > q["psnr"])
                summary.append((task, label, d["psnr"] - best[1]["psnr"], best[0],
                                d["ssim"] - best_ssim[1]["ssim"], best_ssim[0], wins, len(d["per_crop"])))
        if args.json_dir:
            os.makedirs(args.json_dir, exist_ok=True)
            with open(os.path.join(args.json_dir, f"{task}.json"), "w") as f:
                json.dump({"task": task, **tr, "crops": report["crop_list"]}, f, indent=1)
    if summary:
        lines.append("\n### Margins over the strongest classical peer\n")
        lines.append("ΔPSNR is against the peer best in PSNR, ΔSSIM against the peer best in SSIM; "
                     "the crop count compares PSNR with the first.\n")
        lines.append("| task | libdavi model | ΔPSNR (dB) | peer (PSNR) | ΔSSIM | peer (SSIM) | crops where libdavi wins (PSNR) |")
        lines.append("|---|---|---:|---|---:|---|---:|")
        for task, label, dp, peer, ds, peer_s, wins, n in summary:
            lines.append(f"| {task} | {label} | {dp:+.2f} | {peer} | {ds:+.4f} | {peer_s} | {wins}/{n} |")
    if args.footer and os.path.exists(args.footer):
        with open(args.footer) as f:
            lines.append("\n" + f.read())
    text = "\n".join(lines) + "\n"
    if args.markdown:
        tmp = args.markdown + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.markdown)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
