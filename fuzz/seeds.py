#!/usr/bin/env python3
"""Write the committed seed corpora of the spec, pt, restore and loader fuzz targets.

    python3 fuzz/seeds.py

The model_file seeds are model files, written by the engine's test
`cargo test -p davi-engine --test fuzz_corpus` with DAVI_WRITE_FUZZ_SEEDS=1 (docs/fuzzing.md).
Seeds of the structured targets (restore, loader) follow the byte layouts their harnesses
read (fuzz/fuzz_targets/*.rs): change both together. Plain Python 3, no packages.
"""
import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


# ---------------------------------------------------------------------------------------------
# spec: every shipped spec file, JSON forms, edge values, a few near misses.
for p in sorted((ROOT / "docs" / "specs").iterdir()):
    write("spec", p.name, p.read_bytes())
json_specs = {
    "blur.json": {"kind": "gaussian_blur", "sigma": 1.5, "size": 9, "mode": "ddrm", "noise_sigma": 0.0},
    "sr8.json": {"kind": "super_resolution", "factor": 8, "method": "avg_pool"},
    "inpaint-boxes.json": {"kind": "inpainting", "boxes": [{"top": 0, "left": 1, "height": 2, "width": 3}]},
    "denoise.json": {"kind": "denoising", "noise_sigma": 2.0},
    "colorize.json": {"kind": "colorization", "weights": [100, 0, 0.001]},
}
for name, spec in json_specs.items():
    write("spec", name, json.dumps(spec))
write("spec", "minimal.toml", 'kind = "denoising"')
write("spec", "blur-min.toml", 'kind = "gaussian_blur"\nsigma = 1e-9\nsize = 1\n')
write("spec", "typo.toml", 'kind = "gaussian_blur"\nsigam = 3.0\n')
write("spec", "inline-boxes.toml", 'kind = "inpainting"\nboxes = [{top = 1, left = 2, height = 3, width = 4}]\n')
write("spec", "big-box.json", '{"kind":"inpainting","boxes":[{"top":4294967295,"left":0,"height":1,"width":1}]}')
write("spec", "unicode.toml", 'kind = "d\u00e9noising" # \u00e9\n')
# The fuzz finding of docs/fuzzing.md: a box side above i64::MAX (TOML cannot hold it).
write("spec", "finding-huge-box-height.json",
      '{"kind":"inpainting","boxes":[{"top":4294967295,"left":0,"height":13223372036854775807,"width":1}]}')

# ---------------------------------------------------------------------------------------------
# pt: the reader's own fixtures (zip, legacy, protocol 4, nested, views, every dtype).
for p in sorted((ROOT / "tests" / "fixtures" / "pt").glob("*.pt")):
    write("pt", p.name, p.read_bytes())

# ---------------------------------------------------------------------------------------------
# restore: see fuzz/fuzz_targets/restore.rs for the layout.
TASKS = ["deblur", "sr4", "sr2", "sr8", "inpaint", "denoise", "colorize"]
U8, U16, F32 = 0, 1, 2
GRAY, GRAY_ALPHA, RGB, RGBA = 0, 1, 2, 3


def b(*xs):
    return bytes(xs)


def task(name, setters=0):
    return b((TASKS.index(name) << 1) | (setters << 5))


def text(spec):
    raw = spec.encode()
    return b(1) + b(len(raw)) + raw


def image(w=None, h=None, sample=U8, layout=RGB, pad=0, flags=0, extra=b""):
    """An image() call: flags, [w, h], sample, layout, pad, then what flags ask for."""
    out = b(flags)
    if w is not None:
        out += b(w, h)
    return out + b(sample, layout, pad) + extra


