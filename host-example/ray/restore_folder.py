"""Restore a folder tree on a Ray cluster with Ray Data: ``davi batch`` spread over many machines.

The driver lists the images under IN_DIR by the rules of ``davi batch`` (the same extensions,
hidden names and links to folders skipped, OUT_DIR skipped when it lies inside IN_DIR) and
leaves out those whose output already exists, so a rerun resumes. The relative paths become a
Ray dataset; ``map_batches`` sends them to a pool of actors (``ActorPoolStrategy``). Each actor
holds one libdavi context (``davi.Context``, the ctypes module ``host-example/python/davi.py``),
so each model is loaded once per actor, and for each file it reads the image with Pillow,
restores it and writes it under the same relative path in OUT_DIR (a temporary file beside the
target, then a rename: a file under its final name is always whole). ICC profiles (PNG, JPEG,
TIFF) and EXIF (PNG, JPEG) are carried over as ``davi batch`` does. The restored pixels are
those ``davi restore`` writes for the same file, model, seed and options, with
``--threads`` equal to ``--cpus-per-actor`` (``scripts/test-ray.sh`` compares them byte for
byte); the encoded files differ, since Pillow's encoders are not the CLI's (PPM/PGM files are
equal as files).

A file that fails (unreadable, undecodable, a format this recipe cannot carry, a restore or
write error) is reported on stderr and in the summary and counted; the run goes on and ends
with exit status 1. An unusable model or library stops the run (exit status 1).

Resources: on a CPU each actor reserves ``--cpus-per-actor`` cores (default 1) and gives libdavi
that many intra-op threads; ``OMP_WAIT_POLICY=PASSIVE`` keeps idle OpenMP threads from spinning
on cores other actors use. With ``--gpus-per-actor G`` (e.g. 1, or 0.5 for two actors sharing
a GPU) the actors reserve GPUs and restore on ``cuda`` (Ray sets ``CUDA_VISIBLE_DEVICES``).

Needs Ray Data and Pillow (``scripts/requirements-ray.txt``), ``davi.py``, ``libdavi.so`` and
the models at the same paths on every node (or a shared file system), and IN_DIR / OUT_DIR on
a file system every node sees. See docs/scale-out.md.

    python3 restore_folder.py IN_DIR OUT_DIR --task denoise                   # local Ray, CPU
    python3 restore_folder.py IN OUT --task sr4 --address auto --actors 8 --gpus-per-actor 1
    python3 restore_folder.py IN OUT --model m.safetensors --seed 3 --summary out.json
"""

import argparse
import json
import logging
import os
import sys
import time
import warnings

# The extensions (lower case) ``davi batch`` restores (host-example/cli/src/batch.rs).
EXTENSIONS = ("png", "jpg", "jpeg", "tif", "tiff", "ppm", "pgm", "bmp")
# Pillow's writer for each extension.
FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF", "tiff": "TIFF",
           "ppm": "PPM", "pgm": "PPM", "bmp": "BMP"}
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODULE_DIR = os.path.normpath(os.path.join(HERE, "..", "python"))


def list_images(root, skip=None):
    """(sorted relative paths with '/' separators, [(folder, error)]) as ``davi batch`` lists."""
    found, errors, stack = [], [], [""]
    while stack:
        rel_dir = stack.pop()
        folder = os.path.join(root, rel_dir) if rel_dir else root
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            if not rel_dir:
                raise
            errors.append((rel_dir, "cannot list %s: %s" % (folder, e)))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = rel_dir + "/" + entry.name if rel_dir else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if skip is None or os.path.realpath(entry.path) != skip:
                        stack.append(rel)
                elif entry.is_file(follow_symlinks=True):
                    ext = os.path.splitext(entry.name)[1][1:].lower()
                    if ext in EXTENSIONS:
                        found.append(rel)
            except OSError:
                continue
    found.sort(key=lambda p: p.encode("utf-8", "surrogateescape"))
    return found, errors


def icc_fits(icc, gray):
    """An ICC profile is written only where its colour space matches the output (as the CLI)."""
    return icc is not None and len(icc) >= 20 and icc[16:20] == (b"GRAY" if gray else b"RGB ")


