//! Host side of the plugin boundary: find plugin libraries, check them before use, pick one for
//! an operator, and call it through safe wrappers.
//!
//! Why: hosts (the `davi` CLI, `libdavi.so`, tests) must never call into a library whose table
//! they have not checked, and users must learn exactly why a file in their plugin directory
//! was ignored. [`PluginRegistry::load`] checks, in this order and before touching anything it
//! has not yet validated: the ELF header (a shared object, of this machine's class, byte order
//! and architecture), that `dlopen` succeeds, that [`DAVI_PLUGIN_ENTRY_SYMBOL`] exists, that
//! the entry returns a table, the table's 8-byte header (`abi_major` equal to ours, then
//! `struct_size` at least the ABI 1.0 size), and finally the v1 fields (strings present, no
//! NULL function pointer). Every refusal is a [`LoadError`] naming the reason.
//!
//! Load once, never unload: a library is opened with `RTLD_NOW | RTLD_LOCAL` (plus
//! `RTLD_NODELETE` on Linux) and its handle is leaked on purpose, so function pointers taken
//! from it stay valid for the life of the process and no thread-local destructor can outlive
//! its code (unloading a Rust library after one of its thread-locals registered a destructor
//! leaves that destructor pointing into unmapped code; rust-lang/rust#88737). Refused libraries
//! stay mapped as well; their count is bounded by the files scanned.
//!
//! Anchors: `nagisa/rust_libloading` (`os::unix::Library::open` with explicit flags) and the
//! OpenFX host loader (`OfxGetNumberOfPlugins` → `OfxGetPlugin` → check `pluginApiVersion`).
//!
//! Why not `abi_stable`: its prefix types and `#[derive(StableAbi)]` layout checks only exist
//! between Rust crates that both link `abi_stable`; GIMP, OpenFX hosts and C/C++ applications
//! need a plain C table anyway, and a C plugin could not carry abi_stable's type layout
//! metadata. The check it would add for Rust hosts (layout of the root module) is the same
//! check `struct_size` + `abi_major` + the pinned-layout tests of [`crate::plugin`] already
//! give every host, C included. It is also unmaintained since 2023. So it is not used.

use crate::export::{api_of, PluginOptions, RestorePlugin};
use crate::image::{ImageView, ImageViewMut, PlanarImage};
use crate::plugin::{
    DaviInstanceFreeFn, DaviInstanceNewFn, DaviOutputSizeFn, DaviPluginApi, DaviPluginApiHeader,
    DaviPluginEntryFn, DaviPluginInstance, DaviPluginOptions, DaviRestoreFn, OperatorKind,
    DAVI_DEVICE_CPU, DAVI_DEVICE_CUDA, DAVI_PLUGIN_ABI_MAJOR, DAVI_PLUGIN_ABI_MINOR,
    DAVI_PLUGIN_ENTRY_SYMBOL, DAVI_PLUGIN_FLAG_LEARNED,
};
use crate::status::{DaviError, DaviStatus, DaviStatusCode};
use crate::OperatorSpec;
use std::any::Any;
use std::ffi::{c_char, c_void, CStr, CString};
use std::fmt;
use std::mem::{size_of, MaybeUninit};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

/// Why a file or table was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a shared library: {0}")]
    NotSharedLibrary(String),
    #[error("wrong architecture: the file is built for {found}, this host is {expected}")]
    WrongArchitecture { found: String, expected: String },
    #[error("the dynamic loader refused it: {0}")]
    Open(String),
    #[error("not a libdavi plugin: missing entry symbol `davi_plugin_entry` ({0})")]
    MissingEntry(String),
    #[error("`davi_plugin_entry` returned NULL (the plugin refused ABI major {host_major})")]
    NullTable { host_major: u16 },
    #[error(
        "wrong ABI: the plugin implements ABI {plugin_major}.{plugin_minor}, this host ABI \
        {host_major}.{host_minor}"
    )]
    AbiMismatch {
        plugin_major: u16,
        plugin_minor: u16,
        host_major: u16,
        host_minor: u16,
    },
    #[error("truncated table: struct_size is {got} bytes, ABI {major}.0 needs at least {need}")]
    TruncatedTable { got: u32, need: u32, major: u16 },
    #[error("invalid table: {0}")]
    InvalidTable(String),
    #[error("duplicate plugin id `{id}` (already provided by {first})")]
    DuplicateId { id: String, first: String },
}

impl LoadError {
    /// The status a C host reports for this refusal.
    pub fn status(&self) -> DaviStatus {
        match self {
            LoadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                DaviStatus::NotFound
            }
            LoadError::Io { .. } => DaviStatus::Internal,
            LoadError::WrongArchitecture { .. }
            | LoadError::AbiMismatch { .. }
            | LoadError::TruncatedTable { .. } => DaviStatus::AbiMismatch,
            _ => DaviStatus::InvalidArgument,
        }
    }
}

impl From<LoadError> for DaviError {
    fn from(e: LoadError) -> Self {
        DaviError::new(e.status(), e.to_string())
    }
}

