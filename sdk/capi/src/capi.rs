//! The exported `davi_*` functions: a thin adapter from C to [`crate::context`].
//!
//! Every function follows the same steps, in this order: enter the panic boundary
//! ([`crate::boundary::guard`]); check every pointer for NULL and every caller struct's
//! `struct_size` before reading through it; decode C values (enums arrive as `uint32_t`);
//! call safe Rust; write out-parameters only on success. Calls that take a context record
//! their outcome as the context's last-error message (empty after a success).
//!
//! Anchor: `xiph/rav1e: src/capi.rs` (opaque handles over a safe Rust API, status enum plus
//! `rav1e_status_to_str`), `rustls/rustls-ffi` (NULL checks, out-parameters on success only).

use crate::boundary::{arg, arg_mut, guard, guard_value, opt_c_str, struct_size_at_least};
use crate::context::{self, Context, ModelSource, RestoreParams};
use crate::handles::{self, Kind};
use crate::training::{ConfigSource, ProgressFn, Training, TrainingKind, TrainingSetup};
use crate::types::{
    DaviBlurMode, DaviContext, DaviContextOptions, DaviDownsampleMethod, DaviRestoreOptions,
    DaviSpec, DaviTraining, DaviTrainingInfo, DaviTrainingKind, DaviTrainingOptions,
    DaviTrainingProgress, DaviTrainingRunOptions, CONTEXT_OPTIONS_V1, CONTEXT_OPTIONS_V4,
    RESTORE_OPTIONS_V1, TRAINING_INFO_V1, TRAINING_OPTIONS_V1, TRAINING_RUN_OPTIONS_V1,
};
use davi_engine::train::runner::StepReport;
use davi_sdk::spec::{OperatorSpec, Rect};
use davi_sdk::status::write_message;
use davi_sdk::{DaviError, DaviImage, DaviStatus, DaviStatusCode, ImageView, ImageViewMut};
use std::cell::Cell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::Mutex;

const VERSION: &CStr = davi_sdk::cstr!(env!("CARGO_PKG_VERSION"));
const ABI_VERSION: u32 = parse_u32(env!("DAVI_ABI_VERSION"));

/// `build.rs` passes the ABI revision of `Cargo.toml` as text; parse it at compile time.
const fn parse_u32(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v: u32 = 0;
    assert!(!b.is_empty(), "DAVI_ABI_VERSION is empty");
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "DAVI_ABI_VERSION is not a number");
        v = v * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    v
}

fn status(r: Result<(), DaviError>) -> DaviStatus {
    match r {
        Ok(()) => DaviStatus::Ok,
        Err(e) => e.status,
    }
}

/// Status of `r`, and its message copied into `err_buf` on failure.
unsafe fn status_with_message(
    r: Result<(), DaviError>,
    err_buf: *mut c_char,
    err_len: usize,
) -> DaviStatus {
    match r {
        Ok(()) => DaviStatus::Ok,
        Err(e) => {
            write_message(err_buf, err_len, &e.message);
            e.status
        }
    }
}

/// Record the outcome of a call as the context's last error.
fn record(ctx: &DaviContext, r: Result<(), DaviError>) -> DaviStatus {
    let mut slot = ctx.last_error.lock().unwrap_or_else(|p| p.into_inner());
    match r {
        Ok(()) => {
            slot.clear();
            DaviStatus::Ok
        }
        Err(e) => {
            *slot = e.message;
            e.status
        }
    }
}

/// A live context, checked in the handle registry before it is dereferenced.
unsafe fn context<'a>(p: *const DaviContext) -> Result<&'a DaviContext, DaviError> {
    handles::check(p, Kind::Context, "ctx")?;
    arg(p, "ctx")
}

/// A live spec, checked in the handle registry before it is dereferenced.
unsafe fn spec_ref<'a>(p: *const DaviSpec) -> Result<&'a DaviSpec, DaviError> {
    handles::check(p, Kind::Spec, "spec")?;
    arg(p, "spec")
}

unsafe fn spec_mut<'a>(p: *mut DaviSpec) -> Result<&'a mut DaviSpec, DaviError> {
    spec_ref(p)?;
    Ok(&mut *p)
}

