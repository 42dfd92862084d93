//! The DAVI restoration engine on tch (libtorch), CPU and CUDA.
//!
//! DAVI (ECCV 2024) maps a degraded measurement `y = A(x) + n` to a clean-image sample in one
//! network evaluation. This crate holds everything that needs libtorch. The method as
//! implemented, with numbered sections the module docs cite, is `docs/algorithm.md`; one line
//! per file is in `docs/ARCHITECTURE.md`.
//!
//! The maths:
//! - [`unet`]: the ADM ("guided diffusion") U-Net, parameter names identical to the official
//!   state dicts so official checkpoints load by name (§2);
//! - [`diffusion`]: beta schedules, DDPM arrays and the I2SB bridge arrays DAVI uses (f64, §3);
//! - [`operators`]: degradation operators `A` with adjoint, pseudo-inverse and lift (§4).
//!
//! Restoration and evaluation:
//! - [`restore`]: one-step restoration exactly as the official evaluator does it (§6.1);
//! - [`precision`]: the network's precision in a restore (`fp32`, `bf16`, `fp16`);
//! - [`tiling`]: overlapped, blended tiles, so any image size runs in bounded memory (§6.2);
//! - [`ensemble`]: the optional self-ensemble over the eight orientations of the image;
//! - [`windows`]: restoration through low-resolution context windows, for inpainting and
//!   colorization models (§6.3);
//! - [`pipeline`]: observations in [0, 1] to measurements in [-1, 1] and back (§4.5);
//! - [`dps`]: the many-step DPS baseline on a diffusion prior (§8);
//! - [`metrics`]: PSNR and SSIM (§7);
//! - [`eval`]: the evaluation behind `davi eval` (§7).
//!
//! Models, training, plumbing:
//! - [`weights`]: the self-describing safetensors model format and the official `.pt` reader;
//! - [`defaults`]: where the shipped default model of each task is found;
//! - [`train`]: diffusion-prior and DAVI training, resumable (§5);
//! - [`generator`]: [`Generator`], a loaded DAVI generator and the one restore path that
//!   libdavi's C API and the engine's plugin share;
//! - [`plugin`]: the engine as a libdavi plugin (`davi_plugin_entry`);
//! - [`device`]: `auto | cpu | cuda:N` selection;
//! - [`error`]: [`EngineError`], grouped by who is at fault.
//!
//! Unit tests only: `test_rng`, the turns unit tests take on libtorch's process-wide random
//! generator.
//!
//! It builds as an rlib (linked by the `davi` CLI and tests) and as a cdylib (the plugin).
pub mod defaults;
pub mod device;
pub mod diffusion;
pub mod dps;
pub mod ensemble;
pub mod error;
pub mod eval;
pub mod generator;
pub mod metrics;
pub mod operators;
pub mod pipeline;
pub mod plugin;
pub mod precision;
pub mod restore;
pub mod tiling;
pub mod train;
pub mod unet;
pub mod weights;
pub mod windows;

#[cfg(test)]
mod test_rng;

pub use device::parse_device;
pub use error::{EngineError, Result};
pub use generator::Generator;
