//! The plugin boundary: one exported entry symbol returning a versioned, append-only
//! `#[repr(C)]` function table.
//!
//! Why: restoration plugins (the DAVI engine, the classical baseline, future ones) are shared
//! libraries loaded at run time by Rust and C hosts alike, so the contract is plain C: no Rust
//! types, no allocator crossing the boundary, no unwinding. A host `dlopen`s the library, looks
//! up [`DAVI_PLUGIN_ENTRY_SYMBOL`], calls it with its ABI major and reads the
//! [`DaviPluginApi`] it returns: first the frozen 8-byte header (`struct_size`, `abi_major`,
//! `abi_minor`), and only if the major matches and `struct_size` covers the v1 table, the rest.
//!
//! Anchors: OpenFX `ofxCore.h` (`OfxGetPlugin` returns a struct of function pointers with an
//! API version) and ONNX Runtime `onnxruntime_c_api.h` (`OrtGetApiBase()->GetApi(ORT_API_VERSION)`,
//! an append-only table marked "End of Version N").
//!
//! In C the entry reads:
//!
//! ```c
//! const DaviPluginApi *davi_plugin_entry(uint16_t host_abi_major);
//! ```
//!
//! # Rules of the table
//! - **Versioning.** A change that breaks existing callers bumps [`DAVI_PLUGIN_ABI_MAJOR`];
//!   new fields are only ever appended, bump [`DAVI_PLUGIN_ABI_MINOR`] and grow `struct_size`.
//!   The 8-byte header is identical in every major, forever. A host reads a field only if
//!   `struct_size` covers it; a plugin reads a field of a host struct (options) only if that
//!   struct's `struct_size` covers it.
//! - **Lifetime.** The table, its strings and its function pointers are static: valid until the
//!   library is unloaded, which hosts never do (load once, never unload).
//! - **Threads.** The entry, the table and `instance_new` may be used from any thread at any
//!   time. An instance may move between threads, but calls on one instance must not overlap
//!   (the host serialises them); separate instances may run at the same time.
//! - **Errors.** Every function that can fail returns a [`DaviStatusCode`] (a `DaviStatus`
//!   value, `0` = success). On failure it writes a NUL-terminated UTF-8 message, truncated to
//!   fit, into `err_buf` (`err_len` bytes; NULL or 0 means "no message wanted") and leaves every
//!   other output untouched. On success `err_buf` is untouched. Plugins never unwind across the
//!   boundary: a panic is reported as `DaviStatus::Panic`.
//! - **Pointers.** Every pointer argument is checked; a NULL where one is required returns
//!   `DaviStatus::NullArgument` without dereferencing anything.

use crate::status::DaviStatusCode;
use crate::OperatorSpec;
use std::ffi::{c_char, c_void, CStr};
use std::mem::size_of;

/// Major version of this contract. Hosts refuse plugins with another major.
pub const DAVI_PLUGIN_ABI_MAJOR: u16 = 1;
/// Minor version: fields appended to the table since ABI `1.0`.
pub const DAVI_PLUGIN_ABI_MINOR: u16 = 0;
/// Name of the one symbol a plugin exports.
pub const DAVI_PLUGIN_ENTRY_SYMBOL: &CStr = c"davi_plugin_entry";

/// Type of the entry symbol.
///
/// `host_abi_major` is the major version the host implements. A plugin that implements that
/// major returns its table for it; otherwise it returns the table of the major it does
/// implement (whose header tells the host why it is refused) or NULL. The returned table is
/// static: never freed, valid for the life of the process. Callable from any thread.
pub type DaviPluginEntryFn = unsafe extern "C" fn(host_abi_major: u16) -> *const DaviPluginApi;

/// Bitmask of operator kinds (the `kind` of an operator spec) a plugin restores.
pub const DAVI_OPERATOR_GAUSSIAN_BLUR: u32 = 1 << 0;
pub const DAVI_OPERATOR_SUPER_RESOLUTION: u32 = 1 << 1;
pub const DAVI_OPERATOR_INPAINTING: u32 = 1 << 2;
pub const DAVI_OPERATOR_DENOISING: u32 = 1 << 3;
pub const DAVI_OPERATOR_COLORIZATION: u32 = 1 << 4;