/// Copy a message into `buf` (`len` bytes, NUL-terminated, truncated at a UTF-8 boundary) and
/// its full length into `*out_len`. `buf` may be NULL only with `len == 0`.
unsafe fn copy_text(
    text: &str,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> Result<(), DaviError> {
    if buf.is_null() && len != 0 {
        return Err(DaviError::null_argument("buf"));
    }
    write_message(buf, len, text);
    if !out_len.is_null() {
        *out_len = text.len();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Versions and statuses

/// The library version, `"MAJOR.MINOR.PATCH"` (equal to the DAVI_VERSION_* macros of the
/// header it was built with). Static: never free it.
#[no_mangle]
pub extern "C" fn davi_version() -> *const c_char {
    VERSION.as_ptr()
}

/// The C ABI revision the library implements. A host built against header revision
/// `DAVI_ABI_VERSION` may use everything that header declares if
/// `davi_abi_version() >= DAVI_ABI_VERSION`.
#[no_mangle]
pub extern "C" fn davi_abi_version() -> u32 {
    ABI_VERSION
}

/// A static, NUL-terminated English sentence for a `DaviStatus` value (`"unknown status"` for
/// values this library does not know). Never NULL; never free it; valid for the whole process.
#[no_mangle]
pub extern "C" fn davi_status_string(status: DaviStatusCode) -> *const c_char {
    guard_value(c"internal error".as_ptr(), || {
        match DaviStatus::from_code(status) {
            Some(s) => s.as_ptr(),
            None => c"unknown status".as_ptr(),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Contexts

/// Fill `*options` with the defaults (no model source, device "auto", default threads, fp32)
/// and set its `struct_size`. `options_size` is `sizeof(DaviContextOptions)` as the caller
/// compiled it: a struct from an ABI 1-3 header (without `precision`) gets only its fields
/// written and that smaller `struct_size`.
///
/// # Safety
/// `options` must be NULL or valid for writes of `options_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn davi_context_options_init(
    options: *mut DaviContextOptions,
    options_size: usize,
) -> DaviStatus {
    status(guard(|| {
        let options = arg_mut(options, "options")?;
        if options_size < CONTEXT_OPTIONS_V1 {
            return Err(DaviError::invalid_argument(format!(
                "options_size {options_size} is smaller than DaviContextOptions \
                    ({CONTEXT_OPTIONS_V1} bytes)"
            )));
        }
        // A caller compiled against an ABI 1-3 header has a struct that ends before
        // `precision`: write (and claim in `struct_size`) only the fields it holds.
        let size = context_options_size(options_size);
        let mut defaults = DaviContextOptions::defaults();
        defaults.struct_size = size as u32;
        std::ptr::copy_nonoverlapping(
            (&defaults as *const DaviContextOptions).cast::<u8>(),
            options.cast::<u8>(),
            size,
        );
        Ok(())
    }))
}

/// Load a model and make a context that restores with it.
///
/// Exactly one model source must be set in `options`: `model_path`, `model_bytes` +
/// `model_len`, or `task` (the installed default model of that task). On success `*out`
/// receives a new context, which the caller frees with `davi_context_free`; on failure `*out`
/// is untouched and, if `err_buf` is not NULL, a NUL-terminated message (truncated to
/// `err_len` bytes) says why. `options` and the memory it points to are only read during the
/// call. Loading takes time and memory (the model's weights): make a context once, restore
/// many times.
///
/// # Safety
/// `options` must be NULL or point to a `DaviContextOptions` of its `struct_size` bytes whose
/// strings are NULL or NUL-terminated and whose `model_bytes` (if set) has `model_len` bytes;
/// `out` must be NULL or writable; `err_buf` must be NULL or writable for `err_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn davi_context_new(
    options: *const DaviContextOptions,
    out: *mut *mut DaviContext,
    err_buf: *mut c_char,
    err_len: usize,
) -> DaviStatus {
    let r = guard(|| {
        if options.is_null() {
            return Err(DaviError::null_argument("options"));
        }
        let out = arg_mut(out, "out")?;
        struct_size_at_least(options, CONTEXT_OPTIONS_V1, "DaviContextOptions")?;
        let o = read_context_options(options);
        let path = if o.model_path.is_null() {
            None
        } else {
            let bytes = CStr::from_ptr(o.model_path).to_bytes();
            if bytes.is_empty() {
                return Err(DaviError::invalid_argument(
                    "options.model_path is empty (use NULL for none)",
                ));
            }
            Some(path_from_bytes(bytes)?)
        };
        let bytes = match (o.model_bytes.is_null(), o.model_len) {
            (true, 0) => None,
            (true, n) => {
                return Err(DaviError::invalid_argument(format!(
                    "options.model_len is {n} but options.model_bytes is NULL"
                )))
            }
            (false, 0) => {
                return Err(DaviError::invalid_argument(
                    "options.model_bytes is set but model_len is 0",
                ))
            }
            (false, n) if n > isize::MAX as usize => {
                return Err(DaviError::invalid_argument(format!(
                    "options.model_len {n} is too large"
                )))
            }
            (false, n) => Some(std::slice::from_raw_parts(o.model_bytes, n)),
        };
        let task = opt_c_str(o.task, "options.task")?;
        let device = opt_c_str(o.device, "options.device")?.unwrap_or("auto");
        let precision = opt_c_str(o.precision, "options.precision")?.unwrap_or("fp32");
        let source = match (&path, bytes, task) {
            (Some(p), None, None) => ModelSource::File(p),
            (None, Some(b), None) => ModelSource::Bytes(b),
            (None, None, Some(t)) => ModelSource::Task(t),
            (None, None, None) => {
                return Err(DaviError::invalid_argument(
                    "no model: set options.model_path, options.model_bytes or options.task",
                ))
            }
            _ => {
                return Err(DaviError::invalid_argument(
                    "set only one of options.model_path, options.model_bytes and options.task",
                ))
            }
        };
        let inner = Context::new(source, device, o.threads, precision)?;
        let ctx = Box::new(DaviContext {
            inner,
            last_error: Mutex::new(String::new()),
        });
        out.write(handles::register(ctx, Kind::Context));
        Ok(())
    });
    status_with_message(r, err_buf, err_len)
}

/// How many bytes of a `DaviContextOptions` of `struct_size` bytes this library reads or
/// writes: the ABI 4 struct when the caller's covers it, else the ABI 1 fields (a size in
/// between covers `precision` only in part, so it is not read).
fn context_options_size(struct_size: usize) -> usize {
    if struct_size >= CONTEXT_OPTIONS_V4 {
        CONTEXT_OPTIONS_V4
    } else {
        CONTEXT_OPTIONS_V1
    }
}

/// The caller's context options: the fields its `struct_size` covers, the defaults of
/// `davi_context_options_init` for the fields appended after its ABI revision.
///
/// # Safety
/// `p` must point to a `DaviContextOptions` whose `struct_size` (already checked to be at
/// least `CONTEXT_OPTIONS_V1`) bytes are readable.
unsafe fn read_context_options(p: *const DaviContextOptions) -> DaviContextOptions {
    let size = context_options_size(std::ptr::read_unaligned(p.cast::<u32>()) as usize);
    let mut o = DaviContextOptions::defaults();
    std::ptr::copy_nonoverlapping(
        p.cast::<u8>(),
        (&mut o as *mut DaviContextOptions).cast::<u8>(),
        size,
    );
    o
}

#[cfg(unix)]
fn path_from_bytes(b: &[u8]) -> Result<PathBuf, DaviError> {
    use std::os::unix::ffi::OsStrExt;
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(b)))
}

#[cfg(not(unix))]
fn path_from_bytes(b: &[u8]) -> Result<PathBuf, DaviError> {
    std::str::from_utf8(b)
        .map(PathBuf::from)
        .map_err(|_| DaviError::invalid_argument("options.model_path is not UTF-8"))
}

/// Free a context and its model. NULL, a pointer that is not a live context (for example one
/// already freed) and a spec are ignored. The context must not be in use by another thread;
/// the handle is invalid afterwards.
///
/// # Safety
/// `ctx` must be NULL or a pointer value; only live contexts are dereferenced.
#[no_mangle]
pub unsafe extern "C" fn davi_context_free(ctx: *mut DaviContext) {
    // A free has no status to return: a panic in a destructor is swallowed, never unwound.
    let _ = guard(|| {
        drop(handles::unregister(ctx, Kind::Context));
        Ok(())
    });
}

/// Copy the message of the last failed call on `ctx` (empty if the last call succeeded) into
/// `buf`: at most `len` bytes including the terminating NUL, cut at a UTF-8 character
/// boundary. If `out_len` is not NULL it receives the message's full length in bytes (without
/// the NUL): when it is `>= len` the copy was truncated. `buf` may be NULL only with `len` 0
/// (to ask for the length). Does not change the last error. Safe to call from any thread,
/// also while another thread restores on `ctx`.
///
/// # Safety
/// `ctx` must be NULL or a live context; `buf` NULL or writable for `len` bytes; `out_len`
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn davi_context_last_error(
    ctx: *const DaviContext,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> DaviStatus {
    status(guard(|| {
        let ctx = context(ctx)?;
        let message = ctx
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        copy_text(&message, buf, len, out_len)
    }))
}

/// The operator the context's model was trained for, as a new spec the caller frees with
/// `davi_spec_free` (and may change before restoring). `DAVI_STATUS_NOT_FOUND` if the model
/// file does not say; `*out` is written on success only.
///
/// # Safety
/// `ctx` must be NULL or a live context; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn davi_context_spec(
    ctx: *const DaviContext,
    out: *mut *mut DaviSpec,
) -> DaviStatus {
    let r = guard(|| {
        let ctx = context(ctx)?;
        let r = (|| {
            let out = arg_mut(out, "out")?;
            let spec = ctx.inner.trained_spec().cloned().ok_or_else(|| {
                DaviError::new(
                    DaviStatus::NotFound,
                    format!(
                        "the model {} does not name the operator it was trained for",
                        ctx.inner.origin()
                    ),
                )
            })?;
            out.write(new_spec(spec));
            Ok(())
        })();
        Ok(record(ctx, r))
    });
    r.unwrap_or_else(|e| e.status)
}

// ---------------------------------------------------------------------------------------------
// Operator specs

fn new_spec(spec: OperatorSpec) -> *mut DaviSpec {
    handles::register(Box::new(DaviSpec { spec }), Kind::Spec)
}

/// A new spec with the official operator of a task: `"deblur"` (Gaussian blur σ 3, 61 taps),
/// `"sr4"`, `"sr2"`, `"sr8"` (average pooling), `"inpaint"` (centred half box), `"denoise"`,
/// `"colorize"`. Unknown names are `DAVI_STATUS_INVALID_SPEC`. Free with `davi_spec_free`.
///
/// # Safety
/// `task` must be NULL or NUL-terminated; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn davi_spec_new_task(
    task: *const c_char,
    out: *mut *mut DaviSpec,
) -> DaviStatus {
    status(guard(|| {
        if task.is_null() {
            return Err(DaviError::null_argument("task"));
        }
        let out = arg_mut(out, "out")?;
        // A name that is not UTF-8 is an unknown task name like any other.
        let task = CStr::from_ptr(task)
            .to_str()
            .map_err(|_| DaviError::invalid_spec("the task name is not UTF-8"))?;
        let spec = OperatorSpec::for_task(task)?;
        out.write(new_spec(spec));
        Ok(())
    }))
}

/// Parse a spec from TOML or JSON text (JSON if the first non-blank character is `{`), e.g.
/// `kind = "gaussian_blur"\nsigma = 1.5\nsize = 9`. Unknown keys, unknown kinds and values out
/// of range are `DAVI_STATUS_INVALID_SPEC`, with a message naming the key in `err_buf` (if
/// not NULL; `err_len` bytes). Free the result with `davi_spec_free`.
///
/// # Safety
/// `text` must be NULL or NUL-terminated; `out` NULL or writable; `err_buf` NULL or writable
/// for `err_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn davi_spec_parse(
    text: *const c_char,
    out: *mut *mut DaviSpec,
    err_buf: *mut c_char,
    err_len: usize,
) -> DaviStatus {
    let r = guard(|| {
        if text.is_null() {
            return Err(DaviError::null_argument("text"));
        }
        let out = arg_mut(out, "out")?;
        let text = CStr::from_ptr(text)
            .to_str()
            .map_err(|_| DaviError::invalid_spec("the spec text is not UTF-8"))?;
        let spec = OperatorSpec::parse(text)?;
        out.write(new_spec(spec));
        Ok(())
    });
    status_with_message(r, err_buf, err_len)
}

/// Free a spec. NULL, a pointer that is not a live spec (for example one already freed) and a
/// context are ignored.
///
/// # Safety
/// `spec` must be NULL or a pointer value, not in use by another thread if it is a live spec.
#[no_mangle]
pub unsafe extern "C" fn davi_spec_free(spec: *mut DaviSpec) {
    let _ = guard(|| {
        drop(handles::unregister(spec, Kind::Spec));
        Ok(())
    });
}

/// The spec's operator kind as a static string: `"gaussian_blur"`, `"super_resolution"`,
/// `"inpainting"`, `"denoising"` or `"colorization"` (NULL if `spec` is NULL or not a spec).
/// Never free it.
///
/// # Safety
/// `spec` must be NULL or a live spec.
#[no_mangle]
pub unsafe extern "C" fn davi_spec_kind(spec: *const DaviSpec) -> *const c_char {
    guard_value(std::ptr::null(), || match spec_ref(spec) {
        Ok(s) => match s.spec {
            OperatorSpec::GaussianBlur(_) => c"gaussian_blur".as_ptr(),
            OperatorSpec::SuperResolution(_) => c"super_resolution".as_ptr(),
            OperatorSpec::Inpainting(_) => c"inpainting".as_ptr(),
            OperatorSpec::Denoising(_) => c"denoising".as_ptr(),
            OperatorSpec::Colorization(_) => c"colorization".as_ptr(),
        },
        Err(_) => std::ptr::null(),
    })
}

/// Apply `edit` to a copy of the spec, validate it, and keep it only if valid.
unsafe fn edit_spec(
    spec: *mut DaviSpec,
    edit: impl FnOnce(&mut OperatorSpec) -> Result<(), DaviError>,
) -> DaviStatus {
    status(guard(|| {
        let s = spec_mut(spec)?;
        let mut copy = s.spec.clone();
        edit(&mut copy)?;
        copy.validate()
            .map_err(|e| DaviError::invalid_argument(e.to_string()))?;
        s.spec = copy;
        Ok(())
    }))
}

fn wrong_kind(setter: &str, wanted: &str, spec: &OperatorSpec) -> DaviError {
    DaviError::invalid_argument(format!(
        "{setter} applies to {wanted} specs, this one is {}",
        spec.kind_name()
    ))
}

/// Set the measurement noise level (standard deviation in [-1, 1] image units, in [0, 2]);
/// NaN restores the kind's default (0.20 for denoising, 0.05 otherwise). Out of range is
/// `DAVI_STATUS_INVALID_ARGUMENT` and leaves the spec unchanged (as for every setter).
/// Restoring, a window model with a measurement denoiser (the shipped inpainting and
/// colorization models) reads it: above 0 the observed pixels (the gray) of its answer are
/// denoised, 0 keeps them exactly as given — for a clean photograph.
///
/// # Safety
/// `spec` must be NULL or a live spec.
#[no_mangle]
pub unsafe extern "C" fn davi_spec_set_noise_sigma(spec: *mut DaviSpec, sigma: f64) -> DaviStatus {
    edit_spec(spec, |s| {
        s.set_noise_sigma(if sigma.is_nan() { None } else { Some(sigma) });
        Ok(())
    })
}

/// Gaussian blur parameters: kernel σ in pixels (0, 100], an odd tap count 1..=1001 (at
/// least 3 with `DAVI_BLUR_MODE_DDRM`) and a `DaviBlurMode` value. Only for `gaussian_blur`
/// specs.
///
/// # Safety
/// `spec` must be NULL or a live spec.
#[no_mangle]
pub unsafe extern "C" fn davi_spec_set_blur(
    spec: *mut DaviSpec,
    sigma: f64,
    size: u32,
    mode: u32,
) -> DaviStatus {
    edit_spec(spec, |s| match s {
        OperatorSpec::GaussianBlur(b) => {
            b.sigma = sigma;
            b.size = size as usize;
            b.mode = DaviBlurMode::decode(mode)?;
            Ok(())
        }
        other => Err(wrong_kind("davi_spec_set_blur", "gaussian_blur", other)),
    })
}

/// Super-resolution factor: 2, 4 or 8. Only for `super_resolution` specs.
///
/// # Safety
/// `spec` must be NULL or a live spec.
#[no_mangle]
pub unsafe extern "C" fn davi_spec_set_sr_factor(spec: *mut DaviSpec, factor: u32) -> DaviStatus {
    edit_spec(spec, |s| match s {
        OperatorSpec::SuperResolution(sr) => {
            sr.factor = factor as usize;
            Ok(())
        }
        other => Err(wrong_kind(
            "davi_spec_set_sr_factor",
            "super_resolution",
            other,
        )),
    })
}

/// How the small image was down-sampled: a `DaviDownsampleMethod` value. Only for
/// `super_resolution` specs.
///
/// # Safety
/// `spec` must be NULL or a live spec.
#[no_mangle]
pub unsafe extern "C" fn davi_spec_set_sr_method(spec: *mut DaviSpec, method: u32) -> DaviStatus {
    edit_spec(spec, |s| match s {
        OperatorSpec::SuperResolution(sr) => {
            sr.method = DaviDownsampleMethod::decode(method)?;
            Ok(())
        }
        other => Err(wrong_kind(
            "davi_spec_set_sr_method",
            "super_resolution",
            other,
        )),
    })
}

/// Add a missing rectangle (in pixels of the image to restore; non-empty). A spec without
/// boxes uses the centred half-size box. Boxes must lie inside the image, which
/// `davi_restore` and `davi_output_size` check. Only for `inpainting` specs.
///
/// # Safety
/// `spec` must be NULL or a live spec.
#[no_mangle]
pub unsafe extern "C" fn davi_spec_add_box(
    spec: *mut DaviSpec,
    top: u32,
    left: u32,
    height: u32,
    width: u32,
) -> DaviStatus {
    edit_spec(spec, |s| match s {
        OperatorSpec::Inpainting(p) => {
            p.boxes.push(Rect {
                top: top as usize,
                left: left as usize,
                height: height as usize,
                width: width as usize,
            });
            Ok(())
        }
        other => Err(wrong_kind("davi_spec_add_box", "inpainting", other)),
    })
}

/// Weights of red, green and blue in the gray observation (each in [0, 100], summing to at
/// least 0.001). Only for `colorization` specs.
///
/// # Safety
/// `spec` must be NULL or a live spec.
#[no_mangle]
pub unsafe extern "C" fn davi_spec_set_gray_weights(
    spec: *mut DaviSpec,
    red: f64,
    green: f64,
    blue: f64,
) -> DaviStatus {
    edit_spec(spec, |s| match s {
        OperatorSpec::Colorization(c) => {
            c.weights = [red, green, blue];
            Ok(())
        }
        other => Err(wrong_kind(
            "davi_spec_set_gray_weights",
            "colorization",
            other,
        )),
    })
}

/// The spec as TOML text (what `davi_spec_parse` reads back), copied into `buf` like
/// `davi_context_last_error` copies messages: at most `len` bytes with the NUL, the full
/// length in `*out_len` (optional). `buf` may be NULL only with `len` 0.
///
/// # Safety
/// `spec` must be NULL or a live spec; `buf` NULL or writable for `len` bytes; `out_len` NULL
/// or writable.
#[no_mangle]
pub unsafe extern "C" fn davi_spec_to_text(
    spec: *const DaviSpec,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> DaviStatus {
    status(guard(|| {
        let spec = spec_ref(spec)?;
        copy_text(&spec.spec.to_toml(), buf, len, out_len)
    }))
}

// ---------------------------------------------------------------------------------------------
// Restoring

/// Fill `*options` with the defaults (the model's preferred tiles, automatic overlap, the model's
/// perturbation, seed 0, no callback) and set its `struct_size`. `options_size` is
/// `sizeof(DaviRestoreOptions)` as the caller compiled it.
///
/// # Safety
/// `options` must be NULL or valid for writes of `options_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn davi_restore_options_init(
    options: *mut DaviRestoreOptions,
    options_size: usize,
) -> DaviStatus {
    status(guard(|| {
        let options = arg_mut(options, "options")?;
        if options_size < RESTORE_OPTIONS_V1 {
            return Err(DaviError::invalid_argument(format!(
                "options_size {options_size} is smaller than DaviRestoreOptions \
                    ({RESTORE_OPTIONS_V1} bytes)"
            )));
        }
        options.write(DaviRestoreOptions {
            struct_size: RESTORE_OPTIONS_V1 as u32,
            tile: 0,
            overlap: 0,
            ensemble: 0,
            perturb_h: f64::NAN,
            seed: 0,
            progress: None,
            user_data: std::ptr::null_mut(),
        });
        Ok(())
    }))
}

/// Size of the image `davi_restore` produces from an `in_width x in_height` input under
/// `spec`: multiplied by the factor for super-resolution, unchanged otherwise. Checks the spec
/// against the size (inpainting boxes inside the image: `DAVI_STATUS_INVALID_SPEC`). Writes
/// `*out_width` and `*out_height` on success only.
///
/// # Safety
/// `spec` must be NULL or a live spec; `out_width`, `out_height` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn davi_output_size(
    spec: *const DaviSpec,
    in_width: u32,
    in_height: u32,
    out_width: *mut u32,
    out_height: *mut u32,
) -> DaviStatus {
    status(guard(|| {
        let spec = spec_ref(spec)?;
        let out_width = arg_mut(out_width, "out_width")?;
        let out_height = arg_mut(out_height, "out_height")?;
        let (w, h) = context::output_size(&spec.spec, in_width as usize, in_height as usize)?;
        out_width.write(w);
        out_height.write(h);
        Ok(())
    }))
}

