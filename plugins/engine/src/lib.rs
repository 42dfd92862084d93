//! The DAVI restoration engine on tch (libtorch), CPU and CUDA.
//!
//! DAVI (ECCV 2024) maps a degraded measurement `y = A(x) + n` to a clean-image sample in one
//! network evaluation. This crate holds everything that needs libtorch:
//!
//! - [`unet`]: the ADM ("guided diffusion") U-Net, parameter names identical to the official
//!   state dicts so official checkpoints load by name;
//! - [`diffusion`]: beta schedules, DDPM arrays and the I2SB bridge arrays DAVI uses (f64);
//! - [`operators`]: degradation operators `A` with adjoint, pseudo-inverse and lift;
//! - [`weights`]: the self-describing safetensors model format and the official `.pt` reader;
//! - [`restore`]: one-step restoration exactly as the official evaluator does it;
//! - [`device`]: `auto | cpu | cuda:N` selection;
//! - [`plugin`]: the engine as a libdavi plugin (`davi_plugin_entry`) and the restore path the
//!   C API shares.
//!
//! It builds as an rlib (linked by the `davi` CLI and tests) and as a cdylib (the plugin).
pub mod defaults;
pub mod device;
pub mod diffusion;
pub mod dps;
pub mod error;
pub mod eval;
pub mod metrics;
pub mod operators;
pub mod pipeline;
pub mod plugin;
pub mod restore;
pub mod tiling;
pub mod train;
pub mod unet;
pub mod weights;
pub mod windows;

pub use device::parse_device;
pub use error::{EngineError, Result};
