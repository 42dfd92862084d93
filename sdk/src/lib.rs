//! libdavi SDK: what hosts, plugins and engines share without linking libtorch.
//!
//! - [`spec`]: operator specifications (what degraded the image), parsed from TOML/JSON.
pub mod spec;

pub use spec::{
    BlurMode, Colorization, Denoising, DownsampleMethod, GaussianBlur, Inpainting, OperatorSpec, Rect,
    SpecError, SuperResolution,
};