/// A file a scan did not load, and why.
#[derive(Debug)]
pub struct Refusal {
    pub path: PathBuf,
    pub error: LoadError,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.error)
    }
}

/// Where a plugin came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginOrigin {
    /// A shared library loaded from this file.
    File(PathBuf),
    /// Linked into the host and registered in-process.
    InProcess,
}

impl fmt::Display for PluginOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginOrigin::File(p) => write!(f, "{}", p.display()),
            PluginOrigin::InProcess => f.write_str("(in-process)"),
        }
    }
}

/// A plugin's self-description, copied out of its table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginDescription {
    pub id: String,
    pub version: String,
    pub description: String,
    pub abi_major: u16,
    pub abi_minor: u16,
    /// `DAVI_OPERATOR_*` bits.
    pub operator_kinds: u32,
    /// `DAVI_DEVICE_*` bits.
    pub devices: u32,
    /// `DAVI_PLUGIN_FLAG_*` bits.
    pub flags: u32,
}

impl PluginDescription {
    pub fn supports(&self, kind: OperatorKind) -> bool {
        self.operator_kinds & kind.bit() != 0
    }
    pub fn kinds(&self) -> Vec<OperatorKind> {
        OperatorKind::in_mask(self.operator_kinds)
    }
    /// Whether it restores with a learned model.
    pub fn is_learned(&self) -> bool {
        self.flags & DAVI_PLUGIN_FLAG_LEARNED != 0
    }
    /// Device names (`cpu`, `cuda`).
    pub fn device_names(&self) -> Vec<&'static str> {
        [(DAVI_DEVICE_CPU, "cpu"), (DAVI_DEVICE_CUDA, "cuda")]
            .into_iter()
            .filter(|(bit, _)| self.devices & bit != 0)
            .map(|(_, n)| n)
            .collect()
    }
}

/// The validated function pointers of a table (never NULL).
#[derive(Clone, Copy, Debug)]
struct PluginFns {
    instance_new: DaviInstanceNewFn,
    instance_free: DaviInstanceFreeFn,
    output_size: DaviOutputSizeFn,
    restore: DaviRestoreFn,
}

/// A plugin whose table passed every check. Cheap to clone; shareable between threads (the
/// contract lets `instance_new` run on any thread).
#[derive(Clone, Debug)]
pub struct LoadedPlugin {
    desc: PluginDescription,
    origin: PluginOrigin,
    fns: PluginFns,
}

/// Copy the table at `table` after checking, in order: non-NULL, header, v1 size, fields.
///
/// # Safety
/// `table` must be NULL or point to a readable 8-byte header followed by `struct_size` bytes,
/// whose string fields are NULL or NUL-terminated, and whose function pointers follow the
/// contract. The memory must outlive the process (plugins are never unloaded).
unsafe fn read_table(
    table: *const DaviPluginApi,
    origin: PluginOrigin,
) -> Result<LoadedPlugin, LoadError> {
    if table.is_null() {
        return Err(LoadError::NullTable {
            host_major: DAVI_PLUGIN_ABI_MAJOR,
        });
    }
    let header = std::ptr::read_unaligned(table.cast::<DaviPluginApiHeader>());
    if header.abi_major != DAVI_PLUGIN_ABI_MAJOR {
        return Err(LoadError::AbiMismatch {
            plugin_major: header.abi_major,
            plugin_minor: header.abi_minor,
            host_major: DAVI_PLUGIN_ABI_MAJOR,
            host_minor: DAVI_PLUGIN_ABI_MINOR,
        });
    }
    if header.struct_size < DaviPluginApi::V1_SIZE {
        return Err(LoadError::TruncatedTable {
            got: header.struct_size,
            need: DaviPluginApi::V1_SIZE,
            major: DAVI_PLUGIN_ABI_MAJOR,
        });
    }
    // Copy only what both sides know: an older plugin's table may be shorter than ours (fields
    // it lacks stay zero, i.e. NULL), a newer plugin's longer (extra fields are not read).
    let mut api = MaybeUninit::<DaviPluginApi>::zeroed();
    let n = (header.struct_size as usize).min(size_of::<DaviPluginApi>());
    std::ptr::copy_nonoverlapping(table.cast::<u8>(), api.as_mut_ptr().cast::<u8>(), n);
    // SAFETY: every field is an integer, a raw pointer or an `Option<fn>`: all-zero is valid.
    let api = api.assume_init();

    let text = |p: *const c_char, name: &str| -> Result<String, LoadError> {
        if p.is_null() {
            return Err(LoadError::InvalidTable(format!("`{name}` is NULL")));
        }
        CStr::from_ptr(p)
            .to_str()
            .map(str::to_string)
            .map_err(|_| LoadError::InvalidTable(format!("`{name}` is not UTF-8")))
    };
    let id = text(api.id, "id")?;
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
    {
        return Err(LoadError::InvalidTable(format!(
            "id `{id}` is not of the form [a-z0-9_.-]+"
        )));
    }
    let desc = PluginDescription {
        version: text(api.version, "version")?,
        description: text(api.description, "description")?,
        id,
        abi_major: header.abi_major,
        abi_minor: header.abi_minor,
        operator_kinds: api.operator_kinds,
        devices: api.devices,
        flags: api.flags,
    };
    let missing = |name: &str| LoadError::InvalidTable(format!("function `{name}` is NULL"));
    let fns = PluginFns {
        instance_new: api.instance_new.ok_or_else(|| missing("instance_new"))?,
        instance_free: api.instance_free.ok_or_else(|| missing("instance_free"))?,
        output_size: api.output_size.ok_or_else(|| missing("output_size"))?,
        restore: api.restore.ok_or_else(|| missing("restore"))?,
    };
    Ok(LoadedPlugin { desc, origin, fns })
}

