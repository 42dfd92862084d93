#!/usr/bin/env bash
# Real photographs for training, validation and demos, unpacked from pinned Debian (bookworm)
# packages and PyPI wheels. Nothing is installed: `apt-get download` + `dpkg-deb` and
# `pip download --no-deps` fetch the archives into a temporary folder, each archive's sha256
# is checked against the value recorded below, and only the images are read out of them.
#
#   data/photos/train/             scikit-image photos, unchanged (as before v2)
#   data/photos/train/<source>/    every other training photo, preprocessed, PNG
#   data/photos/heldout/           validation photos (flat; never trained on): chelsea.png and
#                                  coffee.png unchanged, the others named <source>-<name>.png
#   data/photos/SOURCES.txt        every file with its package, version, licence, origin
#
# The split is by photograph and written out below, so it is the same on every machine.
# Held-out photos are chosen from several sources and, where possible, without
# identifiable people (validation crops end up in published comparison figures).
#
# Idempotent: data/photos/.complete-v3 marks a finished run; bump it when the lists change.
# A tree from the previous version of this script (.complete-0.25.2, scikit-image only) keeps
# its scikit-image files; only the other sources are fetched.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
photos=data/photos
marker="$photos/.complete-v3"
skimage_marker="$photos/.complete-0.25.2"
if [ -f "$marker" ]; then exit 0; fi
start=$SECONDS

# Debian bookworm packages: name, version, architecture, pool folder, sha256 of the .deb,
# and the folder inside it that holds the photos (only that is unpacked). kphotoalbum is the
# only architecture-specific one; the checksum is of the amd64 .deb, which is always fetched.
debs=(
  "kphotoalbum 5.9.1-1 amd64 k/kphotoalbum
   00f8b26b5db1beb30a822d15f464b3c68ffa556d267870aa98a59aaaaf81ec43 usr/share/kphotoalbum/demo"
  "opencv-doc 4.6.0+dfsg-12 all o/opencv
   4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a usr/share/doc/opencv-doc/examples"
  "libjxl-testdata 0.0~git20230110.d6168ff-1 all libj/libjxl-testdata
   a58523413f486760a0f3cbc931142a27e3aa25f77315b862046f089ed34aa2c7 usr/share/libjxl-testdata"
  "lomiri-wallpapers-20.04 20.04.0-2 all l/lomiri-wallpapers
   d44e89b8473aafe64a5b678f014862dc31335aaaf18665c544d985d854f1a709 usr/share/backgrounds"
  "python3-sklearn 1.2.1+dfsg-1 all s/scikit-learn
   ca0c6be401d14871c7e93cfdd8d1f561595dc65e6e2ad2501d568aee7f7efc58 usr/lib/python3/dist-packages/sklearn/datasets/images"
  "python-matplotlib-data 3.6.3-1 all m/matplotlib
   e4150fcebd35ea11e0f66268da97ce62f98a4cf530c944f755f241da1a9158f9 usr/share/matplotlib/mpl-data/sample_data"
)
# Used only if apt cannot fetch the pinned version (not a Debian bookworm machine, stale
# package lists, another architecture): the same file from the Debian archive's pool.
mirror="${DEBIAN_MIRROR:-https://deb.debian.org/debian}"

# PyPI wheels: project, version, file, sha256. The platform tags are fixed (CPython 3.11,
# manylinux2014 x86_64) whatever this machine is, so the file and its checksum never
# change; the wheels are only unzipped, never installed or imported.
wheel_tags=(--only-binary=:all: --platform manylinux_2_17_x86_64 --python-version 3.11
            --implementation cp --abi cp311)
wheels=(
  "scikit-image 0.25.2 scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
   24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641"
  "scipy 1.9.3 scipy-1.9.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
   abaf921531b5aeaafced90157db505e10345e45038c39e5d9b6c7922d68085cb"
  "imgaug 0.4.0 imgaug-0.4.0-py2.py3-none-any.whl
   ce61e65b4eb7405fc62c1b0a79d2fa92fd47f763aaecb65152d29243592111f9"
)

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/dl" "$tmp/x"

die() { echo "fetch-photos: $*" >&2; exit 1; }

