"""libdavi from Python: one-step diffusion-prior image restoration, with no dependencies.

A thin ctypes layer over libdavi's C API (include/davi.h). Pixels go in and come out as
interleaved samples, top row first::

    import davi
    out = davi.restore(pixels, width, height, task="denoise")          # bytes in, bytes out
    big = davi.restore(small, 64, 48, task="sr4")                       # 256 x 192 result
    filled = davi.restore(pixels, w, h, task="inpaint", box=(top, left, height, width))

    with davi.Context(task="deblur", device="cuda") as ctx:             # load once, reuse
        for frame in frames:
            sharp = ctx.restore(frame, w, h, seed=1, progress=print)

``pixels`` is ``bytes``/``bytearray`` (8-bit samples), any buffer such as ``array.array('H')``
(16-bit) or ``array.array('f')`` (float in [0, 1]), or a NumPy array of shape (H, W) or
(H, W, C) with dtype uint8, uint16 or float32. Channels (1 gray, 2 gray+alpha, 3 RGB,
4 RGBA) follow from the buffer's length. The result has the input's sample type and
channels (RGB for colorization of a gray input) and its type: ``bytes``, ``array.array``, or
a NumPy array. Alpha is carried through, never restored.

Keyword parameters of ``restore`` (all optional):
    task        "deblur", "sr4", "inpaint", "denoise" or "colorize": the installed default model
    model       path of a model file instead (its trained operator is used)
    device      "auto" (default), "cpu", "cuda", "cuda:N"
    threads     CPU threads for libtorch (0 = its default)
    precision   the network's: "fp32" (default), "bf16" (CUDA, and CPUs with bf16
                instructions), "fp16" (CUDA only); anything but "fp32" needs libdavi ABI 4
    seed        seed of the bridge perturbation noise (equal seeds give equal pixels)
    perturb_h   DAVI's perturbation h (None = the model's; 0 = deterministic)
    tile, overlap   tile edge and blend width in pixels (0 = the model's / automatic)
    ensemble    1 (default), 2, 4 or 8: restore in that many orientations and average
                (better, that many times slower; needs libdavi's C ABI 5)
    box         (top, left, height, width) to fill, for inpainting, or a list of boxes
    spec        a full operator spec as TOML/JSON text, instead of the model's operator
                (e.g. a super-resolution method; the generator itself is trained for one
                degradation and takes no strength setting: docs/models.md)
    progress    callable(fraction) called between tiles; returning False cancels

Failures raise ``DaviError`` (``.status`` is the libdavi status name) with libdavi's own
message. The library is found through $DAVI_LIBRARY, then ``libdavi.so.0`` beside this file,
then the build folders of the source checkout this file lives in, then the system's loader
path. Run ``python3 davi.py IN.pnm OUT.pnm --task denoise`` to restore a PNM file.

Training (libdavi ABI 3) trains a prior or a DAVI restorer from a preset or TOML config::

    with davi.Training(preset="photo-denoise-davi", run_dir="runs/mine",
                       overrides={"data.train_dir": "photos/", "run.total_steps": 2000}) as t:
        for event in t.events():            # trains in libdavi's thread, yields every step
            print(event.step, event.loss, event.heldout_psnr)
            if want_to_stop:
                t.cancel()                  # stops after this step, with a checkpoint
        t.export("mine.safetensors")         # a model file davi.Context(model=...) restores with

``davi.Training(run_dir=...)`` alone resumes the run in that folder; ``t.run(progress=f)``
trains in the calling thread instead (``f(event)`` returning False cancels).
"""

import array
import collections
import ctypes
import ctypes.util
import json
import os
import queue
import sys
import threading

__all__ = ["restore", "Context", "DaviError", "version", "library_path", "Training",
           "TrainingProgress", "TrainingInfo"]

# --- the C API (ABI 1) ---------------------------------------------------------------------