/// Turn a returned status code and the error buffer into a result.
fn decode(code: DaviStatusCode, err: &[c_char], plugin: &str) -> Result<(), DaviError> {
    let status = match DaviStatus::from_code(code) {
        Some(DaviStatus::Ok) => return Ok(()),
        Some(s) => s,
        None => {
            return Err(DaviError::internal(format!(
                "plugin `{plugin}` returned unknown status {code}"
            )));
        }
    };
    // The buffer was zeroed before the call, so it is NUL-terminated even if left untouched.
    let bytes: Vec<u8> = err
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    let message = String::from_utf8_lossy(&bytes);
    let message = if message.is_empty() {
        status.as_str().to_string()
    } else {
        message.into_owned()
    };
    Err(DaviError::new(status, message))
}

/// Size of the error buffer hosts pass to plugins.
const ERR_LEN: usize = 1024;

impl LoadedPlugin {
    /// Register plugin `T` linked into this process: the same table and trampolines the
    /// plugin's `cdylib` exports, without `dlopen`.
    pub fn in_process<T: RestorePlugin>() -> Result<Self, LoadError> {
        let api = api_of::<T>();
        // SAFETY: the table is ours, complete and static.
        unsafe { read_table(&api, PluginOrigin::InProcess) }
    }

    /// Check the table returned by an entry function linked into this process (a C plugin
    /// linked statically, or a test fixture).
    ///
    /// # Safety
    /// `entry` must follow the contract of [`DaviPluginEntryFn`].
    pub unsafe fn from_entry(
        entry: DaviPluginEntryFn,
        origin: PluginOrigin,
    ) -> Result<Self, LoadError> {
        read_table(entry(DAVI_PLUGIN_ABI_MAJOR), origin)
    }

    /// Open, check and describe the plugin library at `path` (see the module docs for the
    /// order of checks). The library is never unloaded.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        check_object_file(path)?;
        let lib = open_library(path)?;
        // SAFETY: the symbol's type is fixed by the contract; the library is never unloaded,
        // so the copied function pointer stays valid.
        let entry: DaviPluginEntryFn = unsafe {
            let sym = lib
                .get::<DaviPluginEntryFn>(DAVI_PLUGIN_ENTRY_SYMBOL)
                .map_err(|e| LoadError::MissingEntry(e.to_string()))?;
            *sym
        };
        // SAFETY: a library exporting the entry symbol promises the contract; the header is
        // checked before anything else is read.
        unsafe { Self::from_entry(entry, PluginOrigin::File(path.to_path_buf())) }
    }

    pub fn describe(&self) -> &PluginDescription {
        &self.desc
    }
    pub fn id(&self) -> &str {
        &self.desc.id
    }
    pub fn origin(&self) -> &PluginOrigin {
        &self.origin
    }

    /// Create an instance (loads the model, picks the device).
    pub fn new_instance(&self, options: &PluginOptions) -> Result<PluginInstance, DaviError> {
        let model = match &options.model_path {
            Some(p) => Some(path_to_cstring(p)?),
            None => None,
        };
        let device = CString::new(options.device.as_str())
            .map_err(|_| DaviError::invalid_argument("device name contains a NUL byte"))?;
        let opts = DaviPluginOptions {
            struct_size: DaviPluginOptions::V1_SIZE,
            reserved: 0,
            model_path: model.as_ref().map_or(std::ptr::null(), |m| m.as_ptr()),
            device: device.as_ptr(),
        };
        let mut raw: *mut DaviPluginInstance = std::ptr::null_mut();
        let mut err = [0 as c_char; ERR_LEN];
        // SAFETY: all pointers are valid for the call; the plugin's table was checked.
        let code = unsafe { (self.fns.instance_new)(&opts, &mut raw, err.as_mut_ptr(), err.len()) };
        decode(code, &err, &self.desc.id)?;
        let raw = NonNull::new(raw).ok_or_else(|| {
            DaviError::internal(format!(
                "plugin `{}` reported success but returned a NULL instance",
                self.desc.id
            ))
        })?;
        Ok(PluginInstance {
            fns: self.fns,
            raw,
            id: self.desc.id.clone(),
        })
    }
}

