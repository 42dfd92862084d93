//! Writing a plugin in Rust: implement [`RestorePlugin`], then call
//! [`davi_export_plugin!`](crate::davi_export_plugin) once.
//!
//! ```
//! struct Identity;
//! impl davi_sdk::RestorePlugin for Identity {
//!     const INFO: davi_sdk::PluginInfo = davi_sdk::PluginInfo {
//!         id: c"identity",
//!         version: davi_sdk::cstr!(env!("CARGO_PKG_VERSION")),
//!         description: c"Returns its input (an example)",
//!         operator_kinds: davi_sdk::plugin::DAVI_OPERATOR_GAUSSIAN_BLUR,
//!         devices: davi_sdk::plugin::DAVI_DEVICE_CPU,
//!         flags: 0,
//!     };
//!     fn new(_: &davi_sdk::PluginOptions) -> Result<Self, davi_sdk::DaviError> { Ok(Identity) }
//!     fn restore(
//!         &mut self,
//!         spec: &davi_sdk::OperatorSpec,
//!         input: &davi_sdk::PlanarImage,
//!         progress: &mut davi_sdk::Progress<'_>,
//!     ) -> Result<davi_sdk::PlanarImage, davi_sdk::DaviError> {
//!         progress.update(1.0)?;
//!         Ok(input.clone())
//!     }
//! }
//! davi_sdk::davi_export_plugin!(Identity);
//! ```
//!
//! Why: every exported body must follow the same boundary rules (NULL checks before any
//! dereference, a panic boundary, outputs written only on success, error text copied into the
//! caller's buffer), and plugin authors should not write that by hand. The macro emits the
//! `#[no_mangle] extern "C" fn davi_plugin_entry` and a static [`DaviPluginApi`] whose function
//! pointers are the generic trampolines of this module; the trampolines parse and check the
//! spec and the buffers, then call the safe trait methods.
//!
//! Anchors: `rustls/rustls-ffi: librustls/src/panic.rs` (`ffi_panic_boundary!`: `catch_unwind`
//! around every body, panic mapped to a status) and `librustls/src/ffi.rs` (NULL checks via
//! `try_ref_from_ptr!`); the macro shape follows `gst::plugin_define!` in
//! `GStreamer/gst-plugins-rs`.
//!
//! One exporting crate per final binary: the entry is an ordinary `#[no_mangle]` symbol, so
//! linking the `rlib`s of two exporting plugins into one executable or library fails with a
//! duplicate `davi_plugin_entry` (verified with GNU ld). Hosts load the other plugins as
//! shared libraries, which is the point of the contract; tests register one plugin
//! in-process (`PluginRegistry::register`), which needs no symbol.
//!
//! Panics: every trampoline runs inside the panic boundary of [`crate::panic_boundary`], so a
//! library panic is reported as `DaviStatus::Panic` with its message.

use crate::image::PlanarImage;
use crate::panic_boundary::catch_panics;
use crate::plugin::{
    spec_output_size, DaviInstanceFreeFn, DaviInstanceNewFn, DaviOutputSizeFn, DaviPluginApi,
    DaviPluginInstance, DaviPluginOptions, DaviProgressFn, DaviRestoreFn, OperatorKind,
    DAVI_PLUGIN_ABI_MAJOR, DAVI_PLUGIN_ABI_MINOR,
};
use crate::status::{write_message, DaviError, DaviStatus, DaviStatusCode};
use crate::OperatorSpec;
use std::cell::Cell;
use std::ffi::{c_char, c_void, CStr};
use std::path::PathBuf;

/// What a plugin says about itself; becomes the static part of its table.
#[derive(Clone, Copy, Debug)]
pub struct PluginInfo {
    /// Stable identifier (`[a-z0-9_.-]+`), used by hosts to pick a plugin explicitly.
    pub id: &'static CStr,
    /// Version, usually `cstr!(env!("CARGO_PKG_VERSION"))`.
    pub version: &'static CStr,
    /// One line for `davi plugins`.
    pub description: &'static CStr,
    /// `DAVI_OPERATOR_*` bits.
    pub operator_kinds: u32,
    /// `DAVI_DEVICE_*` bits.
    pub devices: u32,
    /// `DAVI_PLUGIN_FLAG_*` bits.
    pub flags: u32,
}

