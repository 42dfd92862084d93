"""End-to-end test of restore_folder.py: a local Ray instance on 127.0.0.1 restores a small
folder tree, and every output's pixels equal, byte for byte, what ``davi restore`` writes for
the same file with the same model, seed, device and thread count (PNM outputs are equal as
whole files), with the ICC profile and EXIF carried the same way.

Run by ``scripts/test-ray.sh`` (which makes the venv with Ray and builds the binaries), with
DAVI_BIN (the ``davi`` CLI), DAVI_LIBRARY (libdavi.so) and DAVI_TEST_MODELS (the folder of the
shipped models) set. The models are copied first, so a model exported into models/ while the
test runs cannot make the two sides differ.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
import zlib

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
RECIPE = os.path.join(HERE, "restore_folder.py")
DAVI = os.environ.get("DAVI_BIN", "")
LIBRARY = os.environ.get("DAVI_LIBRARY", "")
MODELS = os.environ.get("DAVI_TEST_MODELS", "")
SEED = "5"


def fake_icc():
    """A made-up RGB ICC profile: header (size, `RGB `, `acsp`) and a few more bytes."""
    v = bytearray(160)
    v[0:4] = struct.pack(">I", 160)
    v[12:16], v[16:20], v[20:24], v[36:40] = b"mntr", b"RGB ", b"XYZ ", b"acsp"
    v[128:] = bytes(range(32))
    return bytes(v)


FAKE_EXIF = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00davi-ray-test"


def picture(h, w, c, k, dtype=np.uint8):
    """A deterministic noisy gradient."""
    rng = np.random.default_rng(k)
    top = 255 if dtype == np.uint8 else 65535
    base = np.linspace(0.15, 0.85, w)[None, :, None] * np.ones((h, 1, c))
    a = (base + rng.normal(0, 0.08, (h, w, c))).clip(0, 1) * top
    a = a.round().astype(dtype)
    return a[:, :, 0] if c == 1 else a


def png_rgb16(path, a):
    """A 16-bit RGB PNG (Pillow cannot write one)."""
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def files(root):
    out = set()
    for folder, _dirs, names in os.walk(root):
        for n in names:
            out.add(os.path.relpath(os.path.join(folder, n), root).replace(os.sep, "/"))
    return out


def decoded(path):
    with Image.open(path) as im:
        return im.mode, im.size, np.asarray(im).copy(), im.info.get("icc_profile"), \
            im.info.get("exif")


class RayRecipeTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        for name, value in (("DAVI_BIN", DAVI), ("DAVI_LIBRARY", LIBRARY),
                            ("DAVI_TEST_MODELS", MODELS)):
            if not value:
                raise unittest.SkipTest("%s is not set: run scripts/test-ray.sh" % name)
        # A short path: Ray's unix sockets live under RAY_TMPDIR (107-byte limit).
        cls.dir = tempfile.mkdtemp(prefix="davi-ray.", dir="/tmp")
        cls.models = {}
        for task in ("denoise", "sr4"):
            dst = os.path.join(cls.dir, "%s.safetensors" % task)
            shutil.copyfile(os.path.join(MODELS, "photo-%s.safetensors" % task), dst)
            cls.models[task] = dst
        cls.env = dict(os.environ, RAY_TMPDIR=os.path.join(cls.dir, "ray"),
                       DAVI_LIBRARY=LIBRARY, OMP_WAIT_POLICY="PASSIVE")
        os.makedirs(cls.env["RAY_TMPDIR"])

    @classmethod
    def tearDownClass(cls):
        if os.environ.get("DAVI_KEEP_TEST_DIR") != "1":
            shutil.rmtree(cls.dir, ignore_errors=True)

    def recipe(self, inp, out, task, *extra):
        summary = os.path.join(self.dir, "summary-%s.json" % os.path.basename(out))
        args = [sys.executable, RECIPE, inp, out, "--model", self.models[task], "--seed", SEED,
                "--address", "local", "--num-cpus", "2", "--actors", "2",
                "--summary", summary] + list(extra)
        p = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=600)
        sys.stderr.write(p.stderr[-3000:] if p.returncode not in (0, 1) else "")
        with open(summary) as f:
            return p, json.load(f)

    def cli(self, src, dst, task, threads):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        p = subprocess.run([DAVI, "restore", src, "-o", dst, "--model", self.models[task],
                            "--device", "cpu", "--seed", SEED, "--threads", str(threads)],
                           env=self.env, capture_output=True, text=True, timeout=600)
        self.assertEqual(p.returncode, 0, p.stderr)

    def assert_same_as_cli(self, inp, out, rels, task, threads):
        """Each output equals `davi restore` with the actors' libtorch thread count (CPU
        kernels sum in an order that depends on it: other counts differ in the last float
        bit, which shows as one level in a few 16-bit samples)."""
        ref = os.path.join(self.dir, "cli-" + os.path.basename(out))
        for rel in sorted(rels):
            self.cli(os.path.join(inp, rel), os.path.join(ref, rel), task, threads)
            mine, theirs = decoded(os.path.join(out, rel)), decoded(os.path.join(ref, rel))
            self.assertEqual(mine[:2], theirs[:2], "%s: mode and size" % rel)
            self.assertEqual(mine[2].dtype, theirs[2].dtype, rel)
            self.assertTrue(np.array_equal(mine[2], theirs[2]),
                            "%s: pixels differ from davi restore (max |d| %d)" % (
                                rel, np.abs(mine[2].astype(int) - theirs[2]).max()))
            self.assertEqual(mine[3:], theirs[3:], "%s: ICC profile and EXIF" % rel)
            if rel.endswith((".ppm", ".pgm")):
                with open(os.path.join(out, rel), "rb") as a, \
                        open(os.path.join(ref, rel), "rb") as b:
                    self.assertEqual(a.read(), b.read(), "%s: PNM files differ" % rel)
        return ref

    def test_a_tree_is_restored_like_davi_restore_and_resumes(self):
        inp, out = os.path.join(self.dir, "in"), os.path.join(self.dir, "out")
        rgb = picture(48, 64, 3, 1)
        os.makedirs(os.path.join(inp, "sub", "deeper"))
        os.makedirs(os.path.join(inp, "bad"))
        Image.fromarray(rgb).save(os.path.join(inp, "a.png"), icc_profile=fake_icc(),
                                  exif=FAKE_EXIF)
        Image.fromarray(picture(40, 56, 1, 2)).save(os.path.join(inp, "sub", "gray.png"))
        rgba = picture(48, 40, 4, 3)
        Image.fromarray(rgba, "RGBA").save(os.path.join(inp, "sub", "deeper", "rgba.png"))
        Image.fromarray(picture(32, 48, 1, 4, np.uint16)).save(os.path.join(inp, "sub", "g16.png"))
        Image.fromarray(picture(48, 64, 3, 5)).save(os.path.join(inp, "c.ppm"))
        Image.fromarray(picture(48, 32, 1, 6)).save(os.path.join(inp, "sub", "d.pgm"))
        Image.fromarray(picture(40, 48, 3, 7)).save(os.path.join(inp, "t.tif"))
        png_rgb16(os.path.join(inp, "rgb16.png"), picture(32, 32, 3, 8, np.uint16))
        with open(os.path.join(inp, "bad", "broken.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\nnot a png")
        Image.fromarray(rgb).save(os.path.join(inp, ".hidden.png"))
        with open(os.path.join(inp, "sub", "notes.txt"), "w") as f:
            f.write("not an image")
        good = {"a.png", "sub/gray.png", "sub/deeper/rgba.png", "sub/g16.png", "c.ppm",
                "sub/d.pgm", "t.tif"}

        p, s = self.recipe(inp, out, "denoise")
        self.assertEqual(p.returncode, 1, "failed files give exit status 1\n" + p.stderr[-3000:])
        self.assertEqual((s["found"], s["done"], s["skipped"], s["failed"]), (9, 7, 0, 2), s)
        errors = {e["file"]: e["error"] for e in s["errors"]}
        self.assertEqual(set(errors), {"bad/broken.png", "rgb16.png"})
        self.assertIn("cannot read", errors["bad/broken.png"])
        self.assertIn("16-bit colour", errors["rgb16.png"])
        for f in errors:
            self.assertIn("restore_folder: failed: %s: " % f, p.stderr)
        self.assertEqual(s["node_ips"], ["127.0.0.1"], "the local instance stays on loopback")
        self.assertEqual(files(out), good, "same relative paths, no temporary file left")
        with Image.open(os.path.join(out, "sub", "deeper", "rgba.png")) as im:
            self.assertTrue(np.array_equal(np.asarray(im)[:, :, 3], rgba[:, :, 3]), "alpha")
        with Image.open(os.path.join(out, "a.png")) as im:
            self.assertEqual((im.info.get("icc_profile"), im.info.get("exif")),
                             (fake_icc(), FAKE_EXIF))
        self.assert_same_as_cli(inp, out, good, "denoise", threads=1)

        # Resume: with the failing files gone every output exists, nothing is restored (and
        # Ray is not started); an output removed is the only file restored again.
        os.remove(os.path.join(inp, "rgb16.png"))
        shutil.rmtree(os.path.join(inp, "bad"))
        before = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in good}
        p, s = self.recipe(inp, out, "denoise")
        self.assertEqual(p.returncode, 0, p.stderr[-3000:])
        self.assertEqual((s["done"], s["skipped"], s["failed"]), (0, 7, 0))
        self.assertEqual(before, {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in good})

    def test_super_resolution_is_four_times_larger_and_equal_to_davi_restore(self):
        inp, out = os.path.join(self.dir, "in-sr"), os.path.join(self.dir, "out-sr")
        os.makedirs(inp)
        Image.fromarray(picture(16, 24, 3, 9)).save(os.path.join(inp, "small.png"))
        Image.fromarray(picture(12, 20, 1, 10)).save(os.path.join(inp, "small-gray.png"))
        p, s = self.recipe(inp, out, "sr4", "--actors", "1", "--cpus-per-actor", "2")
        self.assertEqual(p.returncode, 0, p.stderr[-3000:])
        self.assertEqual((s["done"], s["failed"]), (2, 0), s)
        with Image.open(os.path.join(out, "small.png")) as im:
            self.assertEqual(im.size, (96, 64))
        self.assert_same_as_cli(inp, out, {"small.png", "small-gray.png"}, "sr4", threads=2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