#[cfg(unix)]
fn path_to_cstring(p: &Path) -> Result<CString, DaviError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| DaviError::invalid_argument("model path contains a NUL byte"))
}

#[cfg(not(unix))]
fn path_to_cstring(p: &Path) -> Result<CString, DaviError> {
    let s = p
        .to_str()
        .ok_or_else(|| DaviError::invalid_argument("model path is not UTF-8"))?;
    CString::new(s).map_err(|_| DaviError::invalid_argument("model path contains a NUL byte"))
}

/// One plugin instance, owned by the host; freed on drop. It may move between threads, but
/// is not `Sync`: the contract forbids overlapping calls on one instance.
#[derive(Debug)]
pub struct PluginInstance {
    fns: PluginFns,
    raw: NonNull<DaviPluginInstance>,
    id: String,
}

// SAFETY: the contract lets an instance move between threads as long as calls do not overlap,
// which `&mut self`/no-`Sync` enforce.
unsafe impl Send for PluginInstance {}

impl Drop for PluginInstance {
    fn drop(&mut self) {
        // SAFETY: `raw` came from this plugin's `instance_new` and is freed exactly once.
        unsafe { (self.fns.instance_free)(self.raw.as_ptr()) }
    }
}

/// What the progress trampoline points to.
struct ProgressCtx<'a> {
    report: &'a mut dyn FnMut(f32) -> bool,
    panic: Option<Box<dyn Any + Send>>,
}

unsafe extern "C" fn progress_trampoline(user_data: *mut c_void, fraction: f32) -> i32 {
    // SAFETY: `user_data` is the `ProgressCtx` of the `restore` call running on this thread.
    let ctx = &mut *user_data.cast::<ProgressCtx<'_>>();
    if ctx.panic.is_some() {
        return 1;
    }
    match catch_unwind(AssertUnwindSafe(|| (ctx.report)(fraction))) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(payload) => {
            // Cancel, and re-raise the host's panic once the plugin has returned.
            ctx.panic = Some(payload);
            1
        }
    }
}

impl PluginInstance {
    /// The id of the plugin this instance belongs to.
    pub fn plugin_id(&self) -> &str {
        &self.id
    }

    /// Output size of a `width x height` input under `spec_text` (TOML or JSON).
    pub fn output_size(
        &self,
        spec_text: &str,
        width: u32,
        height: u32,
    ) -> Result<(u32, u32), DaviError> {
        let spec = spec_cstring(spec_text)?;
        let (mut w, mut h) = (0u32, 0u32);
        let mut err = [0 as c_char; ERR_LEN];
        // SAFETY: valid pointers for the duration of the call.
        let code = unsafe {
            (self.fns.output_size)(
                self.raw.as_ptr(),
                spec.as_ptr(),
                width,
                height,
                &mut w,
                &mut h,
                err.as_mut_ptr(),
                ERR_LEN,
            )
        };
        decode(code, &err, &self.id)?;
        Ok((w, h))
    }