# DaviStatus names by value, as include/davi.h numbers them (test_davi.py checks the header).
_STATUS = [
    "OK", "NULL_ARGUMENT", "INVALID_ARGUMENT", "INVALID_SPEC", "UNSUPPORTED_OPERATOR",
    "UNSUPPORTED_FORMAT", "MODEL_ERROR", "DEVICE_ERROR", "CANCELLED", "OUT_OF_MEMORY",
    "ABI_MISMATCH", "PANIC", "INTERNAL", "NOT_FOUND", "BUSY", "IO_ERROR", "INVALID_CONFIG",
]
# The oldest C ABI with every function and struct field restoring uses. ABI 2 only appended
# DAVI_STATUS_BUSY, which an ABI 1 library never returns, so ABI 1 libraries still serve.
_ABI_VERSION = 1
# Training (davi_training_*, DAVI_STATUS_IO_ERROR, DAVI_STATUS_INVALID_CONFIG) needs ABI 3.
_TRAINING_ABI_VERSION = 3
# DaviContextOptions.precision was appended in ABI 4. An older library reads only the fields
# before it (davi_context_options_init sets its smaller struct_size), so a precision other
# than fp32 is refused here rather than silently ignored there.
_PRECISION_ABI_VERSION = 4
# DaviRestoreOptions.ensemble (the former `reserved`, which had to be 0) means something from
# ABI 5: an older library would refuse a non-zero value as a reserved field, so it is refused
# here with the reason.
_ENSEMBLE_ABI_VERSION = 5
_U8, _U16, _F32 = 0, 1, 2
_LAYOUTS = {1: 0, 2: 1, 3: 2, 4: 3}  # channels -> DaviChannelLayout
_SAMPLE_BYTES = {_U8: 1, _U16: 2, _F32: 4}

_ProgressFn = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_float)


class _ContextOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("threads", ctypes.c_uint32),
        ("model_path", ctypes.c_char_p),
        ("model_bytes", ctypes.c_void_p),
        ("model_len", ctypes.c_size_t),
        ("task", ctypes.c_char_p),
        ("device", ctypes.c_char_p),
        ("precision", ctypes.c_char_p),  # ABI 4
    ]


class _RestoreOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("tile", ctypes.c_uint32),
        ("overlap", ctypes.c_uint32),
        ("ensemble", ctypes.c_uint32),  # ABI 5; `reserved` (0) before
        ("perturb_h", ctypes.c_double),
        ("seed", ctypes.c_uint64),
        ("progress", _ProgressFn),
        ("user_data", ctypes.c_void_p),
    ]