/// Prefix a descriptor error with the image it concerns.
fn about(which: &str, e: impl Into<DaviError>) -> DaviError {
    let e = e.into();
    DaviError::new(e.status, format!("{which} image: {}", e.message))
}

/// Restore `input` into `output` under `spec`.
///
/// - `input`: the degraded image (for super-resolution the small one), any `DaviSampleType`
///   and `DaviChannelLayout`, signed `row_stride` (negative for bottom-up memory, `data` then
///   points at the top row). Read only.
/// - `output`: where the result goes; its size must be `davi_output_size` of the input. Its
///   sample type and layout may differ from the input's (gray results are replicated into RGB
///   layouts; colorization needs an RGB or RGBA output). It may be the same memory as `input`
///   (in place) when sizes and formats agree. Written only when `DAVI_STATUS_OK` is returned.
/// - Alpha is never restored: it is copied from the input bit for bit (bilinearly resampled
///   when the size changes, converted when the sample type does); an output with alpha from
///   an input without is opaque.
/// - `options`: NULL for the defaults (see `davi_restore_options_init`).
///
/// Runs on the calling thread and returns when done, cancelled or failed; the progress
/// callback, if any, is called on this thread between tiles. The descriptors and pixel memory
/// must stay valid and unchanged by others during the call; nothing is kept afterwards. On
/// failure `davi_context_last_error` says why.
///
/// # Safety
/// Each pointer must be NULL or valid as described; the pixel memory each descriptor
/// describes must be readable (input) or writable (output) for the whole call.
#[no_mangle]
pub unsafe extern "C" fn davi_restore(
    ctx: *mut DaviContext,
    input: *const DaviImage,
    output: *mut DaviImage,
    spec: *const DaviSpec,
    options: *const DaviRestoreOptions,
) -> DaviStatus {
    let r = guard(|| {
        // Inside this call's own boundary the depth is 1; deeper means a progress callback of
        // another restore on this thread called in, and such a restore must not wait.
        let nested = davi_sdk::panic_boundary::boundary_depth() > 1;
        let ctx = context(ctx)?;
        let r = guard(|| restore(ctx, input, output, spec, options, nested));
        Ok(record(ctx, r))
    });
    r.unwrap_or_else(|e| e.status)
}

