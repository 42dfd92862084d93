//! The C-visible types of `libdavi` that are not shared with plugins: option structs, the
//! progress callback, the opaque handles and the enums of spec setters.
//!
//! The image descriptor (`DaviImage`, `DaviSampleType`, `DaviChannelLayout`) and the status
//! enum (`DaviStatus`) come from the SDK, so the host and plugin boundaries agree on them.
//!
//! Layout rules (see `docs/C_API.md`): structs passed by pointer start with `uint32_t
//! struct_size`; fields are only ever appended; padding is explicit (`reserved`); enums that
//! come *from* the caller travel as `uint32_t` and are decoded here, because a Rust enum
//! holding an unknown value would be undefined behaviour. `tests/capi.rs` pins the ABI 1
//! layouts.

use davi_sdk::spec::{BlurMode, DownsampleMethod};
use davi_sdk::{DaviError, OperatorSpec};
use std::ffi::{c_char, c_void};
use std::mem::size_of;

/// Progress callback of `davi_restore`.
///
/// Called on the thread that called `davi_restore`, synchronously, only while that call runs:
/// before each batch of tiles and once after the last (tiles of small models run many to a
/// network call), with `fraction` in [0, 1], never decreasing.
/// `user_data` is `DaviRestoreOptions.user_data`, passed back untouched; it must stay valid
/// until `davi_restore` returns. Return 0 to continue, non-zero to cancel: `davi_restore` then
/// returns `DAVI_STATUS_CANCELLED` before the next batch starts and leaves the output untouched.
/// The callback must not unwind (C++ exceptions, `longjmp`) through libdavi. A restore it
/// starts never waits: on a busy context (its own, or one another thread is restoring on) it
/// fails with `DAVI_STATUS_BUSY`.
pub type DaviProgressFn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, fraction: f32) -> i32>;

/// Options of `davi_context_new` (ABI 1). Fill with `davi_context_options_init`, then set
/// at most one model source: `model_path`, or `model_bytes` + `model_len`, or `task`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DaviContextOptions {
    /// `sizeof(DaviContextOptions)` as the caller compiled it.
    pub struct_size: u32,
    /// Intra-op CPU threads libtorch uses for this context's restores, at most 1024; 0 leaves
    /// libtorch's setting as it is (its default unless something in the process changed it).
    /// libtorch keeps this setting per process (or per calling thread, by build), so contexts
    /// with different values affect each other. The thread count changes how libtorch splits
    /// sums, so float results may differ in the last bits between counts (about 6e-7 on the
    /// [0, 1] scale; 8- and 16-bit results then differ by at most one code at rounding
    /// boundaries). Equal counts give bit-identical results (docs/C_API.md, "Threads").
    pub threads: u32,
    /// NUL-terminated path of a model file (`*.safetensors` written by libdavi), or NULL.
    pub model_path: *const c_char,
    /// The bytes of a model file held in memory, or NULL. Read during `davi_context_new` only.
    pub model_bytes: *const u8,
    /// Length of `model_bytes` in bytes; 0 when `model_bytes` is NULL.
    pub model_len: usize,
    /// When neither `model_path` nor `model_bytes` is given: the task whose installed default
    /// model to load, NUL-terminated: `"deblur"`, `"sr4"`, `"inpaint"`, `"denoise"` or
    /// `"colorize"`. Defaults are searched in `$DAVI_MODEL_DIR`, then beside the program
    /// (`models/`, `../share/libdavi/models/`).
    pub task: *const c_char,
    /// NUL-terminated device, exactly one of `"auto"` (first CUDA device, else CPU), `"cpu"`,
    /// `"cuda"`, `"cuda:N"` (lower case, no spaces; anything else is `DAVI_STATUS_DEVICE_ERROR`);
    /// NULL means `"auto"`.
    pub device: *const c_char,
}

