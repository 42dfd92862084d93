#!/usr/bin/env bash
# Real photographs for demos, training and evaluation, taken from the scikit-image wheel on
# PyPI (pinned; only the images are unpacked — scikit-image itself is never installed or
# imported). Idempotent. Split by image: data/photos/heldout/ is never trained on.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
ver="0.25.2"
train=(astronaut.png rocket.jpg motorcycle_left.png motorcycle_right.png hubble_deep_field.jpg retina.jpg ihc.png)
heldout=(chelsea.png coffee.png)
if [ -f data/photos/.complete-$ver ]; then exit 0; fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
.venv/bin/pip download --disable-pip-version-check --no-deps -q -d "$tmp" "scikit-image==$ver"
whl="$(ls "$tmp"/scikit_image-*.whl)"
mkdir -p data/photos/train data/photos/heldout
.venv/bin/python - "$whl" "$root/data/photos" "${train[*]}" "${heldout[*]}" <<'PY'
import sys, zipfile, os
whl, out, train, held = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
with zipfile.ZipFile(whl) as z:
    for split, names in (("train", train), ("heldout", held)):
        for n in names:
            data = z.read("skimage/data/" + n)
            with open(os.path.join(out, split, n), "wb") as f:
                f.write(data)
PY
touch data/photos/.complete-$ver
echo "photos: $(ls data/photos/train | wc -l) training, $(ls data/photos/heldout | wc -l) held-out in data/photos/"