/// Bitmask of devices a plugin can run on.
pub const DAVI_DEVICE_CPU: u32 = 1 << 0;
pub const DAVI_DEVICE_CUDA: u32 = 1 << 1;

/// Plugin flag: restores with a learned model (hosts prefer such plugins over classical ones
/// when both support an operator kind).
pub const DAVI_PLUGIN_FLAG_LEARNED: u32 = 1 << 0;

/// Opaque per-plugin state made by `instance_new`, freed by `instance_free`. Hosts never look
/// inside; plugins define what it points to.
#[repr(C)]
pub struct DaviPluginInstance {
    _private: [u8; 0],
}

/// Progress callback, called by `restore` on the thread that called `restore`, synchronously,
/// only while that `restore` call runs, with a `fraction` in `[0, 1]` that never decreases.
/// `user_data` is passed back untouched and must stay valid until `restore` returns. Return `0`
/// to continue, non-zero to cancel: `restore` then returns `DaviStatus::Cancelled` as soon as it
/// can and leaves the output buffer untouched. The callback must not call into the same
/// instance. May be NULL (no progress reported, no cancellation).
pub type DaviProgressFn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, fraction: f32) -> i32>;

/// Options for `instance_new`, owned by the host and read only during the call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DaviPluginOptions {
    /// `sizeof(DaviPluginOptions)` as the host compiled it; at least
    /// [`DaviPluginOptions::V1_SIZE`].
    pub struct_size: u32,
    /// Reserved, set to 0.
    pub reserved: u32,
    /// NUL-terminated UTF-8 path of a model file, or NULL for the plugin's default model.
    /// Plugins without models refuse a non-NULL path with `DaviStatus::InvalidArgument`.
    pub model_path: *const c_char,
    /// NUL-terminated device name: `"auto"`, `"cpu"`, `"cuda"` or `"cuda:N"`; NULL means `"auto"`.
    pub device: *const c_char,
}

impl DaviPluginOptions {
    /// Size of the ABI 1.0 options struct.
    pub const V1_SIZE: u32 = size_of::<DaviPluginOptions>() as u32;
}

/// Creates an instance. `options` may be NULL (defaults: the default model, device `"auto"`).
/// On success writes a non-NULL handle to `*out`, which the host frees with `instance_free`;
/// on failure `*out` is untouched. `out` must not be NULL.
pub type DaviInstanceNewFn = unsafe extern "C" fn(
    options: *const DaviPluginOptions,
    out: *mut *mut DaviPluginInstance,
    err_buf: *mut c_char,
    err_len: usize,
) -> DaviStatusCode;

/// Frees an instance and everything it owns. NULL is a no-op. The handle is invalid afterwards.
pub type DaviInstanceFreeFn = unsafe extern "C" fn(instance: *mut DaviPluginInstance);

/// Size of the image `restore` produces from an `in_width x in_height` input under the spec
/// (NUL-terminated TOML or JSON text): larger for super-resolution, the same otherwise.
/// Writes `*out_width` and `*out_height` on success only.
pub type DaviOutputSizeFn = unsafe extern "C" fn(
    instance: *const DaviPluginInstance,
    spec_text: *const c_char,
    in_width: u32,
    in_height: u32,
    out_width: *mut u32,
    out_height: *mut u32,
    err_buf: *mut c_char,
    err_len: usize,
) -> DaviStatusCode;

/// Restores one image.
///
/// - `spec_text`: NUL-terminated UTF-8 operator spec, TOML or JSON (`{` first means JSON).
/// - `input`: `width * height * channels` floats, planar (channel-major, rows top-down),
///   values in `[0, 1]`, read only during the call. `channels` is 3 (RGB) for every host in
///   ABI 1.0; plugins may also accept 1.
/// - `output`: host buffer of `output_len` floats (not bytes), written only on success with
///   `out_width * out_height * channels` planar floats in `[0, 1]`, the size `output_size`
///   reports; a smaller buffer is refused with `DaviStatus::InvalidArgument`. It must not
///   overlap `input`.
/// - `progress`, `user_data`: see [`DaviProgressFn`].
pub type DaviRestoreFn = unsafe extern "C" fn(
    instance: *mut DaviPluginInstance,
    spec_text: *const c_char,
    input: *const f32,
    width: u32,
    height: u32,
    channels: u32,
    output: *mut f32,
    output_len: usize,
    progress: DaviProgressFn,
    user_data: *mut c_void,
    err_buf: *mut c_char,
    err_len: usize,
) -> DaviStatusCode;