# verify FILE SHA256: stop with both checksums if they differ.
verify() {
  local got
  got="$(sha256sum "$1" | cut -d' ' -f1)"
  [ "$got" = "$2" ] || die "sha256 mismatch for $(basename "$1"): expected $2, got $got"
}

# fetch_deb NAME VERSION ARCH POOL SHA256 FOLDER: download the pinned .deb, verify it, and
# unpack FOLDER from it into $tmp/x/NAME (dpkg-deb needs no root for this).
fetch_deb() {
  local name=$1 ver=$2 arch=$3 pool=$4 sha=$5 folder=$6
  local file="${name}_${ver}_${arch}.deb"
  if ! (cd "$tmp/dl" && apt-get download -q "$name:$arch=$ver" >/dev/null 2>&1) \
       || [ ! -f "$tmp/dl/$file" ]; then
    echo "fetch-photos: apt-get download $name=$ver failed; trying $mirror" >&2
    curl -fsSL -o "$tmp/dl/$file" "$mirror/pool/main/$pool/$file" \
      || die "cannot download $file (apt-get download and $mirror both failed)"
  fi
  verify "$tmp/dl/$file" "$sha"
  mkdir -p "$tmp/x/$name"
  dpkg-deb --fsys-tarfile "$tmp/dl/$file" | tar -x -C "$tmp/x/$name" "./$folder"
}

# fetch_wheel PROJECT VERSION FILE SHA256: download the pinned wheel into $tmp/dl, verify it.
fetch_wheel() {
  local project=$1 ver=$2 file=$3 sha=$4
  .venv/bin/pip download --disable-pip-version-check -q --no-deps "${wheel_tags[@]}" \
    -d "$tmp/dl" "$project==$ver" || die "pip download $project==$ver failed"
  [ -f "$tmp/dl/$file" ] || die "pip download $project==$ver did not give $file"
  verify "$tmp/dl/$file" "$sha"
}

[ -x .venv/bin/python ] || die ".venv is missing: run scripts/setup.sh first"
# Pillow decodes and resizes the photos. Pinned (scripts/requirements.txt) because JPEG
# decoding and resampling may differ by a code value between versions.
pillow="$(grep '^pillow==' scripts/requirements.txt)"
have="$(.venv/bin/python -c 'import PIL; print(PIL.__version__)' 2>/dev/null || true)"
if [ "$have" != "${pillow#pillow==}" ]; then
  .venv/bin/pip install --disable-pip-version-check -q --only-binary=:all: "$pillow"
fi

echo "fetch-photos: downloading pinned archives (~230 MB)" >&2
for d in "${debs[@]}"; do
  # shellcheck disable=SC2086  # the table's columns are the arguments
  fetch_deb $d
done
for w in "${wheels[@]}"; do
  read -r project _ _ _ <<< "$w"
  if [ "$project" = scikit-image ] && [ -f "$skimage_marker" ]; then continue; fi
  # shellcheck disable=SC2086
  fetch_wheel $w
done

echo "fetch-photos: preprocessing" >&2
mkdir -p "$photos/train" "$photos/heldout"
.venv/bin/python - "$tmp/x" "$tmp/dl" "$photos" <<'PY'
"""Read the photos out of the unpacked packages and wheels, preprocess, split, write.

Preprocessing: decode; apply the stored orientation; drop alpha; RGB. Then downscale with
Lanczos (antialiased), because JPEG blocking and sensor noise at native scale would be
learnt as image content:
  * JPEG-coded photos: by at least 2 (to a short side of at most 512), but never below a
    200-px short side, so even small photos stay usable for 128-256-px patches;
  * lossless photos: only big ones (short side > 768) to a 512-px short side.
The two big photos (libjxl's flower, Lomiri's Kleiber) also give a few square 768-px crops
(smaller where the image is) at native/2 to native/4, written as separate files: they keep
detail that the 512-px version averages away.
"""
import bz2
import glob
import io
import os
import shutil
import sys
import zipfile

from PIL import Image, ImageOps

ex, dl, out = sys.argv[1:4]
have_v1 = os.path.exists(os.path.join(out, ".complete-0.25.2"))

