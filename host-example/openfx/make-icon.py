"""Draw davi.png, the 128x128 icon the OpenFX hosts show for every DAVI effect.

A rounded dark tile with a disc whose left half is noisy and right half smooth: restoration.
Deterministic (fixed seed); the result is committed beside this script, so installing needs
no Python. Regenerate with: .venv/bin/python host-example/openfx/make-icon.py
"""
import random
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 128


def main() -> None:
    rng = random.Random(12)
    img = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((2, 2, SIZE - 3, SIZE - 3), radius=22, fill=(28, 32, 44, 255))
    # A warm-to-cool gradient disc.
    disc = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    px = disc.load()
    cx, cy, r = SIZE / 2, SIZE / 2, 44
    for y in range(SIZE):
        for x in range(SIZE):
            if (x - cx) ** 2 + (y - cy) ** 2 <= r * r:
                t = (y - (cy - r)) / (2 * r)
                base = (int(250 - 120 * t), int(170 - 40 * t), int(70 + 150 * t))
                if x < cx:  # the degraded half: grain
                    n = rng.randint(-70, 70)
                    base = tuple(max(0, min(255, c + n)) for c in base)
                px[x, y] = base + (255,)
    img.alpha_composite(disc)
    d.line((cx, cy - r - 6, cx, cy + r + 6), fill=(235, 238, 245, 255), width=3)
    img.save(Path(__file__).with_name("davi.png"), optimize=True)


if __name__ == "__main__":
    main()