impl PluginInfo {
    /// Whether the plugin claims an operator kind.
    pub fn supports(&self, kind: OperatorKind) -> bool {
        self.operator_kinds & kind.bit() != 0
    }
}

/// A `&'static CStr` from a string expression known at compile time, e.g.
/// `cstr!(env!("CARGO_PKG_VERSION"))`. Fails to compile if the string contains a NUL.
#[macro_export]
macro_rules! cstr {
    ($s:expr) => {{
        const S: &::std::ffi::CStr =
            match ::std::ffi::CStr::from_bytes_with_nul(concat!($s, "\0").as_bytes()) {
                Ok(s) => s,
                Err(_) => panic!("string contains a NUL byte"),
            };
        S
    }};
}

/// Instance options, decoded from [`DaviPluginOptions`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginOptions {
    /// A model file, or `None` for the plugin's default.
    pub model_path: Option<PathBuf>,
    /// `"auto"`, `"cpu"`, `"cuda"` or `"cuda:N"` (not validated here: plugins know their devices).
    pub device: String,
}

impl Default for PluginOptions {
    fn default() -> Self {
        PluginOptions {
            model_path: None,
            device: "auto".into(),
        }
    }
}

impl PluginOptions {
    /// Decode host options; NULL means the defaults.
    ///
    /// # Safety
    /// `p` must be NULL or point to `struct_size` readable bytes whose string fields are NULL
    /// or NUL-terminated.
    pub unsafe fn from_c(p: *const DaviPluginOptions) -> Result<Self, DaviError> {
        let mut opts = PluginOptions::default();
        if p.is_null() {
            return Ok(opts);
        }
        let size = std::ptr::read_unaligned(p.cast::<u32>());
        if size < DaviPluginOptions::V1_SIZE {
            return Err(DaviError::invalid_argument(format!(
                "options struct_size {size} is smaller than the ABI 1.0 options ({} bytes)",
                DaviPluginOptions::V1_SIZE
            )));
        }
        let o = std::ptr::read(p);
        if !o.model_path.is_null() {
            let bytes = CStr::from_ptr(o.model_path).to_bytes();
            if bytes.is_empty() {
                return Err(DaviError::invalid_argument(
                    "options.model_path is empty (use NULL for the default)",
                ));
            }
            opts.model_path = Some(path_from_bytes(bytes)?);
        }
        if !o.device.is_null() {
            opts.device = CStr::from_ptr(o.device)
                .to_str()
                .map_err(|_| DaviError::invalid_argument("options.device is not UTF-8"))?
                .to_string();
        }
        Ok(opts)
    }
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

/// Progress reporting and cancellation for one `restore` call.
///
/// Wraps the host's callback: [`Progress::update`] reports a fraction and returns
/// `Err(Cancelled)` once the host asked to stop, so plugins write `progress.update(f)?`.
/// [`Progress::scoped`] maps a sub-task onto part of the range.
pub struct Progress<'a> {
    report: Option<&'a mut dyn FnMut(f32) -> bool>,
    lo: f32,
    hi: f32,
    last: f32,
    cancelled: bool,
}

impl<'a> Progress<'a> {
    /// Report through `report`; it returns `true` to continue, `false` to cancel.
    pub fn new(report: &'a mut dyn FnMut(f32) -> bool) -> Self {
        Progress {
            report: Some(report),
            lo: 0.0,
            hi: 1.0,
            last: 0.0,
            cancelled: false,
        }
    }