KPA = "kphotoalbum 5.9.1-1 (Debian)"
OCV = "opencv-doc 4.6.0+dfsg-12 (Debian)"
JXL = "libjxl-testdata 0.0~git20230110.d6168ff-1 (Debian)"
LOM = "lomiri-wallpapers-20.04 20.04.0-2 (Debian)"
SKL = "python3-sklearn 1.2.1+dfsg-1 (Debian)"
MPL = "python-matplotlib-data 3.6.3-1 (Debian)"
IAA = "imgaug 0.4.0 (PyPI wheel)"
SCI = "scipy 1.9.3 (PyPI wheel)"
SKI = "scikit-image 0.25.2 (PyPI wheel)"
SRC = {"kphotoalbum": KPA, "opencv": OCV, "libjxl": JXL, "lomiri": LOM, "sklearn": SKL,
       "matplotlib": MPL, "imgaug": IAA, "scipy": SCI}

# Validation photos: (source folder, name). Everything else is training data. Both Skagen
# photos are held out together; the Grand Canyon ones share a view and all stay in training.
HELDOUT = {
    ("kphotoalbum", "spiff"), ("kphotoalbum", "snow"), ("kphotoalbum", "skagen"),
    ("kphotoalbum", "skagen_2"),
    ("opencv", "leuvenA"), ("opencv", "building"), ("opencv", "rubberwhale1"),
    ("opencv", "squirrel_cls"),
    ("libjxl", "tmshre_riaphotographs"),
    ("sklearn", "china"),
    ("scipy", "face"),  # kept at its native 1024x768: the whole-image tests restore it
}

# KPhotoAlbum keeps rotations in its database (demo/index.xml, angle= clockwise), not in
# EXIF; these four photos are stored sideways or upside down.
KPA_ROTATE = {"new_wave_1": 90, "grand_canyon_1": 180, "wayne": 90, "pool_2": 270}
KPA_DIR = "usr/share/kphotoalbum/demo"
KPA_NAMES = """anne_helene bar55 bar55_2 blackie cold_water donna donna_2 grand_canyon_1
    grand_canyon_2 grand_canyon_3 jesper jesper_2 new_wave_1 new_wave_2 pool pool_2 qt-logo
    skagen skagen_2 snow spiff spiff_2 sunset wayne""".split()  # not CategoryImages/ (thumbnails)

# OpenCV's sample photographs (path under examples/, name). Left out: near-duplicates of
# listed ones (aloeR, graf3, leuvenB, right, rubberwhale2, ela_modified), gray calibration
# boards, a painting (starry_night), a render (Blender_Suzanne*), synthetic pic1-6, logos,
# and deliberately blurred images (text_defocus, text_motion, licenseplate_motion).
OCV_DIR = "usr/share/doc/opencv-doc/examples"
OCV_FILES = [(f"data/{n}", n.rsplit(".", 1)[0]) for n in """aero1.jpg aero3.jpg aloeL.jpg
    apple.jpg baboon.jpg board.jpg building.jpg butterfly.jpg chicky_512.png ela_original.jpg
    fruits.jpg graf1.png home.jpg leuvenA.jpg messi5.jpg orange.jpg rubberwhale1.png
    squirrel_cls.jpg stuff.jpg left.jpg""".split()] + [
    ("alphamat/input_images/plant.jpg", "plant"),
    ("dnn_superres/butterfly.png", "butterfly_superres"),  # another butterfly than data/'s
    ("reg/home.png", "home_reg"),                           # another house than data/home
] + [(f"hfs/data/00{i}.jpg", f"hfs_00{i}") for i in range(3)] \
  + [(f"text/scenetext0{i}.jpg", f"scenetext0{i}") for i in range(1, 7)] \
  + [(f"text/scenetext_segmented_word0{i}.jpg", f"scenetext_segmented_word0{i}") for i in range(1, 6)]

JXL_DIR = "usr/share/libjxl-testdata"
JXL_FILES = [("jxl/flower/flower.png", "flower", "BSD-3-Clause (JPEG XL Project Authors)"),
             # BT.2100 HLG code values, used as they are: HLG is made to look right on an
             # SDR display, and the 16-bit samples are cut to 8 bits by Pillow.
             ("jxl/hdr_room.png", "hdr_room", "BSD-3-Clause (JPEG XL Project Authors)")] + [
    (f"external/wesaturate/500px/{n}_srgb8.png", n, "CC0 (wesaturate)")
    for n in ("cvo9xd_keong_macan", "tmshre_riaphotographs", "u76c0g_bliznaca")]