/// Options of one `davi_restore` call (ABI 1). Fill with `davi_restore_options_init`; NULL
/// options mean exactly those defaults.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DaviRestoreOptions {
    /// `sizeof(DaviRestoreOptions)` as the caller compiled it.
    pub struct_size: u32,
    /// Tile edge in output pixels; the network runs on one tile at a time, so its working
    /// memory depends on the tile, not the image. 0 = the model's preferred tile (its training
    /// patch size; 256 for the official models). Must be a multiple of the model's
    /// down-sampling factor (4 for the shipped models).
    pub tile: u32,
    /// Pixels neighbouring tiles share and cross-fade over (seam-free blending); 0 = automatic:
    /// 32, or a quarter of the tile for tiles under 128. Must be smaller than the tile, and 0
    /// when `tile` is 0 (the model's own tiling chooses its overlap).
    pub overlap: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// DAVI's bridge perturbation `h`; NaN = the model's value (official 0.1 or 0.01). 0 makes
    /// the result a deterministic function of the input and the model. In [0, 10].
    pub perturb_h: f64,
    /// Seed of the perturbation noise: equal inputs, options and seeds give equal pixels.
    pub seed: u64,
    /// Progress and cancellation, or NULL. See `DaviProgressFn`.
    pub progress: DaviProgressFn,
    /// Passed to `progress` untouched.
    pub user_data: *mut c_void,
}

/// How a Gaussian blur spec realises the blur (`davi_spec_set_blur`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DaviBlurMode {
    /// Separable convolution with zero padding: what an out-of-focus photo looks like.
    ZeroPadded = 0,
    /// The operator the official DAVI code applies (DDRM's SVD form), to reproduce its numbers.
    Ddrm = 1,
}

/// How a super-resolution spec down-sampled the image (`davi_spec_set_sr_method`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DaviDownsampleMethod {
    /// Mean over factor×factor blocks (the official `sr_averagepooling`).
    AvgPool = 0,
    /// Cubic kernel, stride = factor (the official `bicubic`).
    Bicubic = 1,
}

impl DaviBlurMode {
    pub(crate) fn decode(v: u32) -> Result<BlurMode, DaviError> {
        match v {
            0 => Ok(BlurMode::ZeroPadded),
            1 => Ok(BlurMode::Ddrm),
            _ => Err(DaviError::invalid_argument(format!(
                "unknown blur mode {v} (0 = zero padded, 1 = ddrm)"
            ))),
        }
    }
}

impl DaviDownsampleMethod {
    pub(crate) fn decode(v: u32) -> Result<DownsampleMethod, DaviError> {
        match v {
            0 => Ok(DownsampleMethod::AvgPool),
            1 => Ok(DownsampleMethod::Bicubic),
            _ => Err(DaviError::invalid_argument(format!(
                "unknown down-sampling method {v} (0 = average pooling, 1 = bicubic)"
            ))),
        }
    }
}

/// Size of the ABI 1 `DaviContextOptions`.
pub(crate) const CONTEXT_OPTIONS_V1: usize = size_of::<DaviContextOptions>();
/// Size of the ABI 1 `DaviRestoreOptions`.
pub(crate) const RESTORE_OPTIONS_V1: usize = size_of::<DaviRestoreOptions>();

/// An operator spec: which degradation to undo and its parameters.
///
/// Made by `davi_spec_new_task`, `davi_spec_parse` or `davi_context_spec`; changed by the
/// `davi_spec_set_*` / `davi_spec_add_box` functions; freed by `davi_spec_free`. A spec is
/// plain data: it may be read by many threads at once (for example by restores on several
/// contexts), but must not be changed while another thread reads it.
///
/// Every function checks a handle against the library's list of live handles before reading
/// through it: a context, a freed spec or any other pointer passed as a spec is refused with
/// `DAVI_STATUS_INVALID_ARGUMENT` (the same holds for contexts).
pub struct DaviSpec {
    pub(crate) spec: OperatorSpec,
}

/// A loaded DAVI generator on a device, with a detailed message about its last failed call.
///
/// Made by `davi_context_new`, used by `davi_restore`, freed by `davi_context_free`. A context
/// may be shared by threads: restores on it run one at a time, in turn (a second waits for
/// the first), except that a restore started from inside a progress callback never waits and
/// fails with `DAVI_STATUS_BUSY` if its context is busy. For parallel restores, make one
/// context per thread; they share nothing.
pub struct DaviContext {
    pub(crate) inner: crate::context::Context,
    pub(crate) last_error: std::sync::Mutex<String>,
}