    /// Restore a planar image. `progress` gets fractions in `[0, 1]` on this thread and
    /// returns `false` to cancel; if it panics, the call is cancelled and the panic resumes
    /// here after the plugin returned.
    pub fn restore(
        &mut self,
        spec_text: &str,
        input: &PlanarImage,
        mut progress: impl FnMut(f32) -> bool,
    ) -> Result<PlanarImage, DaviError> {
        let dim = |v: usize, what: &str| {
            u32::try_from(v).map_err(|_| {
                DaviError::invalid_argument(format!("{what} {v} does not fit in 32 bits"))
            })
        };
        let (w, h, c) = (
            dim(input.width, "width")?,
            dim(input.height, "height")?,
            dim(input.channels, "channels")?,
        );
        if input.data.len() != input.width * input.height * input.channels {
            return Err(DaviError::invalid_argument(
                "planar image data does not match its size",
            ));
        }
        let (ow, oh) = self.output_size(spec_text, w, h)?;
        let mut out = PlanarImage::try_zeros(ow as usize, oh as usize, input.channels)?;
        let spec = spec_cstring(spec_text)?;
        let mut ctx = ProgressCtx {
            report: &mut progress,
            panic: None,
        };
        let mut err = [0 as c_char; ERR_LEN];
        // SAFETY: valid pointers and lengths for the duration of the call; `ctx` outlives it.
        let code = unsafe {
            (self.fns.restore)(
                self.raw.as_ptr(),
                spec.as_ptr(),
                input.data.as_ptr(),
                w,
                h,
                c,
                out.data.as_mut_ptr(),
                out.data.len(),
                Some(progress_trampoline),
                (&mut ctx as *mut ProgressCtx<'_>).cast(),
                err.as_mut_ptr(),
                ERR_LEN,
            )
        };
        if let Some(payload) = ctx.panic.take() {
            resume_unwind(payload);
        }
        decode(code, &err, &self.id)?;
        Ok(out)
    }

    /// [`PluginInstance::restore`] with a parsed spec.
    pub fn restore_spec(
        &mut self,
        spec: &OperatorSpec,
        input: &PlanarImage,
        progress: impl FnMut(f32) -> bool,
    ) -> Result<PlanarImage, DaviError> {
        self.restore(&spec.to_toml(), input, progress)
    }

    /// Restore interleaved pixels of any supported format into `output`, whose size must be
    /// [`PluginInstance::output_size`] of the input. Colour goes through the plugin as planar
    /// RGB; alpha is carried through untouched (resampled bilinearly if the size changes).
    /// `output` is written only on success.
    pub fn restore_view(
        &mut self,
        spec_text: &str,
        input: &ImageView<'_>,
        output: &mut ImageViewMut<'_>,
        progress: impl FnMut(f32) -> bool,
    ) -> Result<(), DaviError> {
        let dim =
            |v: usize| u32::try_from(v).map_err(|_| DaviError::invalid_argument("image too large"));
        let (ow, oh) = self.output_size(spec_text, dim(input.width())?, dim(input.height())?)?;
        if (output.width(), output.height()) != (ow as usize, oh as usize) {
            return Err(DaviError::invalid_argument(format!(
                "output image is {}x{}, the operator produces {ow}x{oh}",
                output.width(),
                output.height()
            )));
        }
        let (rgb, alpha) = input.to_planar_rgb()?;
        let restored = self.restore(spec_text, &rgb, progress)?;
        let alpha = alpha.map(|a| a.resized(ow as usize, oh as usize));
        output.write_planar(&restored, alpha.as_ref())?;
        Ok(())
    }
}

fn spec_cstring(text: &str) -> Result<CString, DaviError> {
    CString::new(text).map_err(|_| DaviError::invalid_spec("operator spec contains a NUL byte"))
}

/// The plugins a host knows, and the files it refused.
#[derive(Debug, Default)]
pub struct PluginRegistry {
    plugins: Vec<LoadedPlugin>,
    refused: Vec<Refusal>,
}

impl PluginRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with every plugin of `dir` (see [`PluginRegistry::scan_dir`]).
    pub fn scan(dir: impl AsRef<Path>) -> std::io::Result<Self> {
        let mut r = Self::new();
        r.scan_dir(dir)?;
        Ok(r)
    }

    /// Try every file of `dir` whose name ends in `.so` (`.dylib`, `.dll` elsewhere), in name
    /// order; the ones that fail are recorded in [`PluginRegistry::refused`]. Returns how many
    /// plugins were added. Fails only if the directory itself cannot be read.
    pub fn scan_dir(&mut self, dir: impl AsRef<Path>) -> std::io::Result<usize> {
        let suffix = format!(".{}", std::env::consts::DLL_EXTENSION);
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir.as_ref())? {
            let path = entry?.path();
            let is_lib = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(&suffix));
            if is_lib && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        let mut added = 0;
        for path in files {
            match self.load(&path) {
                Ok(_) => added += 1,
                Err(error) => self.refused.push(Refusal { path, error }),
            }
        }
        Ok(added)
    }

    /// Load one plugin library (see [`LoadedPlugin::open`]) and add it.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<&LoadedPlugin, LoadError> {
        let plugin = LoadedPlugin::open(path.as_ref())?;
        self.add(plugin)
    }

    /// Add plugin `T` linked into this process (tests, static builds).
    pub fn register<T: RestorePlugin>(&mut self) -> Result<&LoadedPlugin, LoadError> {
        self.add(LoadedPlugin::in_process::<T>()?)
    }

    /// Add an already checked plugin; ids must be unique.
    pub fn add(&mut self, plugin: LoadedPlugin) -> Result<&LoadedPlugin, LoadError> {
        if let Some(first) = self.plugins.iter().find(|p| p.id() == plugin.id()) {
            return Err(LoadError::DuplicateId {
                id: plugin.id().to_string(),
                first: first.origin.to_string(),
            });
        }
        self.plugins.push(plugin);
        Ok(self.plugins.last().expect("just pushed"))
    }

    /// Loaded plugins, in load order.
    pub fn plugins(&self) -> &[LoadedPlugin] {
        &self.plugins
    }

    /// Files a scan refused, with the reason.
    pub fn refused(&self) -> &[Refusal] {
        &self.refused
    }

    /// The plugin with this id.
    pub fn get(&self, id: &str) -> Option<&LoadedPlugin> {
        self.plugins.iter().find(|p| p.id() == id)
    }

    /// Choose a plugin for an operator kind. With `id`, that plugin, if it supports the kind.
    /// Without, a plugin with a learned model is preferred over a classical one; among equals
    /// the first loaded wins.
    pub fn pick(&self, kind: OperatorKind, id: Option<&str>) -> Result<&LoadedPlugin, DaviError> {
        if let Some(id) = id {
            let p = self.get(id).ok_or_else(|| {
                let known: Vec<&str> = self.plugins.iter().map(|p| p.id()).collect();
                DaviError::new(
                    DaviStatus::NotFound,
                    format!("no plugin `{id}` (loaded: {})", list(&known)),
                )
            })?;
            if !p.describe().supports(kind) {
                return Err(DaviError::unsupported_operator(format!(
                    "plugin `{id}` does not restore {kind}"
                )));
            }
            return Ok(p);
        }
        let candidates = self.plugins.iter().filter(|p| p.describe().supports(kind));
        let learned = candidates.clone().find(|p| p.describe().is_learned());
        learned
            .or_else(|| candidates.clone().next())
            .ok_or_else(|| {
                let known: Vec<&str> = self.plugins.iter().map(|p| p.id()).collect();
                DaviError::unsupported_operator(format!(
                    "no loaded plugin restores {kind} (loaded: {})",
                    list(&known)
                ))
            })
    }

    /// [`PluginRegistry::pick`] for a spec.
    pub fn pick_for(
        &self,
        spec: &OperatorSpec,
        id: Option<&str>,
    ) -> Result<&LoadedPlugin, DaviError> {
        self.pick(OperatorKind::of(spec), id)
    }
}