    /// No reporting, never cancelled.
    pub fn none() -> Progress<'static> {
        Progress {
            report: None,
            lo: 0.0,
            hi: 1.0,
            last: 0.0,
            cancelled: false,
        }
    }

    /// Report that `fraction` (in `[0, 1]` of the current scope) is done. Fractions never go
    /// backwards. Returns `Err` with `DaviStatus::Cancelled` if the host asked to stop (now or
    /// before).
    pub fn update(&mut self, fraction: f32) -> Result<(), DaviError> {
        if self.cancelled {
            return Err(DaviError::cancelled());
        }
        let f = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        let global = (self.lo + (self.hi - self.lo) * f).max(self.last).min(1.0);
        self.last = global;
        if let Some(report) = self.report.as_mut() {
            if !report(global) {
                self.cancelled = true;
                return Err(DaviError::cancelled());
            }
        }
        Ok(())
    }

    /// Run `f` with `[0, 1]` mapped onto `[lo, hi]` of the current scope.
    pub fn scoped<R>(&mut self, lo: f32, hi: f32, f: impl FnOnce(&mut Self) -> R) -> R {
        let (old_lo, old_hi) = (self.lo, self.hi);
        let span = old_hi - old_lo;
        self.lo = old_lo + span * lo.clamp(0.0, 1.0);
        self.hi = old_lo + span * hi.clamp(lo.clamp(0.0, 1.0), 1.0);
        let r = f(self);
        self.lo = old_lo;
        self.hi = old_hi;
        r
    }

    /// Whether the host asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }
}

/// A restoration plugin, written in safe Rust. The SDK turns it into the C table.
///
/// The trampolines have already checked every pointer, parsed and validated the spec
/// (including against the image size), refused kinds missing from `INFO.operator_kinds`,
/// and checked the output buffer size when these methods run.
pub trait RestorePlugin: Sized + Send + 'static {
    /// Static description: id, version, kinds, devices, flags.
    const INFO: PluginInfo;

    /// [`RestorePlugin::INFO`], for callers that prefer a function.
    fn describe() -> PluginInfo {
        Self::INFO
    }

    /// Make an instance (load a model, pick a device). Called from any thread.
    fn new(options: &PluginOptions) -> Result<Self, DaviError>;

    /// Output size for an input size. The default follows [`spec_output_size`]; override only
    /// if the plugin changes sizes differently.
    fn output_size(
        &self,
        spec: &OperatorSpec,
        width: u32,
        height: u32,
    ) -> Result<(u32, u32), DaviError> {
        spec_output_size(spec, width, height).ok_or_else(|| {
            DaviError::invalid_argument(format!(
                "output size of a {width}x{height} input overflows"
            ))
        })
    }

    /// Restore `input` (planar, `[0, 1]`); return an image of [`RestorePlugin::output_size`]
    /// with the same number of channels. Call `progress.update(f)?` regularly.
    fn restore(
        &mut self,
        spec: &OperatorSpec,
        input: &PlanarImage,
        progress: &mut Progress<'_>,
    ) -> Result<PlanarImage, DaviError>;
}

/// A static [`DaviPluginApi`] (raw pointers are not `Sync`; the table is immutable and its
/// pointers are static, so sharing it is sound).
pub struct ExportedApi(DaviPluginApi);

// SAFETY: the table is never mutated; its pointers refer to static strings and functions.
unsafe impl Sync for ExportedApi {}

impl ExportedApi {
    /// The table of plugin `T`, evaluated at compile time.
    pub const fn new<T: RestorePlugin>() -> Self {
        ExportedApi(api_of::<T>())
    }

    /// The table.
    pub const fn api(&self) -> &DaviPluginApi {
        &self.0
    }
}

/// The table of plugin `T` (what the macro exports; what in-process registration uses).
pub const fn api_of<T: RestorePlugin>() -> DaviPluginApi {
    DaviPluginApi {
        struct_size: DaviPluginApi::V1_SIZE,
        abi_major: DAVI_PLUGIN_ABI_MAJOR,
        abi_minor: DAVI_PLUGIN_ABI_MINOR,
        id: T::INFO.id.as_ptr(),
        version: T::INFO.version.as_ptr(),
        description: T::INFO.description.as_ptr(),
        operator_kinds: T::INFO.operator_kinds,
        devices: T::INFO.devices,
        flags: T::INFO.flags,
        reserved: 0,
        instance_new: Some(instance_new::<T> as DaviInstanceNewFn),
        instance_free: Some(instance_free::<T> as DaviInstanceFreeFn),
        output_size: Some(output_size::<T> as DaviOutputSizeFn),
        restore: Some(restore::<T> as DaviRestoreFn),
    }
}