# Extra crops of the big photos, by (source, name): (divisor of the native size, crop
# centre as fractions of width and height, suffix). Kleiber is a bird on a bark trunk
# against strong bokeh; the crops are placed on the bird and the in-focus bark.
CROPS = {
    ("libjxl", "flower"): [(2, 0.25, 0.5, "d2-left"), (2, 0.75, 0.5, "d2-right")],
    ("lomiri", "kleiber"): [(2, 0.45, 0.50, "d2-bird"), (2, 0.27, 0.25, "d2-bark"),
                            (3, 0.40, 0.55, "d3"), (4, 0.25, 0.50, "d4")],
}

# scikit-image photos: copied unchanged, as before (chelsea and coffee are used by tests
# and keep their exact pixels). name: (split, licence)
SKIMAGE = {
    "astronaut.png": ("train", "public domain (NASA)"),
    "rocket.jpg": ("train", "public domain (SpaceX)"),
    "motorcycle_left.png": ("train", "Middlebury 2014 stereo benchmark (no licence stated)"),
    "motorcycle_right.png": ("train", "Middlebury 2014 stereo benchmark (no licence stated)"),
    "hubble_deep_field.jpg": ("train", "public domain (NASA)"),
    "retina.jpg": ("train", "CC0 1.0"),
    "ihc.png": ("train", "no known copyright restrictions"),
    "chelsea.png": ("heldout", "CC0 (Stefan van der Walt)"),
    "coffee.png": ("heldout", "CC0 (Rachel Michetti)"),
}

rows = []  # SOURCES.txt lines: file, source, licence, original, processing


def clean_previous():
    """Remove what an earlier (possibly interrupted) run of this version wrote."""
    for s in SRC:
        shutil.rmtree(os.path.join(out, "train", s), ignore_errors=True)
        for f in glob.glob(os.path.join(out, "heldout", f"{s}-*.png")):
            os.remove(f)


def decode(data, rotate_cw=0):
    im = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if rotate_cw:
        im = im.transpose({90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180,
                           270: Image.Transpose.ROTATE_90}[rotate_cw])  # ROTATE_n: n deg ccw
    return im.convert("RGB")  # drops alpha (and palette / gray) without compositing