fn list(ids: &[&str]) -> String {
    if ids.is_empty() {
        "none".into()
    } else {
        ids.join(", ")
    }
}

// ---------------------------------------------------------------------------------------------
// Opening files

/// Leak-on-purpose `dlopen`.
fn open_library(path: &Path) -> Result<&'static libloading::Library, LoadError> {
    #[cfg(unix)]
    let lib = {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let flags = RTLD_NOW | RTLD_LOCAL | libc::RTLD_NODELETE;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let flags = RTLD_NOW | RTLD_LOCAL;
        // SAFETY: loading runs the library's initialisers; plugin directories are trusted
        // code by definition (as for GIMP, OpenFX or GStreamer plugin paths).
        unsafe { Library::open(Some(path), flags) }.map(libloading::Library::from)
    };
    #[cfg(not(unix))]
    // SAFETY: as above.
    let lib = unsafe { libloading::Library::new(path) };
    let lib = lib.map_err(|e| LoadError::Open(e.to_string()))?;
    Ok(Box::leak(Box::new(lib)))
}

/// The ELF identity of the running host: (class, data, machine).
#[cfg(all(unix, not(target_vendor = "apple")))]
fn host_elf() -> (u8, u8, Option<u16>) {
    let class = if cfg!(target_pointer_width = "64") {
        2
    } else {
        1
    };
    let data = if cfg!(target_endian = "little") { 1 } else { 2 };
    let machine = match std::env::consts::ARCH {
        "x86" => Some(3),
        "x86_64" => Some(62),
        "arm" => Some(40),
        "aarch64" => Some(183),
        "riscv64" | "riscv32" => Some(243),
        "powerpc" => Some(20),
        "powerpc64" => Some(21),
        "s390x" => Some(22),
        "loongarch64" => Some(258),
        "mips" | "mips64" => Some(8),
        _ => None,
    };
    (class, data, machine)
}

#[cfg(all(unix, not(target_vendor = "apple")))]
fn machine_name(m: u16) -> String {
    match m {
        3 => "x86".into(),
        8 => "MIPS".into(),
        20 => "PowerPC".into(),
        21 => "PowerPC64".into(),
        22 => "s390".into(),
        40 => "ARM".into(),
        62 => "x86-64".into(),
        183 => "AArch64".into(),
        243 => "RISC-V".into(),
        258 => "LoongArch".into(),
        other => format!("machine {other}"),
    }
}

/// Refuse files that cannot be a shared library for this host, by reading the ELF header,
/// before `dlopen` sees them (whose messages are vague, and which would run a foreign file's
/// initialisers).
#[cfg(all(unix, not(target_vendor = "apple")))]
fn check_object_file(path: &Path) -> Result<(), LoadError> {
    use std::io::Read;
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut head = Vec::with_capacity(64);
    std::fs::File::open(path)
        .map_err(io)?
        .take(64)
        .read_to_end(&mut head)
        .map_err(io)?;
    check_elf_header(&head)
}

