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

/// Options of `davi_context_new` (ABI 1; `precision` appended in ABI 4). Fill with
/// `davi_context_options_init`, then set at most one model source: `model_path`, or
/// `model_bytes` + `model_len`, or `task`. A caller compiled against an older header passes
/// its smaller `struct_size`; the fields beyond it take their defaults.
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
    /// NUL-terminated precision of the network (ABI 4), exactly one of `"fp32"` (the
    /// default), `"bf16"` (CUDA, and CPUs with bf16 instructions: x86 AVX512_BF16, Arm BF16)
    /// or `"fp16"` (CUDA only); NULL means `"fp32"`. Another string is
    /// `DAVI_STATUS_INVALID_ARGUMENT`; a precision the device cannot run (fp16 on a CPU, bf16
    /// on a CPU without bf16 instructions) is `DAVI_STATUS_DEVICE_ERROR`. Reduced precision
    /// converts the model's weights once and runs only the network in it; the bridge
    /// arithmetic, the tile blend and the clamp stay f32. bf16 results are close to fp32's,
    /// not equal (docs/C_API.md, "Precision"), and reproducible only on the same CPU or GPU
    /// model with the same thread count.
    pub precision: *const c_char,
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
    /// Self-ensemble (ABI 5): 0 or 1 = off; 2, 4 or 8 = restore the image in that many of its
    /// orientations (mirrored, turned by quarter turns), turn each result back and average
    /// them: a better restoration (+0.25 dB for the shipped denoising model with 8) at that
    /// many times the time. Other values are `DAVI_STATUS_INVALID_ARGUMENT`. Before ABI 5 this
    /// field was `reserved` and had to be 0, so a caller built against an older header gets
    /// no ensemble.
    pub ensemble: u32,
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

/// Size of the ABI 1 `DaviContextOptions` (everything before `precision`).
pub(crate) const CONTEXT_OPTIONS_V1: usize = std::mem::offset_of!(DaviContextOptions, precision);
/// Size of the ABI 4 `DaviContextOptions` (with `precision`), this library's.
pub(crate) const CONTEXT_OPTIONS_V4: usize = size_of::<DaviContextOptions>();

impl DaviContextOptions {
    /// The defaults `davi_context_options_init` writes: no model source, device "auto",
    /// libtorch's threads, fp32; `struct_size` is this library's size.
    pub(crate) fn defaults() -> Self {
        DaviContextOptions {
            struct_size: CONTEXT_OPTIONS_V4 as u32,
            threads: 0,
            model_path: std::ptr::null(),
            model_bytes: std::ptr::null(),
            model_len: 0,
            task: std::ptr::null(),
            device: std::ptr::null(),
            precision: std::ptr::null(),
        }
    }
}
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

// ---------------------------------------------------------------------------------------------
// Training (ABI 3)

/// Which kind of network a training run trains (`DaviTrainingOptions.kind`,
/// `DaviTrainingInfo.kind`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DaviTrainingKind {
    /// Options only: accept a config of either kind.
    Any = 0,
    /// A diffusion prior (DDPM with the hybrid loss): the teacher a DAVI run learns from.
    /// Its model file is a prior, which `davi_context_new` refuses and a DAVI config names as
    /// `davi.teacher`.
    Prior = 1,
    /// DAVI's amortised training of a one-step generator: its model file restores through
    /// `davi_context_new`.
    Davi = 2,
}

impl DaviTrainingKind {
    pub(crate) fn decode(v: u32) -> Result<Option<crate::training::TrainingKind>, DaviError> {
        use crate::training::TrainingKind;
        match v {
            0 => Ok(None),
            1 => Ok(Some(TrainingKind::Prior)),
            2 => Ok(Some(TrainingKind::Davi)),
            _ => Err(DaviError::invalid_argument(format!(
                "unknown training kind {v} (0 = any, 1 = prior, 2 = davi)"
            ))),
        }
    }
}

/// Options of `davi_training_new` (ABI 3). Fill with `davi_training_options_init`, then set
/// the config: `preset` or `config`, or neither to resume the run in `run_dir` with the
/// config saved there.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DaviTrainingOptions {
    /// `sizeof(DaviTrainingOptions)` as the caller compiled it.
    pub struct_size: u32,
    /// A `DaviTrainingKind` value: the kind of run the caller expects; a config of the other
    /// kind is `DAVI_STATUS_INVALID_CONFIG`. `DAVI_TRAINING_KIND_ANY` accepts both.
    pub kind: u32,
    /// NUL-terminated name of a built-in preset (`"tiny-prior"`, `"photo-denoise-davi"`, …;
    /// `docs/models.md`), or NULL.
    pub preset: *const c_char,
    /// NUL-terminated TOML text of a config (the format of `plugins/engine/presets/`), or NULL.
    pub config: *const c_char,
    /// `override_count` NUL-terminated `key.path=value` overrides applied to the config in
    /// order (as `davi train --set`, e.g. `"run.total_steps=8"`, `"data.train_dir=\"/x\""`);
    /// NULL when `override_count` is 0.
    pub overrides: *const *const c_char,
    /// Number of `overrides`.
    pub override_count: usize,
    /// NUL-terminated run directory (checkpoints, log, grids, model files), replacing the
    /// config's `run.out_dir`; NULL keeps it. With neither `preset` nor `config`, the run in
    /// this directory is resumed with its saved `config.toml`.
    pub run_dir: *const c_char,
    /// 1: continue the checkpoint in the run directory, if there is one; 0: a run directory
    /// that holds a checkpoint is refused (`DAVI_STATUS_INVALID_ARGUMENT`), so no run is
    /// overwritten by mistake. Implied when resuming from `run_dir` alone.
    pub resume: u32,
    /// Reserved, 0.
    pub reserved: u32,
}