/// Body of the generated `davi_plugin_entry`: this plugin implements one major and returns its
/// table whatever the host asks for; the host compares `abi_major` and refuses on mismatch.
pub fn entry(api: &'static ExportedApi, _host_abi_major: u16) -> *const DaviPluginApi {
    &api.0
}

/// Export `$plugin` (a [`RestorePlugin`]) as this library's plugin: emits
/// `#[no_mangle] extern "C" fn davi_plugin_entry(u16) -> *const DaviPluginApi` returning a
/// static table. Use once per `cdylib`.
#[macro_export]
macro_rules! davi_export_plugin {
    ($plugin:ty) => {
        /// Plugin entry point: returns this library's static `DaviPluginApi` table
        /// (see `davi_sdk::plugin` for the contract).
        #[no_mangle]
        pub extern "C" fn davi_plugin_entry(
            host_abi_major: u16,
        ) -> *const $crate::plugin::DaviPluginApi {
            static DAVI_PLUGIN_API: $crate::export::ExportedApi =
                $crate::export::ExportedApi::new::<$plugin>();
            $crate::export::entry(&DAVI_PLUGIN_API, host_abi_major)
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Status boundary of the trampolines

/// Run `f` inside the panic boundary ([`catch_panics`]) and turn its outcome into a status
/// code, copying the message of a failure into `err_buf`.
///
/// # Safety
/// `err_buf` must be NULL or valid for writes of `err_len` bytes.
pub unsafe fn boundary(
    err_buf: *mut c_char,
    err_len: usize,
    f: impl FnOnce() -> Result<(), DaviError>,
) -> DaviStatusCode {
    let err = match catch_panics("plugin", f) {
        Ok(()) => return DaviStatus::Ok.code(),
        Err(e) => e,
    };
    write_message(err_buf, err_len, &err.message);
    err.status.code()
}

// ---------------------------------------------------------------------------------------------
// Trampolines

const INSTANCE_MAGIC: u64 = u64::from_le_bytes(*b"DAVIinst");

/// What a `DaviPluginInstance*` points to.
struct Instance<T> {
    magic: u64,
    plugin: T,
}

unsafe fn instance_ref<'a, T>(p: *const DaviPluginInstance) -> Result<&'a Instance<T>, DaviError> {
    if p.is_null() {
        return Err(DaviError::null_argument("instance"));
    }
    let inst = &*p.cast::<Instance<T>>();
    if inst.magic != INSTANCE_MAGIC {
        return Err(DaviError::invalid_argument(
            "`instance` is not a live instance of this plugin",
        ));
    }
    Ok(inst)
}

unsafe fn instance_mut<'a, T>(
    p: *mut DaviPluginInstance,
) -> Result<&'a mut Instance<T>, DaviError> {
    if p.is_null() {
        return Err(DaviError::null_argument("instance"));
    }
    let inst = &mut *p.cast::<Instance<T>>();
    if inst.magic != INSTANCE_MAGIC {
        return Err(DaviError::invalid_argument(
            "`instance` is not a live instance of this plugin",
        ));
    }
    Ok(inst)
}

/// Parse a NUL-terminated spec and check its kind against the plugin.
unsafe fn parse_spec<T: RestorePlugin>(text: *const c_char) -> Result<OperatorSpec, DaviError> {
    if text.is_null() {
        return Err(DaviError::null_argument("spec_text"));
    }
    let text = CStr::from_ptr(text)
        .to_str()
        .map_err(|e| DaviError::invalid_spec(format!("operator spec is not UTF-8: {e}")))?;
    let spec = OperatorSpec::parse(text)?;
    let kind = OperatorKind::of(&spec);
    if !T::INFO.supports(kind) {
        return Err(DaviError::unsupported_operator(format!(
            "plugin `{}` does not restore {kind}",
            T::INFO.id.to_string_lossy()
        )));
    }
    Ok(spec)
}

fn checked_size<T: RestorePlugin>(
    plugin: &T,
    spec: &OperatorSpec,
    w: u32,
    h: u32,
) -> Result<(u32, u32), DaviError> {
    if w == 0 || h == 0 {
        return Err(DaviError::invalid_argument(format!(
            "input size {w}x{h} is empty"
        )));
    }
    let (ow, oh) = plugin.output_size(spec, w, h)?;
    if ow == 0 || oh == 0 {
        return Err(DaviError::internal(format!(
            "plugin reported an empty output size {ow}x{oh}"
        )));
    }
    spec.validate_for_size(oh as usize, ow as usize)?;
    Ok((ow, oh))
}

unsafe extern "C" fn instance_new<T: RestorePlugin>(
    options: *const DaviPluginOptions,
    out: *mut *mut DaviPluginInstance,
    err_buf: *mut c_char,
    err_len: usize,
) -> DaviStatusCode {
    boundary(err_buf, err_len, || {
        if out.is_null() {
            return Err(DaviError::null_argument("out"));
        }
        let opts = PluginOptions::from_c(options)?;
        let plugin = T::new(&opts)?;
        let raw = Box::into_raw(Box::new(Instance {
            magic: INSTANCE_MAGIC,
            plugin,
        }));
        *out = raw.cast();
        Ok(())
    })
}

unsafe extern "C" fn instance_free<T: RestorePlugin>(instance: *mut DaviPluginInstance) {
    if instance.is_null() {
        return;
    }
    // A free has no status to return: a panic in a destructor is swallowed, never unwound.
    boundary(std::ptr::null_mut(), 0, || {
        let inst = instance_mut::<T>(instance)?;
        inst.magic = 0;
        drop(Box::from_raw(inst as *mut Instance<T>));
        Ok(())
    });
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn output_size<T: RestorePlugin>(
    instance: *const DaviPluginInstance,
    spec_text: *const c_char,
    in_width: u32,
    in_height: u32,
    out_width: *mut u32,
    out_height: *mut u32,
    err_buf: *mut c_char,
    err_len: usize,
) -> DaviStatusCode {
    boundary(err_buf, err_len, || {
        let inst = instance_ref::<T>(instance)?;
        if out_width.is_null() {
            return Err(DaviError::null_argument("out_width"));
        }
        if out_height.is_null() {
            return Err(DaviError::null_argument("out_height"));
        }
        let spec = parse_spec::<T>(spec_text)?;
        let (w, h) = checked_size(&inst.plugin, &spec, in_width, in_height)?;
        *out_width = w;
        *out_height = h;
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn restore<T: RestorePlugin>(
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
) -> DaviStatusCode {
    boundary(err_buf, err_len, || {
        let inst = instance_mut::<T>(instance)?;
        if input.is_null() {
            return Err(DaviError::null_argument("input"));
        }
        if output.is_null() {
            return Err(DaviError::null_argument("output"));
        }
        let spec = parse_spec::<T>(spec_text)?;
        if channels == 0 || channels > 4 {
            return Err(DaviError::invalid_argument(format!(
                "channels must be 1..=4, got {channels}"
            )));
        }
        let (ow, oh) = checked_size(&inst.plugin, &spec, width, height)?;
        let c = channels as usize;
        let mut image = PlanarImage::try_zeros(width as usize, height as usize, c)?;
        let need = PlanarImage::try_zeros(ow as usize, oh as usize, c).map(|p| p.data.len());
        let need = match need {
            Ok(n) => n,
            Err(e) => return Err(e.into()),
        };
        if output_len < need {
            return Err(DaviError::invalid_argument(format!(
                "output buffer holds {output_len} floats, a {ow}x{oh}x{c} result needs {need}"
            )));
        }
        let src = std::slice::from_raw_parts(input, image.data.len());
        if let Some(i) = src.iter().position(|v| !v.is_finite()) {
            return Err(DaviError::invalid_argument(format!(
                "input sample {i} is not finite"
            )));
        }
        image.data.copy_from_slice(src);

        let cancelled = Cell::new(false);
        let mut report = |fraction: f32| -> bool {
            match progress {
                None => true,
                Some(cb) => {
                    let go_on = cb(user_data, fraction) == 0;
                    if !go_on {
                        cancelled.set(true);
                    }
                    go_on
                }
            }
        };
        let mut prog = Progress::new(&mut report);
        let result = inst.plugin.restore(&spec, &image, &mut prog);
        if cancelled.get() {
            // The host asked to stop: report it even if the plugin finished anyway.
            return Err(DaviError::cancelled());
        }
        let result = result?;
        if (result.width, result.height, result.channels) != (ow as usize, oh as usize, c) {
            return Err(DaviError::internal(format!(
                "plugin returned a {}x{}x{} image, {ow}x{oh}x{c} was announced",
                result.width, result.height, result.channels
            )));
        }
        if result.data.len() != need {
            return Err(DaviError::internal(
                "plugin returned a malformed planar image",
            ));
        }
        if let Some(i) = result.data.iter().position(|v| !v.is_finite()) {
            return Err(DaviError::internal(format!(
                "plugin produced a non-finite sample at {i}"
            )));
        }
        std::ptr::copy_nonoverlapping(result.data.as_ptr(), output, need);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::*;
    use std::ptr::{null, null_mut};

    /// A test plugin: inverts denoising inputs, panics on request, supports two kinds.
    struct Invert {
        panic_on_restore: bool,
    }

    impl RestorePlugin for Invert {
        const INFO: PluginInfo = PluginInfo {
            id: c"invert",
            version: cstr!(env!("CARGO_PKG_VERSION")),
            description: c"test plugin",
            operator_kinds: DAVI_OPERATOR_DENOISING | DAVI_OPERATOR_SUPER_RESOLUTION,
            devices: DAVI_DEVICE_CPU,
            flags: 0,
        };
        fn new(options: &PluginOptions) -> Result<Self, DaviError> {
            if options.device == "cuda" {
                return Err(DaviError::new(DaviStatus::DeviceError, "no cuda here"));
            }
            Ok(Invert {
                panic_on_restore: options.device == "panic",
            })
        }
        fn restore(
            &mut self,
            spec: &OperatorSpec,
            input: &PlanarImage,
            progress: &mut Progress<'_>,
        ) -> Result<PlanarImage, DaviError> {
            if self.panic_on_restore {
                panic!("boom {}", 42);
            }
            for i in 0..4 {
                progress.update(i as f32 / 4.0)?;
            }
            let f = match spec {
                OperatorSpec::SuperResolution(s) => s.factor,
                _ => 1,
            };
            let mut out = PlanarImage::zeros(input.width * f, input.height * f, input.channels);
            for c in 0..input.channels {
                for y in 0..out.height {
                    for x in 0..out.width {
                        out.data[(c * out.height + y) * out.width + x] =
                            1.0 - input.get(c, y / f, x / f);
                    }
                }
            }
            Ok(out)
        }
    }

    const API: DaviPluginApi = api_of::<Invert>();

    fn new_instance(device: &CStr) -> (DaviStatusCode, *mut DaviPluginInstance, String) {
        let opts = DaviPluginOptions {
            struct_size: DaviPluginOptions::V1_SIZE,
            reserved: 0,
            model_path: null(),
            device: device.as_ptr(),
        };
        let mut inst = null_mut();
        let mut err = [0 as c_char; 128];
        let st =
            unsafe { API.instance_new.unwrap()(&opts, &mut inst, err.as_mut_ptr(), err.len()) };
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        (st, inst, msg)
    }

    struct Call {
        status: DaviStatus,
        message: String,
        output: Vec<f32>,
    }

    unsafe extern "C" fn cancel_at_half(user: *mut c_void, f: f32) -> i32 {
        let calls = &mut *user.cast::<Vec<f32>>();
        calls.push(f);
        (f >= 0.5) as i32
    }

    fn restore_call(
        inst: *mut DaviPluginInstance,
        spec: &CStr,
        input: &[f32],
        w: u32,
        h: u32,
        out_len: usize,
        cancel: bool,
    ) -> Call {
        let mut output = vec![-7.0f32; out_len];
        let mut err = [0x55 as c_char; 96];
        let mut calls: Vec<f32> = Vec::new();
        let cb: DaviProgressFn = if cancel { Some(cancel_at_half) } else { None };
        let st = unsafe {
            API.restore.unwrap()(
                inst,
                spec.as_ptr(),
                if input.is_empty() {
                    null()
                } else {
                    input.as_ptr()
                },
                w,
                h,
                3,
                output.as_mut_ptr(),
                out_len,
                cb,
                (&mut calls as *mut Vec<f32>).cast(),
                err.as_mut_ptr(),
                err.len(),
            )
        };
        let status = DaviStatus::from_code(st).unwrap();
        let message = if status.is_ok() {
            assert_eq!(err[0], 0x55, "err_buf written on success");
            String::new()
        } else {
            unsafe { CStr::from_ptr(err.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        };
        Call {
            status,
            message,
            output,
        }
    }

    #[test]
    fn table_describes_the_plugin() {
        assert_eq!(API.struct_size, DaviPluginApi::V1_SIZE);
        assert_eq!(
            (API.abi_major, API.abi_minor),
            (DAVI_PLUGIN_ABI_MAJOR, DAVI_PLUGIN_ABI_MINOR)
        );
        assert_eq!(unsafe { CStr::from_ptr(API.id) }, c"invert");
        assert_eq!(
            unsafe { CStr::from_ptr(API.version) }.to_str().unwrap(),
            env!("CARGO_PKG_VERSION")
        );
        assert!(Invert::describe().supports(OperatorKind::Denoising));
        assert!(!Invert::describe().supports(OperatorKind::Inpainting));
    }

    #[test]
    fn restore_succeeds_and_writes_only_the_output() {
        let (st, inst, _) = new_instance(c"cpu");
        assert_eq!(st, 0);
        let input: Vec<f32> = (0..2 * 2 * 3).map(|i| i as f32 / 12.0).collect();
        let c = restore_call(inst, c"kind = \"denoising\"", &input, 2, 2, 12, false);
        assert_eq!(c.status, DaviStatus::Ok, "{}", c.message);
        assert!(c
            .output
            .iter()
            .zip(&input)
            .all(|(o, i)| (o - (1.0 - i)).abs() < 1e-6));
        // Super-resolution: output_size enlarges, restore fills the bigger buffer.
        let (mut w, mut h) = (0u32, 0u32);
        let spec = c"{\"kind\": \"super_resolution\", \"factor\": 2}";
        let st = unsafe {
            API.output_size.unwrap()(inst, spec.as_ptr(), 2, 2, &mut w, &mut h, null_mut(), 0)
        };
        assert_eq!((st, w, h), (0, 4, 4));
        let c = restore_call(inst, spec, &input, 2, 2, 48, false);
        assert_eq!(c.status, DaviStatus::Ok, "{}", c.message);
        assert_eq!(c.output[5], 1.0 - input[0]);
        unsafe { API.instance_free.unwrap()(inst) };
    }

    #[test]
    fn bad_arguments_return_their_status_and_leave_outputs_untouched() {
        let (_, inst, _) = new_instance(c"cpu");
        let input = vec![0.5f32; 12];
        let untouched = |c: &Call| c.output.iter().all(|v| *v == -7.0);
        let c = restore_call(inst, c"kind = \"denoising\"", &[], 2, 2, 12, false);
        assert_eq!(c.status, DaviStatus::NullArgument);
        assert!(c.message.contains("input"), "{}", c.message);
        assert!(untouched(&c));
        let c = restore_call(null_mut(), c"kind = \"denoising\"", &input, 2, 2, 12, false);
        assert_eq!(c.status, DaviStatus::NullArgument);
        let c = restore_call(inst, c"kind = \"denoising\"", &input, 2, 2, 11, false);
        assert_eq!(c.status, DaviStatus::InvalidArgument);
        assert!(c.message.contains("needs 12"), "{}", c.message);
        assert!(untouched(&c));
        let c = restore_call(inst, c"kind = \"denoising\"", &input, 0, 2, 12, false);
        assert_eq!(c.status, DaviStatus::InvalidArgument);
        let c = restore_call(
            inst,
            c"kind = \"denoising\"\nsigma = 3",
            &input,
            2,
            2,
            12,
            false,
        );
        assert_eq!(c.status, DaviStatus::InvalidSpec);
        assert!(c.message.contains("sigma"), "{}", c.message);
        let c = restore_call(inst, c"kind = \"inpainting\"", &input, 2, 2, 12, false);
        assert_eq!(c.status, DaviStatus::UnsupportedOperator);
        assert!(untouched(&c));
        let c = restore_call(inst, c"kind = \"warp\"", &input, 2, 2, 12, false);
        assert_eq!(c.status, DaviStatus::InvalidSpec);
        let mut nan = input.clone();
        nan[3] = f32::NAN;
        let c = restore_call(inst, c"kind = \"denoising\"", &nan, 2, 2, 12, false);
        assert_eq!(c.status, DaviStatus::InvalidArgument);
        // NULL outputs of output_size and instance_new.
        let mut w = 0;
        let st = unsafe {
            API.output_size.unwrap()(
                inst,
                c"kind = \"denoising\"".as_ptr(),
                2,
                2,
                &mut w,
                null_mut(),
                null_mut(),
                0,
            )
        };
        assert_eq!(st, DaviStatus::NullArgument.code());
        assert_eq!(w, 0, "out_width written on failure");
        let st = unsafe { API.instance_new.unwrap()(null(), null_mut(), null_mut(), 0) };
        assert_eq!(st, DaviStatus::NullArgument.code());
        // A too-small options struct is refused before its fields are read.
        let small = DaviPluginOptions {
            struct_size: 4,
            reserved: 0,
            model_path: null(),
            device: null(),
        };
        let mut out = null_mut();
        let st = unsafe { API.instance_new.unwrap()(&small, &mut out, null_mut(), 0) };
        assert_eq!(st, DaviStatus::InvalidArgument.code());
        assert!(out.is_null());
        let (st, out, msg) = new_instance(c"cuda");
        assert_eq!(
            (st, out.is_null(), msg.as_str()),
            (DaviStatus::DeviceError.code(), true, "no cuda here")
        );
        unsafe { API.instance_free.unwrap()(inst) };
        unsafe { API.instance_free.unwrap()(null_mut()) };
    }

    #[test]
    fn cancel_stops_the_call_and_leaves_the_output_untouched() {
        let (_, inst, _) = new_instance(c"cpu");
        let input = vec![0.5f32; 12];
        let c = restore_call(inst, c"kind = \"denoising\"", &input, 2, 2, 12, true);
        assert_eq!(c.status, DaviStatus::Cancelled);
        assert!(c.output.iter().all(|v| *v == -7.0));
        unsafe { API.instance_free.unwrap()(inst) };
    }

    #[test]
    fn panics_become_a_status_with_their_message() {
        let (st, inst, _) = new_instance(c"panic");
        assert_eq!(st, 0);
        let input = vec![0.5f32; 12];
        let c = restore_call(inst, c"kind = \"denoising\"", &input, 2, 2, 12, false);
        assert_eq!(c.status, DaviStatus::Panic);
        assert_eq!(c.message, "plugin panicked: boom 42");
        assert!(c.output.iter().all(|v| *v == -7.0));
        // The instance is still usable afterwards (the panic did not cross the boundary).
        let c = restore_call(inst, c"kind = \"denoising\"", &input, 2, 2, 12, true);
        assert_eq!(c.status, DaviStatus::Panic);
        unsafe { API.instance_free.unwrap()(inst) };
    }

    #[test]
    fn progress_is_monotonic_and_scoped() {
        let mut seen = Vec::new();
        let mut report = |f: f32| {
            seen.push(f);
            true
        };
        let mut p = Progress::new(&mut report);
        p.scoped(0.5, 1.0, |p| {
            p.update(0.0).unwrap();
            p.update(0.5).unwrap();
        });
        p.update(0.2).unwrap();
        p.update(1.0).unwrap();
        assert_eq!(seen, vec![0.5, 0.75, 0.75, 1.0]);
        let mut stop = |_f: f32| false;
        let mut p = Progress::new(&mut stop);
        assert_eq!(p.update(0.1).unwrap_err().status, DaviStatus::Cancelled);
        assert!(p.is_cancelled());
        assert!(Progress::none().update(0.3).is_ok());
    }
}
