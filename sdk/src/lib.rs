//! libdavi SDK: what hosts, plugins and engines share without linking libtorch.
//!
//! - [`spec`]: operator specifications (what degraded the image), parsed from TOML/JSON.
//! - [`status`]: the status enum of both C boundaries and the Rust error pairing it with a message.
//! - [`image`]: the C image descriptor, its validated views and the planar `f32` form.
//! - [`plugin`]: the plugin contract: entry symbol, versioned function table, constants.
//! - [`export`]: the Rust side of a plugin: [`RestorePlugin`] and [`davi_export_plugin!`].
//! - [`panic_boundary`]: [`panic_boundary::catch_panics`], the panic boundary of both C
//!   boundaries (the plugin trampolines and libdavi's exported functions).
//! - [`loader`] (feature `loader`, default): the host side: scan, check, pick, call.
//!
//! Plugins build as `cdylib` + `rlib`: the `cdylib` is what hosts load, the `rlib` lets tests
//! and static hosts register the same plugin in-process ([`loader::PluginRegistry::register`]).
pub mod export;
pub mod image;
#[cfg(feature = "loader")]
pub mod loader;
pub mod panic_boundary;
pub mod plugin;
pub mod spec;
pub mod status;

pub use export::{PluginInfo, PluginOptions, Progress, RestorePlugin};
pub use image::{
    AlphaPlane, AlphaSamples, DaviChannelLayout, DaviImage, DaviSampleType, ImageError,
    ImageFormat, ImageView, ImageViewMut, PlanarImage,
};
#[cfg(feature = "loader")]
pub use loader::{
    LoadError, LoadedPlugin, PluginDescription, PluginInstance, PluginOrigin, PluginRegistry,
};
pub use plugin::{DaviPluginApi, OperatorKind};
pub use spec::{OperatorSpec, SpecError};
pub use status::{DaviError, DaviStatus, DaviStatusCode};