unsafe fn restore(
    ctx: &DaviContext,
    input: *const DaviImage,
    output: *const DaviImage,
    spec: *const DaviSpec,
    options: *const DaviRestoreOptions,
    nested: bool,
) -> Result<(), DaviError> {
    if input.is_null() {
        return Err(DaviError::null_argument("input"));
    }
    if output.is_null() {
        return Err(DaviError::null_argument("output"));
    }
    let spec = &spec_ref(spec)?.spec;
    let (mut params, progress, user_data) = if options.is_null() {
        (RestoreParams::default(), None, std::ptr::null_mut())
    } else {
        struct_size_at_least(options, RESTORE_OPTIONS_V1, "DaviRestoreOptions")?;
        let o = std::ptr::read(options);
        let params = RestoreParams {
            tile: (o.tile != 0).then_some(o.tile),
            overlap: (o.overlap != 0).then_some(o.overlap),
            perturb_h: (!o.perturb_h.is_nan()).then_some(o.perturb_h),
            seed: o.seed,
            ensemble: o.ensemble,
            no_wait: false,
        };
        (params, o.progress, o.user_data)
    };
    params.no_wait = nested;

    // Validate both descriptors and the whole request before reading a pixel. The output view
    // is dropped at once and made again for writing, after the input has been read in full:
    // the two may describe the same memory.
    let (color, alpha) = {
        let in_view = ImageView::from_descriptor(input).map_err(|e| about("input", e))?;
        let out_format = ImageViewMut::from_descriptor(output)
            .map_err(|e| about("output", e))?
            .format();
        ctx.inner.check(spec, &in_view.format(), &out_format)?;
        if let Some((x, y, c)) = in_view.first_non_finite() {
            return Err(DaviError::invalid_argument(format!(
                "input image: sample {c} of pixel ({x}, {y}) is not finite; float samples, \
                 alpha included, must be finite numbers"
            )));
        }
        context::read_planar(&in_view)?
    };

    let cancelled = Cell::new(false);
    let mut report = |fraction: f32| match progress {
        None => true,
        Some(callback) => {
            let go_on = callback(user_data, fraction) == 0;
            if !go_on {
                cancelled.set(true);
            }
            go_on
        }
    };
    let restored = ctx.inner.restore_planar(spec, &color, &params, &mut report);
    if cancelled.get() {
        return Err(DaviError::cancelled());
    }
    let restored = restored?;
    drop(color);

    let mut out_view = ImageViewMut::from_descriptor(output).map_err(|e| about("output", e))?;
    context::write_planar(&mut out_view, &restored, alpha.as_ref())
}