class _Image(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("width", ctypes.c_uint32),
        ("height", ctypes.c_uint32),
        ("sample_type", ctypes.c_uint32),
        ("layout", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("row_stride", ctypes.c_ssize_t),
        ("data", ctypes.c_void_p),
    ]


class _TrainingOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("kind", ctypes.c_uint32),
        ("preset", ctypes.c_char_p),
        ("config", ctypes.c_char_p),
        ("overrides", ctypes.POINTER(ctypes.c_char_p)),
        ("override_count", ctypes.c_size_t),
        ("run_dir", ctypes.c_char_p),
        ("resume", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


class _TrainingProgress(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("term_count", ctypes.c_uint32),
        ("step", ctypes.c_uint64),
        ("total_steps", ctypes.c_uint64),
        ("checkpoint_step", ctypes.c_uint64),
        ("evaluated", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("loss", ctypes.c_double),
        ("heldout_psnr", ctypes.c_double),
        ("heldout_ssim", ctypes.c_double),
        ("elapsed_seconds", ctypes.c_double),
        ("term_names", ctypes.POINTER(ctypes.c_char_p)),
        ("term_values", ctypes.POINTER(ctypes.c_double)),
    ]


_TrainingProgressFn = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p,
                                       ctypes.POINTER(_TrainingProgress))


class _TrainingRunOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("max_steps", ctypes.c_uint64),
        ("progress", _TrainingProgressFn),
        ("user_data", ctypes.c_void_p),
    ]


class _TrainingInfo(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("kind", ctypes.c_uint32),
        ("step", ctypes.c_uint64),
        ("total_steps", ctypes.c_uint64),
        ("checkpoint_step", ctypes.c_uint64),
        ("running", ctypes.c_uint32),
        ("finished", ctypes.c_uint32),
    ]


class DaviError(Exception):
    """A libdavi call failed. ``status`` is the status name (e.g. "INVALID_SPEC")."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def _candidates():
    env = os.environ.get("DAVI_LIBRARY")
    if env:
        yield env
        return
    here = os.path.dirname(os.path.abspath(__file__))
    yield os.path.join(here, "libdavi.so.0")
    checkout = os.path.normpath(os.path.join(here, "..", ".."))
    for profile in ("release", "debug"):
        yield os.path.join(checkout, "target", profile, "libdavi.so")
    found = ctypes.util.find_library("davi")
    if found:
        yield found


_lib = None
_lib_path = None


def _library():
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    tried = []
    for path in _candidates():
        if os.sep in path and not os.path.exists(path):
            tried.append(path)
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            tried.append("%s (%s)" % (path, e))
            continue
        _declare(lib)
        if lib.davi_abi_version() < _ABI_VERSION:
            raise DaviError("ABI_MISMATCH", "%s implements C ABI %d; this module needs %d"
                            % (path, lib.davi_abi_version(), _ABI_VERSION))
        _lib, _lib_path = lib, path
        return lib
    raise DaviError("NOT_FOUND", "libdavi not found; set DAVI_LIBRARY to libdavi.so (tried: %s)"
                    % ", ".join(tried or ["nothing"]))


def _declare(lib):
    P, U32, SZ = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_size_t
    sigs = {
        "davi_version": (ctypes.c_char_p, []),
        "davi_abi_version": (U32, []),
        "davi_status_string": (ctypes.c_char_p, [ctypes.c_int32]),
        "davi_context_options_init": (ctypes.c_int, [P, SZ]),
        "davi_context_new": (ctypes.c_int, [P, P, ctypes.c_char_p, SZ]),
        "davi_context_free": (None, [P]),
        "davi_context_last_error": (ctypes.c_int, [P, ctypes.c_char_p, SZ, P]),
        "davi_context_spec": (ctypes.c_int, [P, P]),
        "davi_spec_new_task": (ctypes.c_int, [ctypes.c_char_p, P]),
        "davi_spec_parse": (ctypes.c_int, [ctypes.c_char_p, P, ctypes.c_char_p, SZ]),
        "davi_spec_free": (None, [P]),
        "davi_spec_kind": (ctypes.c_char_p, [P]),
        "davi_spec_add_box": (ctypes.c_int, [P, U32, U32, U32, U32]),
        "davi_spec_to_text": (ctypes.c_int, [P, ctypes.c_char_p, SZ, P]),
        "davi_restore_options_init": (ctypes.c_int, [P, SZ]),
        "davi_output_size": (ctypes.c_int, [P, U32, U32, P, P]),
        "davi_restore": (ctypes.c_int, [P, P, P, P, P]),
    }
    for name, (res, args) in sigs.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
    # Training: ABI 3. An older library simply lacks these; Training() says so.
    training = {
        "davi_training_options_init": (ctypes.c_int, [P, SZ]),
        "davi_training_new": (ctypes.c_int, [P, P, ctypes.c_char_p, SZ]),
        "davi_training_free": (None, [P]),
        "davi_training_last_error": (ctypes.c_int, [P, ctypes.c_char_p, SZ, P]),
        "davi_training_info": (ctypes.c_int, [P, P, SZ]),
        "davi_training_run_dir": (ctypes.c_int, [P, ctypes.c_char_p, SZ, P]),
        "davi_training_run_options_init": (ctypes.c_int, [P, SZ]),
        "davi_training_run": (ctypes.c_int, [P, P]),
        "davi_training_start": (ctypes.c_int, [P, P]),
        "davi_training_cancel": (ctypes.c_int, [P]),
        "davi_training_wait": (ctypes.c_int, [P]),
        "davi_training_export": (ctypes.c_int, [P, ctypes.c_char_p]),
    }
    for name, (res, args) in training.items():
        f = getattr(lib, name, None)
        if f is not None:
            f.restype, f.argtypes = res, args


def version():
    """The libdavi library version, "MAJOR.MINOR.PATCH"."""
    return _library().davi_version().decode()


def library_path():
    """The path libdavi was loaded from."""
    _library()
    return _lib_path


def _status_name(code):
    return _STATUS[code] if 0 <= code < len(_STATUS) else "UNKNOWN(%d)" % code


def _check(code, what, detail=None):
    if code != 0:
        text = _library().davi_status_string(code).decode()
        msg = "%s: %s" % (what, text) + (": %s" % detail if detail else "")
        raise DaviError(_status_name(code), msg)


# --- pixels ---------------------------------------------------------------------------------

_TYPECODES = {"B": _U8, "b": _U8, "c": _U8, "H": _U16, "f": _F32}
_NUMPY_KINDS = {"uint8": _U8, "uint16": _U16, "float32": _F32}


def _as_buffer(pixels):
    """(writable-or-readonly memoryview of bytes, sample type, numpy-like or None)."""
    if hasattr(pixels, "__array_interface__") and hasattr(pixels, "dtype"):
        dtype = str(pixels.dtype)
        if dtype not in _NUMPY_KINDS:
            raise DaviError("UNSUPPORTED_FORMAT",
                            "arrays must be uint8, uint16 or float32, not %s" % dtype)
        if not pixels.flags["C_CONTIGUOUS"]:
            pixels = pixels.copy(order="C")
        return memoryview(pixels).cast("B"), _NUMPY_KINDS[dtype], pixels
    mv = memoryview(pixels)
    fmt = mv.format.lstrip("@=<")
    if fmt not in _TYPECODES:
        raise DaviError("UNSUPPORTED_FORMAT",
                        "buffers of format %r are not supported (use bytes, array('H') or "
                        "array('f'))" % mv.format)
    return mv.cast("B") if mv.ndim != 1 or mv.format != "B" else mv, _TYPECODES[fmt], None


def _image(mv_or_buf, width, height, sample, channels, writable_buf=None):
    img = _Image()
    img.struct_size = ctypes.sizeof(_Image)
    img.width, img.height = width, height
    img.sample_type, img.layout, img.flags = sample, _LAYOUTS[channels], 0
    img.row_stride = width * channels * _SAMPLE_BYTES[sample]
    buf = writable_buf
    if buf is None:
        # ctypes needs an address: copy read-only input into a ctypes buffer (one memcpy).
        buf = (ctypes.c_char * len(mv_or_buf)).from_buffer_copy(mv_or_buf)
    img.data = ctypes.cast(buf, ctypes.c_void_p)
    return img, buf


# --- contexts -------------------------------------------------------------------------------


class Context:
    """A loaded model on a device. Make one, restore many times; not for concurrent use."""

    def __init__(self, task=None, model=None, device="auto", threads=0, precision="fp32"):
        if (task is None) == (model is None):
            raise ValueError("give exactly one of task= or model=")
        lib = _library()
        if precision not in (None, "fp32") and lib.davi_abi_version() < _PRECISION_ABI_VERSION:
            raise DaviError("ABI_MISMATCH", "%s implements C ABI %d; precision=%r needs %d"
                            % (_lib_path, lib.davi_abi_version(), precision,
                               _PRECISION_ABI_VERSION))
        opts = _ContextOptions()
        _check(lib.davi_context_options_init(ctypes.byref(opts), ctypes.sizeof(opts)),
               "context options")
        opts.threads = int(threads)
        opts.task = task.encode() if task else None
        opts.model_path = os.fsencode(model) if model else None
        opts.device = device.encode() if device else None
        opts.precision = precision.encode() if precision else None
        err = ctypes.create_string_buffer(1024)
        handle = ctypes.c_void_p()
        code = lib.davi_context_new(ctypes.byref(opts), ctypes.byref(handle), err, len(err))
        _check(code, "loading the %s" % ("model " + str(model) if model else task + " model"),
               err.value.decode(errors="replace"))
        self._handle = handle
        self.task = task
        self.model = model
        self.precision = precision or "fp32"

    def close(self):
        if getattr(self, "_handle", None):
            _library().davi_context_free(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _last_error(self):
        buf = ctypes.create_string_buffer(2048)
        _library().davi_context_last_error(self._handle, buf, len(buf), None)
        return buf.value.decode(errors="replace")

    def spec_text(self):
        """The operator the model was trained for, as TOML text."""
        spec = self._model_spec()
        try:
            return _spec_to_text(spec)
        finally:
            _library().davi_spec_free(spec)

    def _model_spec(self):
        lib = _library()
        spec = ctypes.c_void_p()
        code = lib.davi_context_spec(self._handle, ctypes.byref(spec))
        if code == _STATUS.index("NOT_FOUND") and self.task:
            code = lib.davi_spec_new_task(self.task.encode(), ctypes.byref(spec))
        _check(code, "the model's operator", self._last_error())
        return spec

    def _make_spec(self, spec_text, box):
        lib = _library()
        if spec_text is not None:
            spec = ctypes.c_void_p()
            err = ctypes.create_string_buffer(1024)
            _check(lib.davi_spec_parse(spec_text.encode(), ctypes.byref(spec), err, len(err)),
                   "operator spec", err.value.decode(errors="replace"))
        else:
            spec = self._model_spec()
        try:
            if box is not None:
                boxes = [box] if len(box) == 4 and all(isinstance(v, int) for v in box) else box
                for b in boxes:
                    _check(lib.davi_spec_add_box(spec, *[int(v) for v in b]), "box %r" % (b,))
        except BaseException:
            lib.davi_spec_free(spec)
            raise
        return spec

    def restore(self, pixels, width, height, **params):
        """Restore interleaved ``pixels`` (width x height); see the module's documentation."""
        return self.restore_sized(pixels, width, height, **params)[0]

    def restore_sized(self, pixels, width, height, seed=0, perturb_h=None, tile=0, overlap=0,
                      box=None, spec=None, progress=None, ensemble=1):
        """Like ``restore``, returning ``(pixels, width, height, channels)`` of the result."""
        if not self._handle:
            raise DaviError("INVALID_ARGUMENT", "the context is closed")
        lib = _library()
        if int(ensemble) > 1 and lib.davi_abi_version() < _ENSEMBLE_ABI_VERSION:
            raise DaviError("ABI_MISMATCH", "%s implements C ABI %d; ensemble=%d needs %d"
                            % (_lib_path, lib.davi_abi_version(), int(ensemble),
                               _ENSEMBLE_ABI_VERSION))
        width, height = int(width), int(height)
        if width <= 0 or height <= 0:
            raise DaviError("INVALID_ARGUMENT", "width and height must be positive")
        mv, sample, arr = _as_buffer(pixels)
        per_pixel = width * height * _SAMPLE_BYTES[sample]
        if len(mv) == 0 or len(mv) % per_pixel or len(mv) // per_pixel not in _LAYOUTS:
            raise DaviError("INVALID_ARGUMENT",
                            "%d bytes are not %dx%d pixels of 1-4 %d-byte samples"
                            % (len(mv), width, height, _SAMPLE_BYTES[sample]))
        channels = len(mv) // per_pixel
        cspec = self._make_spec(spec, box)
        try:
            ow, oh = ctypes.c_uint32(), ctypes.c_uint32()
            _check(lib.davi_output_size(cspec, width, height, ctypes.byref(ow), ctypes.byref(oh)),
                   "output size", self._last_error())
            kind = lib.davi_spec_kind(cspec).decode()
            out_channels = channels
            if kind == "colorization" and channels < 3:
                out_channels = channels + 2  # gray -> RGB, gray+alpha -> RGBA
            src, _keep = _image(mv, width, height, sample, channels)
            out_buf = ctypes.create_string_buffer(
                ow.value * oh.value * out_channels * _SAMPLE_BYTES[sample])
            dst, _ = _image(None, ow.value, oh.value, sample, out_channels, out_buf)

            opts = _RestoreOptions()
            _check(lib.davi_restore_options_init(ctypes.byref(opts), ctypes.sizeof(opts)),
                   "restore options")
            opts.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
            opts.tile, opts.overlap = int(tile), int(overlap)
            opts.ensemble = int(ensemble)
            if perturb_h is not None:
                opts.perturb_h = float(perturb_h)
            failure = []
            if progress is not None:
                def on_progress(_user, fraction):
                    try:
                        return 1 if progress(float(fraction)) is False else 0
                    except BaseException as e:  # never unwind through libdavi
                        failure.append(e)
                        return 1
                opts.progress = _ProgressFn(on_progress)
            code = lib.davi_restore(self._handle, ctypes.byref(src), ctypes.byref(dst), cspec,
                                    ctypes.byref(opts))
            if failure:
                raise failure[0]
            _check(code, "restore", self._last_error())
        finally:
            lib.davi_spec_free(cspec)
        raw, size = out_buf.raw, (ow.value, oh.value, out_channels)
        if arr is not None:
            shape = (oh.value, ow.value) if out_channels == 1 and arr.ndim == 2 else \
                (oh.value, ow.value, out_channels)
            # The array's own module (NumPy) builds the result; this module never imports it.
            np = sys.modules[type(arr).__module__.split(".")[0]]
            return (np.frombuffer(bytearray(raw), dtype=arr.dtype).reshape(shape),) + size
        if sample == _U8:
            return (raw,) + size
        out = array.array("H" if sample == _U16 else "f")
        out.frombytes(raw)
        return (out,) + size


def _spec_to_text(spec):
    lib = _library()
    need = ctypes.c_size_t()
    lib.davi_spec_to_text(spec, None, 0, ctypes.byref(need))
    buf = ctypes.create_string_buffer(need.value + 1)
    _check(lib.davi_spec_to_text(spec, buf, len(buf), None), "spec text")
    return buf.value.decode()


_contexts = {}


def restore(pixels, width, height, task=None, model=None, device="auto", threads=0,
            precision="fp32", **params):
    """Restore ``pixels`` with the default model of ``task`` (or the model file ``model``).

    Contexts are cached per (task, model, device, threads, precision), so repeated calls load
    the model once. Returns the restored pixels in the input's type; see the module
    documentation.
    """
    if task is None and model is None:
        raise ValueError("give task= (deblur, sr4, inpaint, denoise, colorize) or model=")
    key = (task, model, device, threads, precision)
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = _contexts[key] = Context(task=None if model else task, model=model,
                                       device=device, threads=threads, precision=precision)
    return ctx.restore(pixels, width, height, **params)


# --- training -------------------------------------------------------------------------------

TrainingProgress = collections.namedtuple("TrainingProgress", [
    "step", "total_steps", "checkpoint_step", "evaluated", "loss", "heldout_psnr",
    "heldout_ssim", "elapsed_seconds", "terms"])
TrainingProgress.__doc__ = """One training step, as libdavi reports it after the step.

step            steps done (the step that just finished, from 1); total_steps the run's
checkpoint_step the step of the newest checkpoint on disk (0: none yet)
evaluated       True when this step evaluated on the held-out images
loss            the step's total loss (a prior's ``loss``, a DAVI run's ``loss_g``)
heldout_psnr, heldout_ssim   of a DAVI run's generator on the held-out images when this step
                evaluated, else NaN
elapsed_seconds wall seconds the run has trained, over all its sessions
terms           dict of every loss term of the step (and the held-out metrics when it evaluated)
"""

TrainingInfo = collections.namedtuple("TrainingInfo", [
    "kind", "step", "total_steps", "checkpoint_step", "running", "finished"])

_KINDS = {None: 0, "any": 0, "prior": 1, "davi": 2}
_KIND_NAMES = {1: "prior", 2: "davi"}


def _toml_value(v):
    """A Python value as the TOML text of an override's value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[%s]" % ", ".join(_toml_value(x) for x in v)
    # JSON's string escapes are valid in a TOML basic string.
    return json.dumps(os.fspath(v) if hasattr(v, "__fspath__") else str(v))


def _overrides(overrides):
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        return ["%s=%s" % (k, _toml_value(v)) for k, v in overrides.items()]
    return [str(o) for o in overrides]


def _progress_event(p):
    p = p.contents
    terms = {}
    for i in range(p.term_count):
        terms[p.term_names[i].decode()] = p.term_values[i]
    return TrainingProgress(p.step, p.total_steps, p.checkpoint_step, bool(p.evaluated), p.loss,
                            p.heldout_psnr, p.heldout_ssim, p.elapsed_seconds, terms)


class _End:
    def __init__(self, code):
        self.code = code


class Training:
    """A training run open in libdavi: a prior or a DAVI restorer, its data and run folder.

    Give the config as ``preset`` (a built-in name such as "tiny-prior" or
    "photo-denoise-davi"), ``config`` (TOML text) or ``config_file`` (a TOML file), changed by
    ``overrides`` (a dict {"run.total_steps": 100, "data.train_dir": "/photos"} or a list of
    "key=value" strings, as ``davi train --set``); ``run_dir`` replaces the config's run
    folder. With only ``run_dir``, the run in that folder is resumed. ``resume=True``
    continues a checkpoint already in the folder (without it such a folder is refused).
    ``kind`` ("prior" or "davi") refuses a config of the other kind.

    Train with ``run`` (in this thread), ``start``/``wait`` (in libdavi's thread) or
    ``events`` (a generator of ``TrainingProgress`` while libdavi's thread trains). Every run
    ends with a checkpoint of the step reached; ``cancel`` stops after the current step.
    ``export(path)`` writes the network as a model file. ``close`` (or leaving a ``with``
    block) cancels a run in progress and waits for it.
    """

    def __init__(self, preset=None, config=None, config_file=None, run_dir=None,
                 overrides=None, resume=False, kind=None):
        lib = _library()
        if lib.davi_abi_version() < _TRAINING_ABI_VERSION or \
                not hasattr(lib, "davi_training_new"):
            raise DaviError("ABI_MISMATCH", "%s implements C ABI %d; training needs %d"
                            % (_lib_path, lib.davi_abi_version(), _TRAINING_ABI_VERSION))
        if config_file is not None:
            if config is not None:
                raise ValueError("give config= or config_file=, not both")
            with open(config_file, encoding="utf-8") as f:
                config = f.read()
        if kind not in _KINDS:
            raise ValueError("kind must be None, 'prior' or 'davi'")
        opts = _TrainingOptions()
        _check(lib.davi_training_options_init(ctypes.byref(opts), ctypes.sizeof(opts)),
               "training options")
        texts = [o.encode() for o in _overrides(overrides)]
        array_type = ctypes.c_char_p * max(1, len(texts))
        self._override_array = array_type(*texts)
        opts.kind = _KINDS[kind]
        opts.preset = preset.encode() if preset else None
        opts.config = config.encode() if config is not None else None
        opts.overrides = ctypes.cast(self._override_array, ctypes.POINTER(ctypes.c_char_p))
        opts.override_count = len(texts)
        opts.run_dir = os.fsencode(run_dir) if run_dir is not None else None
        opts.resume = 1 if resume else 0
        err = ctypes.create_string_buffer(2048)
        handle = ctypes.c_void_p()
        code = lib.davi_training_new(ctypes.byref(opts), ctypes.byref(handle), err, len(err))
        _check(code, "opening the training run", err.value.decode(errors="replace"))
        self._handle = handle
        self._callback = None  # the C callback of a background run, alive until it ends
        self._failure = []     # an exception raised by a background run's progress callable

    # -- lifetime ---------------------------------------------------------------------------

    def close(self):
        """Cancel a run in progress, wait for its checkpoint, and free the run."""
        if getattr(self, "_handle", None):
            _library().davi_training_free(self._handle)
            self._handle = None
            self._callback = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _live(self):
        if not self._handle:
            raise DaviError("INVALID_ARGUMENT", "the training run is closed")
        return self._handle

    def _last_error(self):
        buf = ctypes.create_string_buffer(2048)
        _library().davi_training_last_error(self._live(), buf, len(buf), None)
        return buf.value.decode(errors="replace")

    # -- state ------------------------------------------------------------------------------

    def info(self):
        """TrainingInfo(kind, step, total_steps, checkpoint_step, running, finished)."""
        i = _TrainingInfo()
        _check(_library().davi_training_info(self._live(), ctypes.byref(i), ctypes.sizeof(i)),
               "training info")
        return TrainingInfo(_KIND_NAMES.get(i.kind, i.kind), i.step, i.total_steps,
                            i.checkpoint_step, bool(i.running), bool(i.finished))

    @property
    def run_dir(self):
        """The run folder (its model.safetensors is the finished run's model)."""
        lib = _library()
        need = ctypes.c_size_t()
        lib.davi_training_run_dir(self._live(), None, 0, ctypes.byref(need))
        buf = ctypes.create_string_buffer(need.value + 1)
        _check(lib.davi_training_run_dir(self._live(), buf, len(buf), None), "run folder")
        return buf.value.decode(errors="replace")

    # -- training ---------------------------------------------------------------------------

    def _run_options(self, max_steps, progress, failure):
        lib = _library()
        opts = _TrainingRunOptions()
        _check(lib.davi_training_run_options_init(ctypes.byref(opts), ctypes.sizeof(opts)),
               "training run options")
        opts.max_steps = int(max_steps)
        callback = None
        if progress is not None:
            def on_progress(_user, p):
                try:
                    return 1 if progress(_progress_event(p)) is False else 0
                except BaseException as e:  # never unwind through libdavi
                    failure.append(e)
                    return 1
            callback = _TrainingProgressFn(on_progress)
            opts.progress = callback
        return opts, callback

    def run(self, max_steps=0, progress=None):
        """Train in this thread: ``max_steps`` steps (0: to the end of the run).

        ``progress(event)`` is called after every step with a ``TrainingProgress``; returning
        False cancels (DaviError CANCELLED; the checkpoint of that step is written), and an
        exception it raises cancels and is re-raised. Returns ``info()``.
        """
        failure = []
        opts, _callback = self._run_options(max_steps, progress, failure)
        code = _library().davi_training_run(self._live(), ctypes.byref(opts))
        if failure:
            raise failure[0]
        _check(code, "training", self._last_error())
        return self.info()

    def start(self, max_steps=0, progress=None):
        """Train in libdavi's thread and return at once; ``progress`` is then called on that
        thread (as in ``run``). ``wait()`` waits for the end."""
        failure = []
        opts, callback = self._run_options(max_steps, progress, failure)
        code = _library().davi_training_start(self._live(), ctypes.byref(opts))
        _check(code, "starting the training", self._last_error())
        self._callback, self._failure = callback, failure

    def cancel(self):
        """Stop the run in progress after its current step (it writes a checkpoint). Returns
        at once; any thread may call it."""
        _check(_library().davi_training_cancel(self._live()), "cancel")

    def wait(self):
        """Wait for the run ``start`` began; raise its failure (CANCELLED included) or an
        exception its ``progress`` raised. Returns ``info()``."""
        code = _library().davi_training_wait(self._live())
        if self._failure:
            raise self._failure[0]
        _check(code, "training", self._last_error())
        return self.info()

    def events(self, max_steps=0):
        """Train in libdavi's thread and yield a ``TrainingProgress`` after every step.

        The generator ends when the run ends: finished, ``max_steps`` done, or cancelled by
        ``cancel()`` (from the loop or any thread). A failure raises ``DaviError``. Leaving
        the loop early (``break``, an exception) cancels the run and waits for its
        checkpoint.
        """
        events = queue.Queue()
        self.start(max_steps, progress=events.put)
        handle = self._handle

        def waiter():
            events.put(_End(_library().davi_training_wait(handle)))

        thread = threading.Thread(target=waiter, name="davi-training-wait", daemon=True)
        thread.start()
        end = None
        try:
            while end is None:
                item = events.get()
                if isinstance(item, _End):
                    end = item
                else:
                    yield item
        finally:
            if end is None:
                _library().davi_training_cancel(handle)
            thread.join()
            self._callback = None
        if end.code not in (0, _STATUS.index("CANCELLED")):
            _check(end.code, "training", self._last_error())

    def export(self, path):
        """Write the network of the step reached as a model file at ``path`` (atomically). A
        DAVI run's file restores with ``davi.Context(model=path)``; a prior's is a teacher
        for a DAVI config (``davi.teacher``)."""
        _check(_library().davi_training_export(self._live(), os.fsencode(path)),
               "exporting to %s" % path, self._last_error())


# --- command line: PNM in, PNM out ---------------------------------------------------------


def _read_pnm(path):
    with open(path, "rb") as f:
        data = f.read()
    fields, i = [], 0
    while len(fields) < 4:
        while data[i:i + 1].isspace():
            i += 1
        if data[i:i + 1] == b"#":
            i = data.index(b"\n", i)
            continue
        j = i
        while not data[j:j + 1].isspace():
            j += 1
        fields.append(data[i:j])
        i = j
    magic, w, h, maxval = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    if magic not in (b"P5", b"P6") or maxval not in (255, 65535):
        raise DaviError("UNSUPPORTED_FORMAT", "%s: only binary P5/P6 PNM, 8 or 16 bits" % path)
    channels = 1 if magic == b"P5" else 3
    raw = data[i + 1:]
    if maxval == 255:
        return raw[:w * h * channels], w, h, channels
    samples = array.array("H")
    samples.frombytes(raw[:w * h * channels * 2])
    if sys.byteorder == "little":
        samples.byteswap()  # PNM stores 16-bit samples big-endian
    return samples, w, h, channels


def _write_pnm(path, pixels, w, h, channels):
    if isinstance(pixels, array.array):
        pixels = array.array("H", pixels)
        if sys.byteorder == "little":
            pixels.byteswap()
        body, maxval = pixels.tobytes(), 65535
    else:
        body, maxval = bytes(pixels), 255
    header = b"%s\n%d %d\n%d\n" % (b"P5" if channels == 1 else b"P6", w, h, maxval)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header + body)
    os.replace(tmp, path)  # never leave a half-written output


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(description="Restore a PNM picture with libdavi.")
    p.add_argument("input")
    p.add_argument("output")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--task")
    g.add_argument("--model")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile", type=int, default=0)
    p.add_argument("--perturb-h", type=float)
    a = p.parse_args(argv)
    try:
        pixels, w, h, channels = _read_pnm(a.input)
        with Context(task=a.task, model=a.model, device=a.device,
                     precision=a.precision) as ctx:
            out, ow, oh, out_channels = ctx.restore_sized(
                pixels, w, h, seed=a.seed, tile=a.tile, perturb_h=a.perturb_h)
        _write_pnm(a.output, out, ow, oh, out_channels)
    except (DaviError, OSError) as e:
        print("davi.py: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