NO_OPTS = b(0)
PLAIN = b(0)  # img_flags: sanitised floats, separate output
seeds = {
    "denoise-rgb8": b(0) + task("denoise") + NO_OPTS + PLAIN + b(0)
    + image(16, 12, U8, RGB) + image(sample=U8, layout=RGB),
    "sr2-u16-rgba-tiles": b(0) + task("sr2") + b(1 | 4, 16, 4) + PLAIN + b(0)
    + image(8, 8, U16, RGBA) + image(sample=F32, layout=RGB),
    "inpaint-box-window-gray": b(1) + task("inpaint", 1) + b(4, 2, 2, 4, 4) + b(1 | 64, 0) + PLAIN + b(0)
    + image(16, 16, U8, GRAY) + image(sample=U8, layout=GRAY),
    "colorize-window": b(2) + task("colorize") + NO_OPTS + PLAIN + b(0)
    + image(12, 12, F32, GRAY) + image(sample=U8, layout=RGB),
    "deblur-text-bottom-up": b(0) + text('kind = "gaussian_blur"\nsigma = 1.0\nsize = 5\n') + NO_OPTS + PLAIN
    + b(4, 10, 200, 30, 77) + image(10, 6, U8, GRAY_ALPHA, pad=0x81) + image(sample=U16, layout=GRAY_ALPHA),
    "denoise-in-place": b(0) + task("denoise") + NO_OPTS + b(2) + b(0) + image(8, 8, U8, RGBA, pad=0x80),
    "denoise-progress-nested": b(0) + task("denoise") + b(1 | 64 | 128, 2) + PLAIN + b(0)
    + image(8, 8, U8, RGB) + image(sample=U8, layout=RGB),
    "sr8-small": b(0) + task("sr8") + b(1 | 16 | 32) + struct.pack("<d", 0.0) + struct.pack("<Q", 7) + PLAIN + b(0)
    + image(4, 4, U8, RGB) + image(sample=U8, layout=RGB),
    "trained-denoise-wrong-op": b(3) + task("sr4") + NO_OPTS + PLAIN + b(0)
    + image(8, 8, U8, RGB) + image(sample=U8, layout=RGB),
    "colorize-weights": b(0) + task("colorize", 1) + b(5) + struct.pack("<ddd", 1.0, 2.0, 0.5) + NO_OPTS + PLAIN + b(0)
    + image(8, 4, U8, GRAY) + image(sample=F32, layout=RGBA),
    # The fuzz finding of docs/fuzzing.md: a 65536 x 1 gray strip to deblur (0xf4: 65536).
    "deblur-strip-65536": b(0) + task("deblur") + NO_OPTS + PLAIN + b(0)
    + image(0xf4, 1, U8, GRAY) + image(sample=U8, layout=GRAY),
    "denoise-strip-65535x2": b(0) + task("denoise") + NO_OPTS + PLAIN + b(0)
    + image(0xf5, 2, U8, GRAY) + image(sample=U8, layout=GRAY),
}
for name, data in seeds.items():
    write("restore", name, data)

# ---------------------------------------------------------------------------------------------
# loader: ELF headers (mode 0) and tables (mode 1); see fuzz/fuzz_targets/loader.rs.


def elf(cls=2, data=1, etype=3, machine=62):
    h = bytearray(64)
    h[:4] = b"\x7fELF"
    h[4], h[5], h[6] = cls, data, 1
    fmt = "<H" if data == 1 else ">H"
    h[16:18] = struct.pack(fmt, etype)
    h[18:20] = struct.pack(fmt, machine)
    return bytes(h)


write("loader", "elf-so-x86-64", b(0) + elf())
write("loader", "elf-so-aarch64", b(0) + elf(machine=183))
write("loader", "elf-32bit", b(0) + elf(cls=1, machine=3))
write("loader", "elf-exec", b(0) + elf(etype=2))
write("loader", "elf-big-endian", b(0) + elf(data=2, machine=22))
write("loader", "text", b(0) + b"not a library\n")
write("loader", "short-elf", b(0) + b"\x7fELF\x02\x01")


def string(s):
    raw = s.encode()
    return b(len(raw)) + raw


def table(struct_sel=0, major_sel=0, minor=0, masks=0, ident="fixture", version="0.0.1",
          desc="a fixture", fns=0, kinds=8, devices=1, flags=0, codes=(0, 0, 0),
          out=(4, 3), fractions=(0.5, 1.0), message=b"boom"):
    out_b = b(1) + b(struct_sel)
    if struct_sel == 1:
        out_b += struct.pack("<I", 12)
    out_b += b(major_sel)
    if major_sel & 1:
        out_b += struct.pack("<H", 2)
    out_b += struct.pack("<H", minor) + b(masks)
    out_b += string(ident) + string(version) + string(desc) + b(fns)
    out_b += struct.pack("<IIII", kinds, devices, flags, 0)
    out_b += b(codes[0]) + b(0) + b(codes[1]) + b(*out) + b(codes[2])
    out_b += b(len(fractions)) + b"".join(struct.pack("<f", f) for f in fractions)
    return out_b + message


write("loader", "table-ok", table())
write("loader", "table-learned-two-kinds", table(kinds=8 | 16, devices=3, flags=1, out=(8, 6)))
write("loader", "table-major-2", table(major_sel=1))
write("loader", "table-truncated", table(struct_sel=1))
write("loader", "table-null-restore", table(fns=8))
write("loader", "table-bad-id", table(ident="Bad Id"))
write("loader", "table-null-strings", table(masks=7))
write("loader", "table-errors", table(codes=(3, 0, 0), message="m\u00e9ssage".encode()))
write("loader", "table-size-error", table(codes=(0, 7, 0)))
write("loader", "table-restore-error", table(codes=(0, 0, 9), fractions=(0.1, float("nan"), 2.0)))
print("fuzz seeds written under", CORPUS)