// ---------------------------------------------------------------------------------------------
// Training (ABI 3)

/// A live training handle, checked in the handle registry before it is dereferenced.
unsafe fn training<'a>(p: *const DaviTraining) -> Result<&'a DaviTraining, DaviError> {
    handles::check(p, Kind::Training, "training")?;
    arg(p, "training")
}

/// A required, non-empty NUL-terminated path.
unsafe fn path_arg(p: *const c_char, name: &str) -> Result<PathBuf, DaviError> {
    if p.is_null() {
        return Err(DaviError::null_argument(name));
    }
    let bytes = CStr::from_ptr(p).to_bytes();
    if bytes.is_empty() {
        return Err(DaviError::invalid_argument(format!("`{name}` is empty")));
    }
    path_from_bytes(bytes)
}

/// Fill `*options` with the defaults (either kind, no config, the config's run directory, no
/// resume) and set its `struct_size`. `options_size` is `sizeof(DaviTrainingOptions)` as the
/// caller compiled it.
///
/// # Safety
/// `options` must be NULL or valid for writes of `options_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn davi_training_options_init(
    options: *mut DaviTrainingOptions,
    options_size: usize,
) -> DaviStatus {
    status(guard(|| {
        let options = arg_mut(options, "options")?;
        if options_size < TRAINING_OPTIONS_V1 {
            return Err(DaviError::invalid_argument(format!(
                "options_size {options_size} is smaller than DaviTrainingOptions \
                    ({TRAINING_OPTIONS_V1} bytes)"
            )));
        }
        options.write(DaviTrainingOptions {
            struct_size: TRAINING_OPTIONS_V1 as u32,
            kind: DaviTrainingKind::Any as u32,
            preset: std::ptr::null(),
            config: std::ptr::null(),
            overrides: std::ptr::null(),
            override_count: 0,
            run_dir: std::ptr::null(),
            resume: 0,
            reserved: 0,
        });
        Ok(())
    }))
}

