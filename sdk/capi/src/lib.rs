//! `libdavi`: the stable C API of the DAVI restoration engine.
//!
//! C and C++ hosts (image editors, video tools, scripts' native helpers) link `libdavi.so.0`
//! and include `include/davi.h`, which cbindgen generates from this crate (see
//! `gen/header.rs`; `cargo run -p davi-capi --example gen-header` rewrites it, and
//! `tests/header.rs` fails if the committed header differs from a fresh generation).
//!
//! The API in one breath: `davi_context_new` loads a DAVI generator on a device (from a model
//! file, from bytes, or the installed default for a task); `davi_spec_*` build the operator
//! spec (what degraded the image) in C or parse it from TOML/JSON; `davi_restore` restores an
//! interleaved 8-bit, 16-bit or float image (gray, gray+alpha, RGB, RGBA; any signed row
//! stride; in place or into a separate buffer) through overlapped, cross-faded tiles, with an
//! optional progress callback that can cancel. Every call returns a `DaviStatus`; a context
//! keeps a detailed message about its last failure (`davi_context_last_error`). The
//! conventions (ownership, NULL, threads, callbacks, errors, versioning) are in
//! `docs/C_API.md`.
//!
//! Training (ABI 3): `davi_training_new` opens a training run (a preset or TOML config plus
//! overrides, or a run directory to resume); `davi_training_run` trains it in the caller's
//! thread, `davi_training_start` in a thread of libdavi's own (`davi_training_wait`,
//! `davi_training_cancel`), both with a per-step progress callback; `davi_training_export`
//! writes a model file `davi_context_new` loads. The loop is the engine's
//! (`davi_engine::train::runner::Session`), the one `davi train` runs.
//!
//! Layers, top to bottom:
//! - [`capi`]: the exported `extern "C"` functions, a thin adapter;
//! - [`boundary`]: the panic boundary and pointer checks every exported body goes through;
//! - `handles`: the registry of live opaque handles, so a handle of the wrong kind, a freed one
//!   or garbage is refused without being read;
//! - [`types`]: the C structs, enums and opaque handles of this API;
//! - [`context`]: the safe Rust API the adapter calls ([`context::Context`]), and
//!   [`training`] for training ([`training::Training`]);
//! - below: `davi_engine::generator::Generator` (shared with the engine's plugin) and the SDK's
//!   image views and statuses.
//!
//! Anchors: `xiph/rav1e: src/capi.rs` (thin C layer over a safe API), `rustls/rustls-ffi`
//! (panic boundary, NULL checks, per-object error text), `ImageOptim/gifski: gifski.h`
//! (callbacks with `user_data` and documented threads).
//!
//! The `rlib` of this crate lets Rust tests call the same functions in-process; the `cdylib`
//! is `libdavi.so` (SONAME `libdavi.so.<major>`, set by `build.rs`).
pub mod boundary;
pub mod capi;
pub mod context;
mod handles;
pub mod training;
pub mod types;

pub use capi::*;
pub use context::{Context, ModelSource, RestoreParams};
pub use davi_sdk::{DaviChannelLayout, DaviImage, DaviSampleType, DaviStatus};
pub use training::{ConfigSource, Training, TrainingInfo, TrainingKind, TrainingSetup};
pub use types::{
    DaviBlurMode, DaviContext, DaviContextOptions, DaviDownsampleMethod, DaviProgressFn,
    DaviRestoreOptions, DaviSpec, DaviTraining, DaviTrainingInfo, DaviTrainingKind,
    DaviTrainingOptions, DaviTrainingProgress, DaviTrainingProgressFn, DaviTrainingRunOptions,
};
