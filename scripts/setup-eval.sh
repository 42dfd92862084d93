#!/usr/bin/env bash
# Idempotent set-up of .venv-eval/, a virtual environment of its own for
# scripts/eval_peers.py (classical peer methods: bicubic, Wiener, BM3D, OpenCV inpainting),
# with the exact versions of scripts/requirements-eval.txt, wheels only.
#
# It is separate from .venv on purpose: PyPI `bm3d`/`bm4d` (Tampere University) are licensed
# for non-commercial use only (see the note in requirements-eval.txt), so they must never
# become a dependency of libdavi, its plugins or the project's main environment.
# Re-running it does nothing once the pinned versions are installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
req="scripts/requirements-eval.txt"
venv=".venv-eval"
stamp="$venv/.requirements-eval.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/pip" install --disable-pip-version-check -q --only-binary=:all: -r "$req"
  # Check that what the file names is what is importable before stamping it.
  "$venv/bin/python" - <<'PY'
import cv2, bm3d, numpy, scipy, skimage, PIL
print(f"setup-eval: numpy {numpy.__version__}, scipy {scipy.__version__}, "
      f"scikit-image {skimage.__version__}, opencv {cv2.__version__}, pillow {PIL.__version__}, bm3d ok")
PY
  echo "$want" > "$stamp"
fi
echo "setup-eval: $venv ready (run scripts/eval_peers.py with $venv/bin/python)"