/// What a training progress callback is told after every step (ABI 3).
///
/// The struct, its strings and arrays belong to libdavi and are valid only during the
/// callback: copy what you keep. Fields are only ever appended; `struct_size` says how many
/// the library filled.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DaviTrainingProgress {
    /// `sizeof(DaviTrainingProgress)` as the library was built.
    pub struct_size: u32,
    /// Number of entries in `term_names` and `term_values`.
    pub term_count: u32,
    /// Steps done: the step that just finished, counted from 1.
    pub step: u64,
    /// The run's `run.total_steps`.
    pub total_steps: u64,
    /// The step of the newest checkpoint on disk (0: none yet), after this step's own.
    pub checkpoint_step: u64,
    /// 1 when this step evaluated on the held-out images (`run.eval_every`, and the last
    /// step), else 0.
    pub evaluated: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// The step's total loss: `loss` of a prior, `loss_g` (the generator's) of a DAVI run.
    pub loss: f64,
    /// Held-out PSNR in dB of the generator when this step evaluated a DAVI run (with
    /// `data.heldout_dir` set), else NaN.
    pub heldout_psnr: f64,
    /// Held-out SSIM, like `heldout_psnr`.
    pub heldout_ssim: f64,
    /// Wall seconds the run has trained, over all its sessions.
    pub elapsed_seconds: f64,
    /// Names of the step's loss terms (`loss`, `mse`, `vb` of a prior; `loss_g`, `ikl`,
    /// `con`, `gt`, `fake_score`, `disc`, `gan_g`, `w_adv` of DAVI), then, when the step
    /// evaluated, the held-out metrics (`heldout_psnr`, `heldout_ssim`,
    /// `heldout_psnr_measurement`, or a prior's `heldout_eps_mse`). NUL-terminated.
    pub term_names: *const *const c_char,
    /// The values of `term_names`, in the same order.
    pub term_values: *const f64,
}

/// Progress callback of `davi_training_run` and `davi_training_start` (ABI 3).
///
/// Called after every step, on the thread that trains: the caller's thread in
/// `davi_training_run`, a thread of libdavi's own in `davi_training_start` (one at a time,
/// never concurrently). `progress` and what it points to are valid only during the call.
/// `user_data` is `DaviTrainingRunOptions.user_data`, passed back untouched; it must stay
/// valid until the run ends (`davi_training_run` returns, or `davi_training_wait` /
/// `davi_training_free` returns after `davi_training_start`). Return 0 to continue, non-zero
/// to cancel: the run then writes a checkpoint of this step and ends with
/// `DAVI_STATUS_CANCELLED`. The callback must not unwind (C++ exceptions, `longjmp`) through
/// libdavi.
pub type DaviTrainingProgressFn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, progress: *const DaviTrainingProgress) -> i32,
>;

/// Options of one `davi_training_run` or `davi_training_start` (ABI 3). Fill with
/// `davi_training_run_options_init`; NULL options mean exactly those defaults.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DaviTrainingRunOptions {
    /// `sizeof(DaviTrainingRunOptions)` as the caller compiled it.
    pub struct_size: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// Steps to run in this call at most; 0 = until the run's `run.total_steps`.
    pub max_steps: u64,
    /// Progress and cancellation, or NULL. See `DaviTrainingProgressFn`.
    pub progress: DaviTrainingProgressFn,
    /// Passed to `progress` untouched.
    pub user_data: *mut c_void,
}

/// Where a training run stands (`davi_training_info`, ABI 3).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DaviTrainingInfo {
    /// `sizeof(DaviTrainingInfo)` as the caller compiled it.
    pub struct_size: u32,
    /// `DAVI_TRAINING_KIND_PRIOR` or `DAVI_TRAINING_KIND_DAVI`.
    pub kind: u32,
    /// Steps done (updated after every step while the run trains).
    pub step: u64,
    /// The run's `run.total_steps`.
    pub total_steps: u64,
    /// The step of the newest checkpoint on disk (0: none yet).
    pub checkpoint_step: u64,
    /// 1 while a run (`davi_training_run`, `davi_training_start`) or an export of this
    /// handle is in progress.
    pub running: u32,
    /// 1 once `step == total_steps` (the run directory then holds `model.safetensors`).
    pub finished: u32,
}

/// Size of the ABI 3 `DaviTrainingOptions`.
pub(crate) const TRAINING_OPTIONS_V1: usize = size_of::<DaviTrainingOptions>();
/// Size of the ABI 3 `DaviTrainingRunOptions`.
pub(crate) const TRAINING_RUN_OPTIONS_V1: usize = size_of::<DaviTrainingRunOptions>();
/// Size of the ABI 3 `DaviTrainingInfo`.
pub(crate) const TRAINING_INFO_V1: usize = size_of::<DaviTrainingInfo>();

/// A training run open in memory: its networks, optimisers, data and run directory (ABI 3).
///
/// Made by `davi_training_new`, trained by `davi_training_run` (in the caller's thread) or
/// `davi_training_start` (in a thread libdavi owns), freed by `davi_training_free`, which
/// cancels and joins a run in progress. Every call may come from any thread; one run trains
/// at a time (a second is `DAVI_STATUS_BUSY`); `davi_training_cancel`, `davi_training_info`
/// and `davi_training_last_error` may be called while it trains.
pub struct DaviTraining {
    pub(crate) inner: crate::training::Training,
}