/// The first 8 bytes of every table of every ABI major: all a host may read before checking.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DaviPluginApiHeader {
    pub struct_size: u32,
    pub abi_major: u16,
    pub abi_minor: u16,
}

/// The plugin function table, ABI 1.0. Static in the plugin; the host only reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DaviPluginApi {
    // ---- Header: identical in every ABI major. ----
    /// `sizeof(DaviPluginApi)` as the plugin compiled it.
    pub struct_size: u32,
    /// [`DAVI_PLUGIN_ABI_MAJOR`] of the plugin.
    pub abi_major: u16,
    /// [`DAVI_PLUGIN_ABI_MINOR`] of the plugin.
    pub abi_minor: u16,
    // ---- ABI 1.0 ----
    /// Stable identifier, NUL-terminated ASCII (`[a-z0-9_.-]+`), e.g. `"classical"`. Static.
    pub id: *const c_char,
    /// Plugin version, NUL-terminated (semver). Static.
    pub version: *const c_char,
    /// One-line human description, NUL-terminated UTF-8. Static.
    pub description: *const c_char,
    /// `DAVI_OPERATOR_*` bits the plugin restores.
    pub operator_kinds: u32,
    /// `DAVI_DEVICE_*` bits the plugin can run on.
    pub devices: u32,
    /// `DAVI_PLUGIN_FLAG_*` bits.
    pub flags: u32,
    /// Reserved, 0.
    pub reserved: u32,
    pub instance_new: Option<DaviInstanceNewFn>,
    pub instance_free: Option<DaviInstanceFreeFn>,
    pub output_size: Option<DaviOutputSizeFn>,
    pub restore: Option<DaviRestoreFn>,
    // ---- End of ABI 1.0: append new fields below, bump the minor. ----
}

impl DaviPluginApi {
    /// Size of the ABI 1.0 table; a plugin whose `struct_size` is smaller is refused.
    pub const V1_SIZE: u32 = size_of::<DaviPluginApi>() as u32;
}

/// An operator kind, as named by a spec's `kind` and as a bit of `operator_kinds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OperatorKind {
    GaussianBlur,
    SuperResolution,
    Inpainting,
    Denoising,
    Colorization,
}

impl OperatorKind {
    pub const ALL: [OperatorKind; 5] = [
        OperatorKind::GaussianBlur,
        OperatorKind::SuperResolution,
        OperatorKind::Inpainting,
        OperatorKind::Denoising,
        OperatorKind::Colorization,
    ];

    /// The `DAVI_OPERATOR_*` bit.
    pub const fn bit(self) -> u32 {
        match self {
            OperatorKind::GaussianBlur => DAVI_OPERATOR_GAUSSIAN_BLUR,
            OperatorKind::SuperResolution => DAVI_OPERATOR_SUPER_RESOLUTION,
            OperatorKind::Inpainting => DAVI_OPERATOR_INPAINTING,
            OperatorKind::Denoising => DAVI_OPERATOR_DENOISING,
            OperatorKind::Colorization => DAVI_OPERATOR_COLORIZATION,
        }
    }

    /// The spec's `kind` string.
    pub const fn name(self) -> &'static str {
        match self {
            OperatorKind::GaussianBlur => "gaussian_blur",
            OperatorKind::SuperResolution => "super_resolution",
            OperatorKind::Inpainting => "inpainting",
            OperatorKind::Denoising => "denoising",
            OperatorKind::Colorization => "colorization",
        }
    }

    /// Parse a spec `kind` string.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kind of a spec.
    pub fn of(spec: &OperatorSpec) -> Self {
        match spec {
            OperatorSpec::GaussianBlur(_) => OperatorKind::GaussianBlur,
            OperatorSpec::SuperResolution(_) => OperatorKind::SuperResolution,
            OperatorSpec::Inpainting(_) => OperatorKind::Inpainting,
            OperatorSpec::Denoising(_) => OperatorKind::Denoising,
            OperatorSpec::Colorization(_) => OperatorKind::Colorization,
        }
    }

    /// The kinds whose bits are set in a mask (unknown bits are ignored).
    pub fn in_mask(mask: u32) -> Vec<OperatorKind> {
        Self::ALL
            .into_iter()
            .filter(|k| mask & k.bit() != 0)
            .collect()
    }
}

