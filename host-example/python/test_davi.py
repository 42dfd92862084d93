"""Tests of davi.py against the real libdavi and the shipped default models, and of training
through it on the tiny presets (TrainingTests: synthetic images, seconds on a CPU).

Run: DAVI_LIBRARY=target/debug/libdavi.so python3 -m unittest -v test_davi
(the Rust test sdk/capi/tests/python.rs runs it with the library of its own build). NumPy
tests run where NumPy is importable (the project's .venv has it) and are skipped otherwise.
"""

import array
import math
import os
import re
import shutil
import struct
import tempfile
import unittest
import zlib

import davi


def cpu_has_bf16():
    """Whether the CPU has bf16 instructions, as libdavi decides (x86 avx512_bf16, Arm bf16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "bf16" in flags


def picture(width, height, channels, seed=0):
    """A deterministic smooth-plus-texture 8-bit picture."""
    out = bytearray()
    for y in range(height):
        for x in range(width):
            for c in range(channels):
                v = 40 + 150 * x / width + 30 * ((y * 7 + c * 13 + seed) % 11) / 11
                out.append(min(255, int(v)))
    return bytes(out)


class RestoreTests(unittest.TestCase):
    W, H = 40, 32

    def test_bytes_in_bytes_out_deterministic_for_a_seed(self):
        px = picture(self.W, self.H, 3)
        a = davi.restore(px, self.W, self.H, task="denoise", seed=3)
        b = davi.restore(px, self.W, self.H, task="denoise", seed=3)
        self.assertIsInstance(a, bytes)
        self.assertEqual(len(a), len(px))
        self.assertEqual(a, b)
        self.assertNotEqual(a, px)

    def test_sixteen_bit_and_float_follow_the_eight_bit_result(self):
        px = picture(self.W, self.H, 3)
        ref = davi.restore(px, self.W, self.H, task="denoise", perturb_h=0)
        u16 = davi.restore(array.array("H", [v * 257 for v in px]), self.W, self.H,
                           task="denoise", perturb_h=0)
        f32 = davi.restore(array.array("f", [v / 255 for v in px]), self.W, self.H,
                           task="denoise", perturb_h=0)
        self.assertEqual((u16.typecode, f32.typecode), ("H", "f"))
        self.assertLessEqual(max(abs(a / 257 - b) for a, b in zip(u16, ref)), 1.0)
        self.assertLessEqual(max(abs(a * 255 - b) for a, b in zip(f32, ref)), 1.0)

    def test_alpha_is_carried_through(self):
        px = bytearray(picture(self.W, self.H, 4))
        for i in range(3, len(px), 4):
            px[i] = (i * 37) % 256
        out = davi.restore(bytes(px), self.W, self.H, task="deblur")
        self.assertEqual(out[3::4], bytes(px[3::4]))

    def test_super_resolution_is_four_times_larger(self):
        with davi.Context(task="sr4") as ctx:
            out, w, h, c = ctx.restore_sized(picture(12, 8, 3), 12, 8)
            self.assertIn("super_resolution", ctx.spec_text())
        self.assertEqual((w, h, c, len(out)), (48, 32, 3, 48 * 32 * 3))

    def test_colorization_turns_gray_into_rgb(self):
        with davi.Context(task="colorize") as ctx:
            out, w, h, c = ctx.restore_sized(picture(self.W, self.H, 1), self.W, self.H)
        self.assertEqual((w, h, c), (self.W, self.H, 3))

    def test_inpainting_takes_a_box_and_refuses_one_outside_the_picture(self):
        px = picture(self.W, self.H, 3)
        out = davi.restore(px, self.W, self.H, task="inpaint", box=(8, 8, 12, 16))
        self.assertEqual(len(out), len(px))
        with self.assertRaises(davi.DaviError) as e:
            davi.restore(px, self.W, self.H, task="inpaint", box=(30, 30, 12, 16))
        self.assertEqual(e.exception.status, "INVALID_SPEC")

    def test_seed_and_perturbation_reach_the_restore(self):
        px = picture(self.W, self.H, 3)
        a = davi.restore(px, self.W, self.H, task="denoise", perturb_h=0.3, seed=1)
        b = davi.restore(px, self.W, self.H, task="denoise", perturb_h=0.3, seed=2)
        c = davi.restore(px, self.W, self.H, task="denoise", perturb_h=0, seed=2)
        self.assertNotEqual(a, b)
        self.assertNotEqual(b, c)
        with self.assertRaises(davi.DaviError) as e:
            davi.restore(px, self.W, self.H, task="denoise", perturb_h=-1)
        self.assertEqual(e.exception.status, "INVALID_ARGUMENT")
        self.assertIn("perturb", str(e.exception))

    def test_progress_is_reported_and_can_cancel(self):
        # 17 x 17 tiles of 16 pixels: more than one batched network call (256 tiles each).
        big = picture(200, 200, 3)
        seen = []
        davi.restore(big, 200, 200, task="denoise", tile=16, progress=seen.append)
        self.assertGreater(len(seen), 2)
        self.assertEqual(seen, sorted(seen))
        self.assertEqual(seen[-1], 1.0)
        px = picture(self.W, self.H, 3)
        with self.assertRaises(davi.DaviError) as e:
            davi.restore(px, self.W, self.H, task="denoise", tile=16, progress=lambda f: False)
        self.assertEqual(e.exception.status, "CANCELLED")

        def boom(_fraction):
            raise KeyError("from the callback")
        with self.assertRaises(KeyError):
            davi.restore(px, self.W, self.H, task="denoise", tile=16, progress=boom)

    def test_ensemble_averages_orientations_and_refuses_other_sizes(self):
        px = picture(self.W, self.H, 3)
        with davi.Context(task="denoise", device="cpu") as ctx:
            one = ctx.restore(px, self.W, self.H, perturb_h=0)
            eight = ctx.restore(px, self.W, self.H, perturb_h=0, ensemble=8)
            self.assertEqual(len(one), len(eight))
            self.assertNotEqual(bytes(one), bytes(eight))
            self.assertEqual(bytes(ctx.restore(px, self.W, self.H, perturb_h=0, ensemble=1)),
                             bytes(one))
            with self.assertRaises(davi.DaviError) as e:
                ctx.restore(px, self.W, self.H, ensemble=3)
            self.assertEqual(e.exception.status, "INVALID_ARGUMENT")
            self.assertIn("ensemble", str(e.exception))

    def test_bad_input_raises_clear_errors(self):
        with self.assertRaises(davi.DaviError) as e:
            davi.restore(b"\x00" * 7, 4, 4, task="denoise")
        self.assertEqual(e.exception.status, "INVALID_ARGUMENT")
        self.assertIn("not 4x4 pixels", str(e.exception))
        with self.assertRaises(davi.DaviError) as e:
            davi.Context(task="sharpen")
        self.assertIn("sharpen", str(e.exception))
        with self.assertRaises(davi.DaviError) as e:
            davi.Context(model="/nonexistent/model.safetensors")
        self.assertEqual(e.exception.status, "NOT_FOUND")
        with self.assertRaises(davi.DaviError) as e:
            davi.restore(array.array("d", [0.5] * 48), 4, 4, task="denoise")
        self.assertEqual(e.exception.status, "UNSUPPORTED_FORMAT")
        with self.assertRaises(ValueError):
            davi.restore(b"", 1, 1)

    def test_a_restore_from_a_progress_callback_on_its_own_context_is_busy(self):
        px = picture(self.W, self.H, 3)
        with davi.Context(task="denoise") as ctx:
            def again(_fraction):
                ctx.restore(px, self.W, self.H)
            with self.assertRaises(davi.DaviError) as e:
                ctx.restore(px, self.W, self.H, progress=again)
            self.assertEqual(e.exception.status, "BUSY")
            self.assertEqual(len(ctx.restore(px, self.W, self.H)), len(px))  # still usable

    def test_precision_bf16_is_close_to_fp32_and_bad_names_are_refused(self):
        px = picture(self.W, self.H, 3)
        ref = davi.restore(px, self.W, self.H, task="denoise", device="cpu", perturb_h=0)
        if cpu_has_bf16():
            with davi.Context(task="denoise", device="cpu", precision="bf16") as ctx:
                self.assertEqual(ctx.precision, "bf16")
                out = ctx.restore(px, self.W, self.H, perturb_h=0)
            # The bound of sdk/capi/tests/precision.rs on the same model: 8-bit samples at
            # most 16 levels from fp32's (9 was the worst on the held-out crops).
            self.assertLessEqual(max(abs(a - b) for a, b in zip(out, ref)), 16)
            self.assertNotEqual(out, ref)
        else:
            with self.assertRaises(davi.DaviError) as e:
                davi.Context(task="denoise", device="cpu", precision="bf16")
            self.assertEqual(e.exception.status, "DEVICE_ERROR")
        with self.assertRaises(davi.DaviError) as e:
            davi.Context(task="denoise", device="cpu", precision="fp16")
        self.assertEqual(e.exception.status, "DEVICE_ERROR")
        self.assertIn("CUDA", str(e.exception))
        for bad in ("BF16", "bf16 ", "half"):
            with self.assertRaises(davi.DaviError) as e:
                davi.restore(px, self.W, self.H, task="denoise", device="cpu", precision=bad)
            self.assertEqual(e.exception.status, "INVALID_ARGUMENT")
            self.assertIn(repr(bad).replace("'", '"'), str(e.exception))
        fp32 = davi.restore(px, self.W, self.H, task="denoise", device="cpu", perturb_h=0,
                            precision="fp32")
        self.assertEqual(fp32, ref)

    def test_status_names_follow_the_header(self):
        header = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                              "include", "davi.h")
        with open(header) as f:
            text = f.read()
        codes = {int(v): n for n, v in re.findall(r"DAVI_STATUS_(\w+) = (\d+)", text)}
        self.assertEqual(codes, dict(enumerate(davi._STATUS)))
        abi = int(re.search(r"#define DAVI_ABI_VERSION (\d+)", text).group(1))
        self.assertLessEqual(davi._ABI_VERSION, abi)

    def test_version_and_library(self):
        self.assertRegex(davi.version(), r"^\d+\.\d+\.\d+$")
        self.assertTrue(davi.library_path())


def write_png(path, width, height, rgb):
    """An 8-bit RGB PNG, written with the standard library only."""
    rows = b"".join(b"\x00" + rgb[y * width * 3:(y + 1) * width * 3] for y in range(height))

    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n"
                + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def same_float(a, b):
    return a == b or (math.isnan(a) and math.isnan(b))


class TrainingTests(unittest.TestCase):
    """Training through davi.Training on the tiny presets (seconds on a CPU)."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="davi-py-train-")
        cls.images = os.path.join(cls.dir, "images")
        os.makedirs(cls.images)
        for i in range(3):
            write_png(os.path.join(cls.images, "%d.png" % i), 40, 36, picture(40, 36, 3, seed=i))
        # The teacher: the tiny prior trained to its end in this thread.
        with davi.Training(preset="tiny-prior", kind="prior",
                           run_dir=os.path.join(cls.dir, "prior"),
                           overrides={"data.train_dir": cls.images, "run.total_steps": 2,
                                      "run.device": "cpu"}) as t:
            info = t.run()
            cls.teacher = os.path.join(t.run_dir, "model.safetensors")
        assert info.finished and info.kind == "prior", info
        assert os.path.isfile(cls.teacher)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def davi_overrides(self, steps):
        return {"data.train_dir": self.images, "data.heldout_dir": self.images,
                "davi.teacher": self.teacher, "run.total_steps": steps,
                "run.checkpoint_every": 1000, "run.eval_every": 2, "run.device": "cpu"}

    def test_cancelled_and_resumed_run_equals_the_uninterrupted_one_and_exports(self):
        over = self.davi_overrides(4)
        full = []
        with davi.Training(preset="tiny-davi", run_dir=os.path.join(self.dir, "full"),
                           overrides=over) as t:
            t.run(progress=full.append)
        self.assertEqual([e.step for e in full], [1, 2, 3, 4])
        self.assertTrue(full[1].evaluated and full[1].heldout_psnr > 0)
        self.assertTrue(math.isnan(full[0].heldout_psnr))
        self.assertIn("ikl", full[0].terms)

        part_dir = os.path.join(self.dir, "part")
        seen = []
        with davi.Training(preset="tiny-davi", run_dir=part_dir, overrides=over) as t:
            for event in t.events():      # trains in libdavi's thread
                seen.append(event)
                if event.step >= 2:
                    t.cancel()            # stops after the step in progress, checkpointed
            info = t.info()
        self.assertIn(len(seen), (2, 3))
        self.assertEqual((info.step, info.checkpoint_step, info.finished),
                         (seen[-1].step, seen[-1].step, False))
        with davi.Training(run_dir=part_dir) as t:   # resume from the folder alone
            self.assertEqual(t.info().kind, "davi")
            seen += list(t.events())
            model = os.path.join(self.dir, "exported.safetensors")
            t.export(model)
        self.assertEqual([e.step for e in seen], [1, 2, 3, 4])
        for a, b in zip(seen, full):
            self.assertEqual(a.terms.keys(), b.terms.keys())
            for k in a.terms:
                self.assertTrue(same_float(a.terms[k], b.terms[k]),
                                "step %d %s: %r vs %r" % (a.step, k, a.terms[k], b.terms[k]))
            self.assertTrue(same_float(a.heldout_psnr, b.heldout_psnr))
        with davi.Context(model=model, device="cpu") as ctx:
            out, w, h, c = ctx.restore_sized(picture(12, 8, 3), 12, 8)
        self.assertEqual((w, h, c, len(out)), (48, 32, 3, 48 * 32 * 3))

    def test_progress_cancels_in_the_callers_thread_and_exceptions_come_back(self):
        over = {"data.train_dir": self.images, "run.total_steps": 8, "run.device": "cpu",
                "run.checkpoint_every": 1000}
        with davi.Training(preset="tiny-prior", run_dir=os.path.join(self.dir, "cancel"),
                           overrides=over) as t:
            with self.assertRaises(davi.DaviError) as e:
                t.run(progress=lambda ev: ev.step < 2)
            self.assertEqual(e.exception.status, "CANCELLED")
            self.assertEqual(t.info().checkpoint_step, 2)

            def boom(_event):
                raise KeyError("from the callback")
            with self.assertRaises(KeyError):
                t.run(progress=boom)
            self.assertEqual(t.info().checkpoint_step, 3)
            self.assertEqual(t.run(max_steps=2).step, 5)
            t.start(max_steps=1)
            with self.assertRaises(davi.DaviError) as e:
                t.run()
            self.assertEqual(e.exception.status, "BUSY")
            self.assertEqual(t.wait().step, 6)

    def test_bad_configs_and_missing_data_raise_clear_errors(self):
        run_dir = os.path.join(self.dir, "refused")
        with self.assertRaises(davi.DaviError) as e:
            davi.Training(preset="no-such-preset", run_dir=run_dir)
        self.assertEqual(e.exception.status, "INVALID_CONFIG")
        self.assertIn("no-such-preset", str(e.exception))
        with self.assertRaises(davi.DaviError) as e:
            davi.Training(config="name = 'x'\n[run\n", run_dir=run_dir)
        self.assertEqual(e.exception.status, "INVALID_CONFIG")
        with self.assertRaises(davi.DaviError) as e:
            davi.Training(preset="tiny-prior", kind="davi", run_dir=run_dir)
        self.assertEqual(e.exception.status, "INVALID_CONFIG")
        with self.assertRaises(davi.DaviError) as e:
            davi.Training(preset="tiny-prior", run_dir=run_dir,
                          overrides={"data.train_dir": os.path.join(self.dir, "nothing")})
        self.assertEqual(e.exception.status, "NOT_FOUND")
        self.assertIn("data.train_dir", str(e.exception))
        with self.assertRaises(davi.DaviError) as e:
            davi.Training(run_dir=os.path.join(self.dir, "no-run-here"))
        self.assertEqual(e.exception.status, "NOT_FOUND")


try:
    import numpy
except ImportError:  # the module itself never needs NumPy
    numpy = None


@unittest.skipIf(numpy is None, "NumPy is not installed")
class NumpyTests(unittest.TestCase):
    def test_arrays_in_arrays_out(self):
        px = numpy.frombuffer(picture(40, 32, 3), dtype=numpy.uint8).reshape(32, 40, 3)
        out = davi.restore(px, 40, 32, task="denoise", perturb_h=0)
        self.assertEqual((out.shape, out.dtype), ((32, 40, 3), numpy.uint8))
        ref = davi.restore(px.tobytes(), 40, 32, task="denoise", perturb_h=0)
        self.assertEqual(out.tobytes(), ref)
        gray = numpy.ascontiguousarray(px[:, :, 0].astype(numpy.float32) / 255)
        big = davi.restore(gray[:8, :12].copy(), 12, 8, task="sr4")
        self.assertEqual((big.shape, big.dtype), ((32, 48), numpy.float32))
        with self.assertRaises(davi.DaviError):
            davi.restore(px.astype(numpy.float64), 40, 32, task="denoise")


if __name__ == "__main__":
    unittest.main()