/// Open a training run: resolve its config, check its data, create its run directory (or
/// resume the checkpoint there), build the networks and load the images.
///
/// The config is `options.preset` or `options.config` with `options.overrides` applied, its
/// run directory `options.run_dir` if set; with neither preset nor config, the run in
/// `options.run_dir` is resumed with the config saved there. On success `*out` receives a new
/// handle, which the caller frees with `davi_training_free`; nothing has trained yet. On
/// failure `*out` is untouched and `err_buf` (if not NULL; `err_len` bytes) says why:
/// `DAVI_STATUS_INVALID_CONFIG` (unknown preset, TOML that does not parse, an unknown key, a
/// bad value or override, the other kind than `options.kind`), `DAVI_STATUS_NOT_FOUND`
/// (a data folder missing or without images, a missing teacher, a run directory without
/// `config.toml`), `DAVI_STATUS_INVALID_ARGUMENT` (a run directory holding a checkpoint
/// without `options.resume`), `DAVI_STATUS_MODEL_ERROR` (a checkpoint or teacher that does
/// not load; the file is left as it is), `DAVI_STATUS_IO_ERROR` (a directory that cannot be
/// written). `options` and what it points to are only read during the call.
///
/// Training uses libtorch's process-wide random generator and sets its intra-op threads
/// (`run.threads`): runs in one process reproduce only while no other run or restore draws
/// from it at the same time (docs/C_API.md, "Training").
///
/// # Safety
/// `options` must be NULL or point to a `DaviTrainingOptions` of its `struct_size` bytes whose
/// strings are NULL or NUL-terminated and whose `overrides` (if `override_count` > 0) points
/// to `override_count` string pointers; `out` must be NULL or writable; `err_buf` must be
/// NULL or writable for `err_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn davi_training_new(
    options: *const DaviTrainingOptions,
    out: *mut *mut DaviTraining,
    err_buf: *mut c_char,
    err_len: usize,
) -> DaviStatus {
    let r = guard(|| {
        if options.is_null() {
            return Err(DaviError::null_argument("options"));
        }
        let out = arg_mut(out, "out")?;
        struct_size_at_least(options, TRAINING_OPTIONS_V1, "DaviTrainingOptions")?;
        let o = std::ptr::read(options);
        if o.reserved != 0 {
            return Err(DaviError::invalid_argument("options.reserved must be 0"));
        }
        let kind = DaviTrainingKind::decode(o.kind)?;
        let invalid_config =
            |what: &str| DaviError::new(DaviStatus::InvalidConfig, format!("{what} is not UTF-8"));
        let preset = match o.preset.is_null() {
            true => None,
            false => Some(
                CStr::from_ptr(o.preset)
                    .to_str()
                    .map_err(|_| invalid_config("options.preset"))?,
            ),
        };
        let config = match o.config.is_null() {
            true => None,
            false => Some(
                CStr::from_ptr(o.config)
                    .to_str()
                    .map_err(|_| invalid_config("options.config"))?,
            ),
        };
        let run_dir = match o.run_dir.is_null() {
            true => None,
            false => Some(path_arg(o.run_dir, "options.run_dir")?),
        };
        if o.override_count > 0 && o.overrides.is_null() {
            return Err(DaviError::null_argument("options.overrides"));
        }
        if o.override_count > 1 << 16 {
            return Err(DaviError::invalid_argument(format!(
                "options.override_count {} is implausibly large",
                o.override_count
            )));
        }
        let mut overrides = Vec::with_capacity(o.override_count);
        for i in 0..o.override_count {
            let p = *o.overrides.add(i);
            if p.is_null() {
                return Err(DaviError::null_argument(&format!("options.overrides[{i}]")));
            }
            let text = CStr::from_ptr(p)
                .to_str()
                .map_err(|_| invalid_config(&format!("options.overrides[{i}]")))?;
            overrides.push(text.to_string());
        }
        let source = match (preset, config, &run_dir) {
            (Some(p), None, _) => ConfigSource::Preset(p),
            (None, Some(t), _) => ConfigSource::Toml(t),
            (None, None, Some(_)) => ConfigSource::RunDir,
            (None, None, None) => {
                return Err(DaviError::invalid_argument(
                    "no config: set options.preset, options.config or options.run_dir",
                ))
            }
            (Some(_), Some(_), _) => {
                return Err(DaviError::invalid_argument(
                    "set only one of options.preset and options.config",
                ))
            }
        };
        let setup = TrainingSetup {
            source,
            overrides,
            run_dir,
            resume: o.resume != 0,
            kind,
        };
        let inner = Training::open(&setup)?;
        out.write(handles::register(
            Box::new(DaviTraining { inner }),
            Kind::Training,
        ));
        Ok(())
    });
    status_with_message(r, err_buf, err_len)
}