def downscaled(im, lossy):
    w, h = im.size
    short = min(w, h)
    if lossy:
        target = max(200, min(512, short // 2))
    else:
        target = 512 if short > 768 else short
    if target >= short:
        return im, "native size"
    s = target / short
    size = (target, round(h * s)) if w == short else (round(w * s), target)
    return im.resize(size, Image.Resampling.LANCZOS), f"{w}x{h} -> {size[0]}x{size[1]} Lanczos"


def save(im, source, name, licence, original, how):
    held = (source, name) in HELDOUT
    rel = f"heldout/{source}-{name}.png" if held else f"train/{source}/{name}.png"
    path = os.path.join(out, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert min(im.size) >= 200, (rel, im.size)
    im.save(path)
    rows.append((rel, SRC[source], licence, original, how))
    return held


def photo(data, source, name, licence, original, lossy, rotate_cw=0):
    im = decode(data, rotate_cw)
    small, how = downscaled(im, lossy)
    if rotate_cw:
        how = f"rotated {rotate_cw} deg clockwise; {how}"
    held = save(small, source, name, licence, original, how)
    for div, cx, cy, tag in CROPS.get((source, name), []):
        assert not held, "crops of a held-out photo would leak into training"
        w, h = im.size
        c = min(768, w // div, h // div)  # output side; the native box is c*div
        x0 = min(max(round(cx * w - c * div / 2), 0), w - c * div)
        y0 = min(max(round(cy * h - c * div / 2), 0), h - c * div)
        crop = im.resize((c, c), Image.Resampling.LANCZOS, box=(x0, y0, x0 + c * div, y0 + c * div))
        save(crop, source, f"{name}-{tag}", licence, original,
             f"native box {c * div}px at ({x0},{y0}) -> {c}x{c} Lanczos (1/{div})")


def read(*parts):
    with open(os.path.join(*parts), "rb") as f:
        return f.read()


clean_previous()

for n in KPA_NAMES:
    photo(read(ex, "kphotoalbum", KPA_DIR, n + ".jpg"), "kphotoalbum", n,
          "GPL-2+ (package debian/copyright)", f"/{KPA_DIR}/{n}.jpg", True, KPA_ROTATE.get(n, 0))

for rel, n in OCV_FILES:
    photo(read(ex, "opencv-doc", OCV_DIR, rel), "opencv", n,
          "Apache-2.0 AND BSD-3-Clause (package debian/copyright; per-image provenance not recorded)",
          f"/{OCV_DIR}/{rel}", rel.endswith(".jpg"))

for rel, n, lic in JXL_FILES:
    photo(read(ex, "libjxl-testdata", JXL_DIR, rel), "libjxl", n, lic, f"/{JXL_DIR}/{rel}", False)

k = "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"
photo(read(ex, "lomiri-wallpapers-20.04", k), "lomiri", "kleiber",
      "CC-BY-SA-3.0 (2021, Lukas Baubkus)", "/" + k, True)

sk = "usr/lib/python3/dist-packages/sklearn/datasets/images"
for n in ("china", "flower"):
    photo(read(ex, "python3-sklearn", sk, n + ".jpg"), "sklearn", n,
          "CC BY 2.0 (images/README.txt)", f"/{sk}/{n}.jpg", True)

gh = "usr/share/matplotlib/mpl-data/sample_data/grace_hopper.jpg"
photo(read(ex, "python-matplotlib-data", gh), "matplotlib", "grace_hopper",
      "matplotlib licence (package debian/copyright); US Navy portrait", "/" + gh, True)

def wheel(prefix):
    return zipfile.ZipFile(glob.glob(os.path.join(dl, prefix + "-*.whl"))[0])


with wheel("imgaug-0.4.0") as z:
    photo(z.read("imgaug/quokka.jpg"), "imgaug", "quokka", "MIT (imgaug package)",
          "imgaug/quokka.jpg", True)

# face.dat: bz2 of raw uint8 (768, 1024, 3); decoded from a JPEG originally, so treated as one.
with wheel("scipy-1.9.3") as z:
    raw = bz2.decompress(z.read("scipy/misc/face.dat"))
face = Image.frombytes("RGB", (1024, 768), raw)
save(face, "scipy", "face", "public domain (scipy.misc.face docstring)", "scipy/misc/face.dat", "native size (validation, whole-image tests)")

if not have_v1:
    with wheel("scikit_image-0.25.2") as z:
        for n, (split, _) in SKIMAGE.items():
            with open(os.path.join(out, split, n), "wb") as f:
                f.write(z.read("skimage/data/" + n))
for n, (split, lic) in SKIMAGE.items():
    rows.append((f"{split}/{n}", SKI, lic, "skimage/data/" + n, "copied unchanged"))

with open(os.path.join(out, "SOURCES.txt"), "w") as f:
    f.write("# Generated by scripts/fetch-photos.sh. Columns (tab-separated): file under\n"
            "# data/photos/, source package and version, licence, path in the package,\n"
            "# processing. heldout/ is validation only; train/ is training only.\n")
    for r in sorted(rows):
        f.write("\t".join(r) + "\n")
PY

# Summary: counts, pixels, and the 200-px minimum every file has to meet.
.venv/bin/python - "$photos" "$((SECONDS - start))" <<'PY'
import glob, os, sys
from PIL import Image
out, secs = sys.argv[1], sys.argv[2]
for split, pat in (("train", "train/**/*.*"), ("heldout", "heldout/*.*")):
    files = [f for f in glob.glob(os.path.join(out, pat), recursive=True) if os.path.isfile(f)]
    sizes = [Image.open(f).size for f in files]
    small = [f for f, s in zip(files, sizes) if min(s) < 200]
    if small:
        sys.exit(f"fetch-photos: smaller than 200 px: {small}")
    print(f"photos: {len(files)} {split} files, {sum(w * h for w, h in sizes) / 1e6:.1f} Mpx")
print(f"photos: done in {secs} s, data/photos/SOURCES.txt lists them")
PY
# Only now is the tree complete.
[ -f "$skimage_marker" ] || touch "$skimage_marker"
touch "$marker"
