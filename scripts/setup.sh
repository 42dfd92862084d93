#!/usr/bin/env bash
# Idempotent project set-up: a project-local Python virtual environment holding the pinned
# PyTorch wheel, whose libtorch tch links against. Everything lands inside the checkout:
#   .venv/      the virtual environment (pip, torch==2.11.0, numpy for fixture scripts,
#               pillow for scripts/fetch-photos.sh)
#   .libtorch   a symlink to the wheel's torch/ folder (include/ and lib/), which
#               .cargo/config.toml hands to torch-sys as LIBTORCH.
# Re-running it does nothing once the pinned versions are present.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
want_torch="2.11.0"
have_torch="$(.venv/bin/python -c 'import torch,sys; sys.stdout.write(torch.__version__.split("+")[0])' 2>/dev/null || true)"
have_numpy="$(.venv/bin/python -c 'import numpy,sys; sys.stdout.write(numpy.__version__)' 2>/dev/null || true)"
have_pillow="$(.venv/bin/python -c 'import PIL,sys; sys.stdout.write(PIL.__version__)' 2>/dev/null || true)"
if [ "$have_torch" != "$want_torch" ] || [ "$have_numpy" != "2.3.5" ] || [ "$have_pillow" != "12.3.0" ]; then
  .venv/bin/pip install --disable-pip-version-check -q -r scripts/requirements.txt
fi
torch_dir="$(.venv/bin/python -c 'import torch,os; print(os.path.dirname(torch.__file__))')"
ln -sfn "$torch_dir" .libtorch
echo "setup: libtorch $(.venv/bin/python -c 'import torch; print(torch.__version__)') at .libtorch"