/// Free a training handle. A run in progress in libdavi's thread is cancelled (it writes the
/// checkpoint of the step it reached) and joined first, so this may take as long as a step
/// and a checkpoint write; no thread of the handle outlives the call. NULL, a pointer that is
/// not a live training handle (for example one already freed) and other handles are ignored.
/// Must not be called from the handle's own progress callback, nor while another thread is in
/// `davi_training_run` on it.
///
/// # Safety
/// `training` must be NULL or a pointer value; only live training handles are dereferenced.
#[no_mangle]
pub unsafe extern "C" fn davi_training_free(training: *mut DaviTraining) {
    let _ = guard(|| {
        drop(handles::unregister(training, Kind::Training));
        Ok(())
    });
}

/// Copy the message of the last failed call on `training` into `buf`, exactly as
/// `davi_context_last_error` does (empty after a success). A background run's outcome is
/// recorded when it ends. Safe to call from any thread, also while the run trains.
///
/// # Safety
/// `training` must be NULL or a live training handle; `buf` NULL or writable for `len` bytes;
/// `out_len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn davi_training_last_error(
    training: *const DaviTraining,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> DaviStatus {
    status(guard(|| {
        let t = self::training(training)?;
        copy_text(&t.inner.last_error(), buf, len, out_len)
    }))
}

/// Where the run stands: its kind, steps done, total steps, the step of the checkpoint on
/// disk, whether a run is in progress and whether it finished. `info_size` is
/// `sizeof(DaviTrainingInfo)` as the caller compiled it; `*info` is written on success only,
/// with its `struct_size` set. Safe to call from any thread, also while the run trains.
///
/// # Safety
/// `training` must be NULL or a live training handle; `info` NULL or writable for `info_size`
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn davi_training_info(
    training: *const DaviTraining,
    info: *mut DaviTrainingInfo,
    info_size: usize,
) -> DaviStatus {
    status(guard(|| {
        let t = self::training(training)?;
        let info = arg_mut(info, "info")?;
        if info_size < TRAINING_INFO_V1 {
            return Err(DaviError::invalid_argument(format!(
                "info_size {info_size} is smaller than DaviTrainingInfo ({TRAINING_INFO_V1} bytes)"
            )));
        }
        let i = t.inner.info();
        info.write(DaviTrainingInfo {
            struct_size: TRAINING_INFO_V1 as u32,
            kind: match i.kind {
                TrainingKind::Prior => DaviTrainingKind::Prior as u32,
                TrainingKind::Davi => DaviTrainingKind::Davi as u32,
            },
            step: i.step,
            total_steps: i.total_steps,
            checkpoint_step: i.checkpoint_step,
            running: i.running as u32,
            finished: i.finished as u32,
        });
        Ok(())
    }))
}

/// The run directory (its `model.safetensors` is the finished run's model), copied into `buf`
/// like `davi_context_last_error` copies messages (a path that is not UTF-8 is copied with
/// replacement characters).
///
/// # Safety
/// `training` must be NULL or a live training handle; `buf` NULL or writable for `len` bytes;
/// `out_len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn davi_training_run_dir(
    training: *const DaviTraining,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> DaviStatus {
    status(guard(|| {
        let t = self::training(training)?;
        copy_text(&t.inner.run_dir().to_string_lossy(), buf, len, out_len)
    }))
}

/// Fill `*options` with the defaults (train to the end, no callback) and set its
/// `struct_size`. `options_size` is `sizeof(DaviTrainingRunOptions)` as the caller compiled it.
///
/// # Safety
/// `options` must be NULL or valid for writes of `options_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn davi_training_run_options_init(
    options: *mut DaviTrainingRunOptions,
    options_size: usize,
) -> DaviStatus {
    status(guard(|| {
        let options = arg_mut(options, "options")?;
        if options_size < TRAINING_RUN_OPTIONS_V1 {
            return Err(DaviError::invalid_argument(format!(
                "options_size {options_size} is smaller than DaviTrainingRunOptions \
                    ({TRAINING_RUN_OPTIONS_V1} bytes)"
            )));
        }
        options.write(DaviTrainingRunOptions {
            struct_size: TRAINING_RUN_OPTIONS_V1 as u32,
            reserved: 0,
            max_steps: 0,
            progress: None,
            user_data: std::ptr::null_mut(),
        });
        Ok(())
    }))
}

/// A C progress callback and its `user_data`, called from the training thread.
struct CTrainingProgress {
    callback: unsafe extern "C" fn(*mut c_void, *const DaviTrainingProgress) -> i32,
    user_data: *mut c_void,
}

// The host promises (DaviTrainingProgressFn) that `user_data` stays valid until the run ends,
// and the callback is called from one thread at a time.
unsafe impl Send for CTrainingProgress {}

impl CTrainingProgress {
    /// Call the callback with one step's report; `false` when it asks to cancel.
    fn call(&self, r: &StepReport<'_>) -> bool {
        let mut names = Vec::new();
        let mut values = Vec::new();
        for (k, v) in r.terms.iter().chain(r.eval.into_iter().flatten()) {
            // Term names are identifiers; one with a NUL (impossible) is left out.
            if let Ok(n) = CString::new(k.as_str()) {
                names.push(n);
                values.push(*v);
            }
        }
        let pointers: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
        let eval = |k: &str| r.eval.and_then(|e| e.get(k)).copied().unwrap_or(f64::NAN);
        let loss = r.terms.get("loss_g").or(r.terms.get("loss")).copied();
        let report = DaviTrainingProgress {
            struct_size: size_of::<DaviTrainingProgress>() as u32,
            term_count: pointers.len() as u32,
            step: r.step,
            total_steps: r.total_steps,
            checkpoint_step: r.checkpoint_step.unwrap_or(0),
            evaluated: r.eval.is_some() as u32,
            reserved: 0,
            loss: loss.unwrap_or(f64::NAN),
            heldout_psnr: eval("heldout_psnr"),
            heldout_ssim: eval("heldout_ssim"),
            elapsed_seconds: r.wall_seconds,
            term_names: pointers.as_ptr(),
            term_values: values.as_ptr(),
        };
        unsafe { (self.callback)(self.user_data, &report) == 0 }
    }
}