impl std::fmt::Display for OperatorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The output size of an operator on an `width x height` input, the same rule for every
/// plugin and host: super-resolution multiplies by its factor, other kinds keep the size.
/// `None` if the result does not fit in `u32`.
pub fn spec_output_size(spec: &OperatorSpec, width: u32, height: u32) -> Option<(u32, u32)> {
    match spec {
        OperatorSpec::SuperResolution(s) => {
            let f = u32::try_from(s.factor).ok()?;
            Some((width.checked_mul(f)?, height.checked_mul(f)?))
        }
        _ => Some((width, height)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    /// The v1 layout is a published ABI: these numbers may never change.
    #[test]
    fn v1_table_layout_is_pinned() {
        let p = size_of::<*const c_char>();
        assert_eq!(size_of::<DaviPluginApiHeader>(), 8);
        assert_eq!(offset_of!(DaviPluginApi, struct_size), 0);
        assert_eq!(offset_of!(DaviPluginApi, abi_major), 4);
        assert_eq!(offset_of!(DaviPluginApi, abi_minor), 6);
        assert_eq!(offset_of!(DaviPluginApi, id), 8);
        assert_eq!(offset_of!(DaviPluginApi, version), 8 + p);
        assert_eq!(offset_of!(DaviPluginApi, description), 8 + 2 * p);
        assert_eq!(offset_of!(DaviPluginApi, operator_kinds), 8 + 3 * p);
        assert_eq!(offset_of!(DaviPluginApi, devices), 12 + 3 * p);
        assert_eq!(offset_of!(DaviPluginApi, flags), 16 + 3 * p);
        assert_eq!(offset_of!(DaviPluginApi, reserved), 20 + 3 * p);
        assert_eq!(offset_of!(DaviPluginApi, instance_new), 24 + 3 * p);
        assert_eq!(offset_of!(DaviPluginApi, instance_free), 24 + 4 * p);
        assert_eq!(offset_of!(DaviPluginApi, output_size), 24 + 5 * p);
        assert_eq!(offset_of!(DaviPluginApi, restore), 24 + 6 * p);
        assert_eq!(DaviPluginApi::V1_SIZE as usize, 24 + 7 * p);
        if p == 8 {
            assert_eq!(DaviPluginApi::V1_SIZE, 80);
        }
        assert_eq!(offset_of!(DaviPluginOptions, model_path), 8);
        assert_eq!(offset_of!(DaviPluginOptions, device), 8 + p);
        assert_eq!(DaviPluginOptions::V1_SIZE as usize, 8 + 2 * p);
        assert_eq!(size_of::<Option<DaviRestoreFn>>(), p);
        assert_eq!(DAVI_PLUGIN_ENTRY_SYMBOL.to_bytes(), b"davi_plugin_entry");
    }

    #[test]
    fn kinds_and_output_sizes() {
        let mut seen = 0;
        for k in OperatorKind::ALL {
            assert_eq!(seen & k.bit(), 0);
            seen |= k.bit();
            assert_eq!(OperatorKind::from_name(k.name()), Some(k));
            let spec = OperatorSpec::for_task(k.name()).unwrap();
            assert_eq!(OperatorKind::of(&spec), k);
        }
        assert_eq!(OperatorKind::in_mask(0b10110 | 1 << 31).len(), 3);
        let sr = OperatorSpec::for_task("sr4").unwrap();
        assert_eq!(spec_output_size(&sr, 16, 8), Some((64, 32)));
        assert_eq!(spec_output_size(&sr, u32::MAX, 8), None);
        let dn = OperatorSpec::for_task("denoise").unwrap();
        assert_eq!(spec_output_size(&dn, 16, 8), Some((16, 8)));
    }
}