/// The check [`LoadedPlugin::open`] runs on the first bytes of a file before `dlopen` sees
/// it: an ELF shared object of this host's class, byte order and architecture. `head` is the
/// start of the file (the loader reads 64 bytes; fewer for a shorter file, more are ignored).
/// Public so that the check can be tested and fuzzed (`fuzz/fuzz_targets/loader.rs`)
/// without files.
#[cfg(all(unix, not(target_vendor = "apple")))]
pub fn check_elf_header(head: &[u8]) -> Result<(), LoadError> {
    let head = &head[..head.len().min(64)];
    if head.len() < 4 || head[..4] != *b"\x7fELF" {
        let what = if head.is_empty() {
            "the file is empty".to_string()
        } else if head
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
        {
            "a text file, not an ELF object".to_string()
        } else {
            format!(
                "not an ELF object (starts with {:02x?})",
                &head[..head.len().min(4)]
            )
        };
        return Err(LoadError::NotSharedLibrary(what));
    }
    if head.len() < 20 {
        return Err(LoadError::NotSharedLibrary("truncated ELF header".into()));
    }
    let (class, data, machine) = host_elf();
    let bits = |c: u8| match c {
        1 => "32-bit".to_string(),
        2 => "64-bit".to_string(),
        x => format!("ELF class {x}"),
    };
    let endian = |d: u8| match d {
        1 => "little-endian",
        2 => "big-endian",
        _ => "unknown byte order",
    };
    let rd16 = |o: usize| {
        let b = [head[o], head[o + 1]];
        if head[5] == 2 {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    };
    let file_machine = rd16(18);
    let host_name = || {
        format!(
            "{} {} {}",
            bits(class),
            endian(data),
            machine.map_or(std::env::consts::ARCH.to_string(), machine_name)
        )
    };
    if head[4] != class || head[5] != data || machine.is_some_and(|m| m != file_machine) {
        return Err(LoadError::WrongArchitecture {
            found: format!(
                "{} {} {}",
                bits(head[4]),
                endian(head[5]),
                machine_name(file_machine)
            ),
            expected: host_name(),
        });
    }
    match rd16(16) {
        3 => Ok(()),
        1 => Err(LoadError::NotSharedLibrary(
            "an ELF relocatable object (.o), not a shared library".into(),
        )),
        2 => Err(LoadError::NotSharedLibrary(
            "an ELF executable, not a shared library".into(),
        )),
        4 => Err(LoadError::NotSharedLibrary("an ELF core dump".into())),
        t => Err(LoadError::NotSharedLibrary(format!(
            "ELF type {t} is not a shared library"
        ))),
    }
}

#[cfg(not(all(unix, not(target_vendor = "apple"))))]
fn check_object_file(path: &Path) -> Result<(), LoadError> {
    // Mach-O and PE headers are left to the platform loader.
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::DAVI_OPERATOR_DENOISING;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("davi-sdk-loader-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn non_elf_and_text_files_are_refused_with_the_reason() {
        let d = temp_dir("text");
        std::fs::write(d.join("notes.so"), "this is not a library\n").unwrap();
        std::fs::write(d.join("blob.so"), [0u8, 1, 2, 3, 4, 5, 6, 7]).unwrap();
        std::fs::write(d.join("empty.so"), []).unwrap();
        std::fs::write(d.join("readme.txt"), "ignored: not a .so").unwrap();
        let r = PluginRegistry::scan(&d).unwrap();
        assert!(r.plugins().is_empty());
        let reasons: Vec<String> = r.refused().iter().map(|x| x.to_string()).collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(
            reasons[0].contains("blob.so") && reasons[0].contains("not an ELF object"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].contains("empty.so") && reasons[1].contains("empty"),
            "{reasons:?}"
        );
        assert!(
            reasons[2].contains("notes.so") && reasons[2].contains("a text file"),
            "{reasons:?}"
        );
        assert!(r
            .refused()
            .iter()
            .all(|x| matches!(x.error, LoadError::NotSharedLibrary(_))));
        let e = LoadedPlugin::open(&d.join("missing.so")).unwrap_err();
        assert_eq!(e.status(), DaviStatus::NotFound);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn foreign_architecture_and_executables_are_refused() {
        let d = temp_dir("arch");
        let (class, data, machine) = host_elf();
        let elf = |class: u8, machine: u16, etype: u16| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(b"\x7fELF");
            h[4] = class;
            h[5] = data;
            h[6] = 1;
            let (t, m) = if data == 1 {
                (etype.to_le_bytes(), machine.to_le_bytes())
            } else {
                (etype.to_be_bytes(), machine.to_be_bytes())
            };
            h[16..18].copy_from_slice(&t);
            h[18..20].copy_from_slice(&m);
            h
        };
        let host_machine = machine.unwrap();
        let other = if host_machine == 183 { 62 } else { 183 };
        std::fs::write(d.join("arm.so"), elf(class, other, 3)).unwrap();
        std::fs::write(d.join("thirty-two.so"), elf(3 - class, host_machine, 3)).unwrap();
        std::fs::write(d.join("exe.so"), elf(class, host_machine, 2)).unwrap();
        let e = LoadedPlugin::open(&d.join("arm.so")).unwrap_err();
        assert!(matches!(e, LoadError::WrongArchitecture { .. }), "{e}");
        assert_eq!(e.status(), DaviStatus::AbiMismatch);
        let expect = if other == 183 { "AArch64" } else { "x86-64" };
        assert!(e.to_string().contains(expect), "{e}");
        let e = LoadedPlugin::open(&d.join("thirty-two.so")).unwrap_err();
        assert!(matches!(e, LoadError::WrongArchitecture { .. }), "{e}");
        assert!(e.to_string().contains("bit"), "{e}");
        let e = LoadedPlugin::open(&d.join("exe.so")).unwrap_err();
        assert!(e.to_string().contains("executable"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    struct Echo;
    impl RestorePlugin for Echo {
        const INFO: crate::PluginInfo = crate::PluginInfo {
            id: c"echo",
            version: c"1.0.0",
            description: c"returns its input",
            operator_kinds: DAVI_OPERATOR_DENOISING,
            devices: DAVI_DEVICE_CPU,
            flags: 0,
        };
        fn new(_: &PluginOptions) -> Result<Self, DaviError> {
            Ok(Echo)
        }
        fn restore(
            &mut self,
            _: &OperatorSpec,
            input: &PlanarImage,
            progress: &mut crate::Progress<'_>,
        ) -> Result<PlanarImage, DaviError> {
            progress.update(0.5)?;
            Ok(input.clone())
        }
    }

    struct Learned;
    impl RestorePlugin for Learned {
        const INFO: crate::PluginInfo = crate::PluginInfo {
            id: c"learned",
            version: c"1.0.0",
            description: c"pretends to be learned",
            operator_kinds: DAVI_OPERATOR_DENOISING | crate::plugin::DAVI_OPERATOR_COLORIZATION,
            devices: DAVI_DEVICE_CPU | DAVI_DEVICE_CUDA,
            flags: DAVI_PLUGIN_FLAG_LEARNED,
        };
        fn new(_: &PluginOptions) -> Result<Self, DaviError> {
            Ok(Learned)
        }
        fn restore(
            &mut self,
            _: &OperatorSpec,
            i: &PlanarImage,
            _: &mut crate::Progress<'_>,
        ) -> Result<PlanarImage, DaviError> {
            Ok(i.clone())
        }
    }

    #[test]
    fn pick_prefers_learned_plugins_and_honours_an_explicit_id() {
        let mut r = PluginRegistry::new();
        r.register::<Echo>().unwrap();
        r.register::<Learned>().unwrap();
        assert!(matches!(
            r.register::<Echo>(),
            Err(LoadError::DuplicateId { .. })
        ));
        assert_eq!(
            r.pick(OperatorKind::Denoising, None).unwrap().id(),
            "learned"
        );
        assert_eq!(
            r.pick(OperatorKind::Denoising, Some("echo")).unwrap().id(),
            "echo"
        );
        assert_eq!(
            r.pick(OperatorKind::Colorization, None).unwrap().id(),
            "learned"
        );
        let e = r
            .pick(OperatorKind::Colorization, Some("echo"))
            .unwrap_err();
        assert_eq!(e.status, DaviStatus::UnsupportedOperator);
        let e = r.pick(OperatorKind::Inpainting, None).unwrap_err();
        assert_eq!(e.status, DaviStatus::UnsupportedOperator);
        assert!(e.message.contains("echo, learned"), "{e}");
        assert_eq!(
            r.pick(OperatorKind::Denoising, Some("nope"))
                .unwrap_err()
                .status,
            DaviStatus::NotFound
        );
        assert_eq!(
            r.get("learned").unwrap().describe().device_names(),
            ["cpu", "cuda"]
        );
    }

    #[test]
    fn instances_restore_views_and_surface_progress_panics() {
        let plugin = LoadedPlugin::in_process::<Echo>().unwrap();
        assert_eq!(plugin.origin(), &PluginOrigin::InProcess);
        let mut inst = plugin.new_instance(&PluginOptions::default()).unwrap();
        let src: Vec<u8> = (0..4 * 3 * 4).map(|i| (i * 7) as u8).collect();
        let mut dst = vec![0u8; src.len()];
        let input =
            ImageView::from_samples(&src, 4, 3, crate::DaviChannelLayout::Rgba, 16).unwrap();
        let mut output =
            ImageViewMut::from_samples(&mut dst, 4, 3, crate::DaviChannelLayout::Rgba, 16).unwrap();
        let mut seen = Vec::new();
        inst.restore_view("kind = \"denoising\"", &input, &mut output, |f| {
            seen.push(f);
            true
        })
        .unwrap();
        assert_eq!(dst, src);
        assert_eq!(seen, [0.5]);
        let e = inst
            .restore(
                "kind = \"inpainting\"",
                &PlanarImage::zeros(2, 2, 3),
                |_| true,
            )
            .unwrap_err();
        assert_eq!(e.status, DaviStatus::UnsupportedOperator);
        let e = inst
            .restore("kind = \"denoising\"", &PlanarImage::zeros(2, 2, 3), |_| {
                false
            })
            .unwrap_err();
        assert_eq!(e.status, DaviStatus::Cancelled);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            let _ = inst.restore("kind = \"denoising\"", &PlanarImage::zeros(2, 2, 3), |_| {
                panic!("host callback")
            });
        }));
        assert!(caught.is_err(), "the host's panic must resume in the host");
        // The instance still works after the host's panic.
        assert!(inst
            .restore("kind = \"denoising\"", &PlanarImage::zeros(2, 2, 3), |_| {
                true
            })
            .is_ok());
    }
}