def _raw_mode(im):
    """The raw mode of Pillow's first tile (where it says a PNG or TIFF stores 16 bits)."""
    tile = getattr(im, "tile", None) or []
    if not tile:
        return ""
    args = tile[0][3] if len(tile[0]) > 3 else None
    if isinstance(args, tuple):
        args = args[0] if args else None
    return args if isinstance(args, str) else ""


def read_image(path):
    """(H x W [x C] uint8/uint16 array, icc, exif) with the channels ``davi restore`` sees."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        icc, exif = im.info.get("icc_profile"), im.info.get("exif")
        mode, raw = im.mode, _raw_mode(im)
        if mode in ("RGB", "RGBA", "LA") and "16" in raw:
            raise ValueError("16-bit colour (%s): Pillow decodes it to 8 bits; restore it "
                             "with davi batch" % raw)
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif mode == "1":
            im = im.convert("L")
        elif mode == "CMYK":
            im = im.convert("RGB")
            icc = None  # a CMYK profile does not describe the RGB pixels
        elif mode not in ("L", "LA", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I"):
            raise ValueError("unsupported image mode %s" % mode)
        a = np.asarray(im)
        if a.dtype not in (np.uint8, np.uint16):
            if a.dtype.kind not in "iu" or a.min() < 0 or a.max() > 65535:
                raise ValueError("unsupported sample type %s" % a.dtype)
        a = a.astype(np.uint16) if a.dtype != np.uint8 else a
    return np.ascontiguousarray(a), icc, exif


def write_image(path, pixels, icc, exif):
    """Write atomically (temporary file beside ``path``, then a rename), as the CLI does."""
    from PIL import Image

    ext = os.path.splitext(path)[1][1:].lower()
    fmt = FORMATS[ext]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if channels in (2, 4) and fmt in ("JPEG", "PPM"):
        raise ValueError("%s cannot hold the alpha channel; write PNG or TIFF" % fmt)
    if pixels.dtype.itemsize == 2 and channels != 1:
        raise ValueError("Pillow cannot write 16-bit colour; restore it with davi batch")
    img = Image.fromarray(pixels)
    opts = {}
    if fmt in ("PNG", "JPEG", "TIFF") and icc_fits(icc, channels <= 2):
        opts["icc_profile"] = icc
    if fmt in ("PNG", "JPEG") and exif:
        opts["exif"] = exif
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, ".%s.tmp%d" % (name, os.getpid()))
    try:
        img.save(tmp, format=fmt, **opts)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class Restorer:
    """A Ray actor (``map_batches`` callable class): one libdavi context, files in and out."""

    def __init__(self, in_dir, out_dir, task=None, model=None, device="cpu", threads=1,
                 seed=0, perturb_h=None, tile=0, overlap=0, module_dir=DEFAULT_MODULE_DIR,
                 library=None, model_dir=None):
        # Before libdavi (and libtorch's OpenMP runtime) loads in this worker process.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if library:
            os.environ["DAVI_LIBRARY"] = library
        if model_dir:
            os.environ["DAVI_MODEL_DIR"] = model_dir
        if module_dir not in sys.path:
            sys.path.insert(0, module_dir)
        import davi  # noqa: E402 (the ctypes module, found through module_dir)

        self.davi = davi
        self.in_dir, self.out_dir = in_dir, out_dir
        self.params = {"seed": seed, "perturb_h": perturb_h, "tile": tile, "overlap": overlap}
        # A failure here (no library, no model, no device) fails the run, not a file.
        self.ctx = davi.Context(task=task, model=model, device=device, threads=threads)

    def restore_one(self, rel):
        src = os.path.join(self.in_dir, *rel.split("/"))
        dst = os.path.join(self.out_dir, *rel.split("/"))
        try:
            pixels, icc, exif = read_image(src)
        except Exception as e:  # noqa: BLE001 (every failure is the file's, and reported)
            return "cannot read %s: %s" % (src, e)
        height, width = pixels.shape[:2]
        try:
            out = self.ctx.restore(pixels, width, height, **self.params)
        except self.davi.DaviError as e:
            return "%s (%s)" % (e, e.status)
        except Exception as e:  # noqa: BLE001
            return "cannot restore: %s" % e
        try:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            write_image(dst, out, icc, exif)
        except Exception as e:  # noqa: BLE001
            return "cannot write %s: %s" % (dst, e)
        return ""

    def __call__(self, batch):
        import numpy as np

        errors, seconds = [], []
        for rel in batch["rel"]:
            t = time.monotonic()
            errors.append(self.restore_one(str(rel)))
            seconds.append(time.monotonic() - t)
        return {"rel": batch["rel"], "error": np.array(errors, dtype=object),
                "seconds": np.array(seconds, dtype=np.float64)}


def _duration(s):
    s = max(0, int(round(s)))
    return "%dh%02dm%02ds" % (s // 3600, s // 60 % 60, s % 60) if s >= 3600 else \
        "%dm%02ds" % (s // 60, s % 60)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Restore a folder tree on a Ray cluster (Ray Data).")
    p.add_argument("input", help="folder searched recursively (as davi batch)")
    p.add_argument("output", help="folder the outputs go to, same relative paths (created)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--task", help="deblur, sr4, inpaint, denoise or colorize (shipped model)")
    g.add_argument("--model", help="model file (.safetensors)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--perturb-h", type=float)
    p.add_argument("--tile", type=int, default=0)
    p.add_argument("--overlap", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="restore files whose output exists")
    p.add_argument("--summary", help="write a JSON summary (the keys of davi batch's)")
    p.add_argument("--quiet", action="store_true", help="no progress (failures still shown)")
    p.add_argument("--address", help="Ray cluster: 'auto', 'ray://host:10001', or 'local' for a "
                   "one-node instance on 127.0.0.1 (default: $RAY_ADDRESS, else local)")
    p.add_argument("--num-cpus", type=int, help="CPUs of a local instance (default: all)")
    p.add_argument("--actors", type=int, default=2, help="actors in the pool (default 2)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0,
                   help="CPU cores each actor reserves; also libdavi's threads (default 1)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0,
                   help="GPUs each actor reserves (0: restore on the CPU; 1; 0.5 shares one)")
    p.add_argument("--batch-size", type=int, default=1, help="files per actor call (default 1)")
    p.add_argument("--library", help="libdavi.so on every node (default: davi.py's search)")
    p.add_argument("--module-dir", default=DEFAULT_MODULE_DIR, help="folder holding davi.py")
    p.add_argument("--model-dir", help="$DAVI_MODEL_DIR for the actors (shipped models)")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    t0 = time.monotonic()
    if not os.path.isdir(a.input):
        print("restore_folder: %s is not a folder" % a.input, file=sys.stderr)
        return 1
    os.makedirs(a.output, exist_ok=True)
    in_dir, out_dir = os.path.realpath(a.input), os.path.realpath(a.output)
    if in_dir == out_dir:
        print("restore_folder: the output folder must differ from the input", file=sys.stderr)
        return 1
    for what, path in (("model", a.model), ("library", a.library)):
        # Checked here too (the actors see the same paths): a clear message, no Ray traceback.
        if path and not os.path.isfile(path):
            print("restore_folder: the %s %s is not a file" % (what, path), file=sys.stderr)
            return 1
    found, failed = list_images(in_dir, skip=out_dir)
    for rel, msg in failed:
        print("restore_folder: failed: %s: %s" % (rel, msg), file=sys.stderr)
    todo = [r for r in found
            if a.overwrite or not os.path.exists(os.path.join(out_dir, *r.split("/")))]
    skipped, done, node_ips = len(found) - len(todo), 0, []
    if todo:
        done, errors, node_ips = run_ray(a, in_dir, out_dir, todo, skipped)
        failed += errors
    seconds = time.monotonic() - t0
    if a.summary:
        summary = {"input": a.input, "output": a.output, "engine": "ray", "found": len(found),
                   "selected": len(found), "done": done, "skipped": skipped,
                   "failed": len(failed),
                   "errors": [{"file": f, "error": m} for f, m in failed], "seconds": seconds,
                   "actors": a.actors, "node_ips": node_ips}
        tmp = a.summary + ".tmp%d" % os.getpid()
        with open(tmp, "w") as f:
            f.write(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, a.summary)
    if not a.quiet:
        print("restore_folder: %d restored, %d skipped, %d failed (%d found) in %.1f s"
              % (done, skipped, len(failed), len(found), seconds), file=sys.stderr)
    return 1 if failed else 0


def _restore_stage(ray, ds, a, in_dir, out_dir):
    """The actor pool: ``map_batches`` with ``Restorer``, one libdavi context per actor."""
    gpus = a.gpus_per_actor
    threads = max(1, int(a.cpus_per_actor))
    return ds.map_batches(
        Restorer,
        fn_constructor_kwargs={
            "in_dir": in_dir, "out_dir": out_dir, "task": a.task,
            "model": os.path.abspath(a.model) if a.model else None,
            "device": "cuda" if gpus > 0 else "cpu", "threads": threads,
            "seed": a.seed, "perturb_h": a.perturb_h, "tile": a.tile,
            "overlap": a.overlap, "module_dir": os.path.abspath(a.module_dir),
            "library": a.library, "model_dir": a.model_dir},
        batch_size=a.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=a.actors),
        num_cpus=a.cpus_per_actor, num_gpus=gpus or None,
        runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}},
        # A crash of the process (not an exception) is retried twice, then ends the run;
        # the files written so far stay, and a rerun resumes after them.
        max_restarts=2, max_task_retries=2)


def run_ray(a, in_dir, out_dir, todo, skipped):
    """Restore ``todo`` on the cluster; returns (restored, [(file, error)], node addresses)."""
    import ray

    address = a.address or os.environ.get("RAY_ADDRESS") or "local"
    init = {"address": address, "logging_level": "warning", "log_to_driver": True}
    if address == "local":
        # A one-node instance nothing else joins: keep it on loopback, without a dashboard.
        init.update(include_dashboard=False, _node_ip_address="127.0.0.1")
        if a.num_cpus:
            init["num_cpus"] = a.num_cpus
    ray.init(**init)
    try:
        node_ips = sorted({n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]})
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        if a.quiet:
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        ds = ray.data.from_items([{"rel": r} for r in todo],
                                 override_num_blocks=min(len(todo), 4 * max(1, a.actors)))
        with warnings.catch_warnings():
            # Ray 2.60 names no parameter for max_restarts / max_task_retries and warns that
            # passing them as extra remote arguments is deprecated; without them a file that
            # crashes its process would be retried forever.
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = _restore_stage(ray, ds, a, in_dir, out_dir)
        total, done, failed, busy = len(todo), 0, [], 0.0
        tty = sys.stderr.isatty()
        for k, row in enumerate(ds.iter_rows(), 1):
            rel, err = str(row["rel"]), str(row["error"])
            busy += float(row["seconds"])
            if err:
                if tty and not a.quiet:
                    sys.stderr.write("\r\x1b[K")
                print("restore_folder: failed: %s: %s" % (rel, err), file=sys.stderr)
                failed.append((rel, err))
            else:
                done += 1
            if not a.quiet:
                # The pool works on `actors` files at once: files left x mean time / actors.
                eta = busy / k * (total - k) / max(1, a.actors)
                line = "[%d/%d] %d%% %d restored, %d skipped, %d failed, eta %s  %s" % (
                    k, total, k * 100 // total, done, skipped, len(failed), _duration(eta), rel)
                sys.stderr.write("\r\x1b[K" + line if tty else line + "\n")
                sys.stderr.flush()
        if tty and not a.quiet:
            sys.stderr.write("\n")
        return done, failed, node_ips
    finally:
        ray.shutdown()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 (a run-level failure: model, library, cluster)
        print("restore_folder: error: %s" % (str(e).strip().splitlines() or [repr(e)])[-1],
              file=sys.stderr)
        sys.exit(1)