/// Decode run options: the step limit and the progress callback.
unsafe fn run_options(
    options: *const DaviTrainingRunOptions,
) -> Result<(Option<u64>, Option<ProgressFn<'static>>), DaviError> {
    if options.is_null() {
        return Ok((None, None));
    }
    struct_size_at_least(options, TRAINING_RUN_OPTIONS_V1, "DaviTrainingRunOptions")?;
    let o = std::ptr::read(options);
    if o.reserved != 0 {
        return Err(DaviError::invalid_argument("options.reserved must be 0"));
    }
    let progress = o.progress.map(|callback| {
        let c = CTrainingProgress {
            callback,
            user_data: o.user_data,
        };
        Box::new(move |r: &StepReport<'_>| c.call(r)) as ProgressFn<'static>
    });
    Ok(((o.max_steps != 0).then_some(o.max_steps), progress))
}

/// Decode `options` and hand them to `f`; a refusal of the options is recorded as the
/// handle's last error. Nothing reads through `training` after `f` returns.
unsafe fn with_run_options<T>(
    training: *mut DaviTraining,
    options: *const DaviTrainingRunOptions,
    f: impl FnOnce(&Training, Option<u64>, Option<ProgressFn<'static>>) -> Result<T, DaviError>,
) -> DaviStatus {
    let r = guard(|| {
        let t = self::training(training)?;
        match run_options(options) {
            Ok((max_steps, progress)) => f(&t.inner, max_steps, progress).map(|_| ()),
            Err(e) => {
                let r = Err(e);
                t.inner.record(&r);
                r
            }
        }
    });
    status(r)
}

/// Train in the calling thread: up to `options.max_steps` steps (0 or NULL options: until
/// `run.total_steps`), calling `options.progress` after every step on this thread. Returns
/// when the run finished or ran its steps (`DAVI_STATUS_OK`), was cancelled (by the callback
/// or `davi_training_cancel` from another thread: `DAVI_STATUS_CANCELLED`) or failed. Every
/// return leaves the run directory with a checkpoint of the step reached, except a failure,
/// which leaves the last good one: a loss that became non-finite (`INVALID_ARGUMENT`), a
/// checkpoint or log that cannot be written, e.g. on a full disk (`IO_ERROR`; the message
/// names the step kept), a caught panic (`PANIC`). After a failure the handle only reports
/// it: free it and open the run directory again to resume. A later call after `OK` or
/// `CANCELLED` continues from the step reached. The run's `model.safetensors` is written when
/// the last step is done. `DAVI_STATUS_BUSY` if a run or export of this handle is in progress
/// (also when called from its own progress callback).
///
/// # Safety
/// `training` must be NULL or a live training handle; `options` NULL or a
/// `DaviTrainingRunOptions` of its `struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn davi_training_run(
    training: *mut DaviTraining,
    options: *const DaviTrainingRunOptions,
) -> DaviStatus {
    with_run_options(training, options, |t, max_steps, progress| {
        t.run(max_steps, progress)
    })
}

/// `davi_training_run` in a thread libdavi starts and owns; returns at once (`DAVI_STATUS_OK`
/// when the thread started). The progress callback is then called on that thread, never
/// concurrently. `davi_training_wait` waits for the run and returns its status;
/// `davi_training_cancel` stops it after the current step; `davi_training_free` does both.
/// `DAVI_STATUS_BUSY` if a run or export of this handle is in progress.
///
/// # Safety
/// As `davi_training_run`; `options.user_data` must stay valid until the run ended
/// (`davi_training_wait` or `davi_training_free` returned).
#[no_mangle]
pub unsafe extern "C" fn davi_training_start(
    training: *mut DaviTraining,
    options: *const DaviTrainingRunOptions,
) -> DaviStatus {
    with_run_options(training, options, |t, max_steps, progress| {
        t.start(max_steps, progress)
    })
}

/// Ask the run in progress on `training` (in any thread, or in libdavi's) to stop after its
/// current step: it writes a checkpoint of that step and ends with `DAVI_STATUS_CANCELLED`.
/// Returns at once, from any thread (also from the progress callback); with no run in
/// progress it does nothing.
///
/// # Safety
/// `training` must be NULL or a live training handle.
#[no_mangle]
pub unsafe extern "C" fn davi_training_cancel(training: *mut DaviTraining) -> DaviStatus {
    status(guard(|| {
        self::training(training)?.inner.cancel();
        Ok(())
    }))
}

/// Wait for the run `davi_training_start` started to end and return its status (that of
/// `davi_training_run`: `OK`, `CANCELLED` or the failure; again on every call until the next
/// start). `DAVI_STATUS_INVALID_ARGUMENT` if no run was started; `DAVI_STATUS_BUSY` when
/// called from that run's own progress callback (it would wait for itself).
///
/// # Safety
/// `training` must be NULL or a live training handle.
#[no_mangle]
pub unsafe extern "C" fn davi_training_wait(training: *mut DaviTraining) -> DaviStatus {
    status(guard(|| self::training(training)?.inner.wait().map(|_| ())))
}

/// Write the EMA network of the step reached as a model file at `path`, atomically (a
/// temporary file renamed over `path`: a crash or a full disk never leaves part of one): the
/// file a finished run writes as `model.safetensors`, and the format `davi export` writes. A
/// DAVI run's file is a generator `davi_context_new` loads; a prior's is a teacher for a DAVI
/// config (`davi.teacher`). `DAVI_STATUS_BUSY` while a run is in progress; `IO_ERROR` if it
/// cannot be written.
///
/// # Safety
/// `training` must be NULL or a live training handle; `path` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn davi_training_export(
    training: *mut DaviTraining,
    path: *const c_char,
) -> DaviStatus {
    status(guard(|| {
        let t = self::training(training)?;
        match path_arg(path, "path") {
            Ok(path) => t.inner.export(&path),
            Err(e) => {
                let r = Err(e);
                t.inner.record(&r);
                r
            }
        }
    }))
}
