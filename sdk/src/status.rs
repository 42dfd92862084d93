//! Status codes shared by both boundaries (host C API and plugin table), and the Rust error
//! that pairs a status with a detailed message.
//!
//! Why: C callers branch on numbers, people read sentences. Every fallible call across a
//! boundary returns one [`DaviStatus`] with a stable value, a static NUL-terminated string per
//! value ([`DaviStatus::as_cstr`], for `davi_status_str`), and a detailed message copied into a
//! caller buffer ([`write_message`]); there are no thread-local "last error" slots because
//! hosts call from many threads.
//!
//! Anchors: `xiph/rav1e: src/capi.rs` (`RaStatus` + `rav1e_status_to_str`) and
//! `rustls/rustls-ffi: librustls/src/error.rs` (explicit discriminants, never reused).
//!
//! Evolution: values are append-only and never renumbered. A plugin built against a newer ABI
//! minor may return a value this build does not know, so statuses that cross the plugin
//! boundary travel as a raw [`DaviStatusCode`] and are decoded with [`DaviStatus::from_code`]
//! (a Rust enum holding an unknown discriminant would be undefined behaviour).

use std::ffi::{c_char, CStr};
use std::fmt;

/// The raw integer form of a [`DaviStatus`], as returned through the plugin function table.
/// Same size and values as the C enum; decode with [`DaviStatus::from_code`].
pub type DaviStatusCode = i32;

/// Outcome of a call. `Ok` is zero; every other value is a failure.
///
/// The C enum is `int`-sized (`#[repr(C)]`), values are explicit and stable.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DaviStatus {
    /// Success; outputs were written.
    Ok = 0,
    /// A required pointer argument was NULL. Nothing was dereferenced or written.
    NullArgument = 1,
    /// An argument is out of range: zero or overflowing size, stride smaller than a row,
    /// misaligned data, output buffer too small, a `struct_size` too small, a non-finite sample.
    InvalidArgument = 2,
    /// The operator spec text is not valid TOML/JSON, has unknown keys or bad values.
    InvalidSpec = 3,
    /// The operator kind is known but this plugin or build does not implement it.
    UnsupportedOperator = 4,
    /// Sample type, channel layout or flags of an image are not supported.
    UnsupportedFormat = 5,
    /// A model file is missing, malformed or does not fit the network.
    ModelError = 6,
    /// The requested device is unknown, absent or failed.
    DeviceError = 7,
    /// The progress callback (or, for training, a cancel call) asked to stop. A restore leaves
    /// its output untouched; a training run stops with a checkpoint of the step it reached.
    Cancelled = 8,
    /// An allocation failed (host memory or device memory).
    OutOfMemory = 9,
    /// A plugin or struct was built for an incompatible ABI version.
    AbiMismatch = 10,
    /// Code below the boundary panicked; the panic was caught and its message reported.
    Panic = 11,
    /// Any other failure (a bug, an I/O error, an unknown status from a newer plugin).
    Internal = 12,
    /// A named plugin, file or object does not exist.
    NotFound = 13,
    /// The object is in use and the call does not wait: a restore started from inside a
    /// progress callback on a context that is restoring (ABI 2).
    Busy = 14,
    /// A file could not be written or read: a full disk, a file size limit, no permission
    /// (ABI 3). Training keeps what was on disk before (its last checkpoint).
    IoError = 15,
    /// A training config is unknown (preset name), not valid TOML, has unknown keys or bad
    /// values, or is of the other kind of run than the caller asked for (ABI 3).
    InvalidConfig = 16,
}

impl DaviStatus {
    /// Every status, in value order (used by tests and by hosts that list codes).
    /// cbindgen:ignore
    pub const ALL: [DaviStatus; 17] = [
        DaviStatus::Ok,
        DaviStatus::NullArgument,
        DaviStatus::InvalidArgument,
        DaviStatus::InvalidSpec,
        DaviStatus::UnsupportedOperator,
        DaviStatus::UnsupportedFormat,
        DaviStatus::ModelError,
        DaviStatus::DeviceError,
        DaviStatus::Cancelled,
        DaviStatus::OutOfMemory,
        DaviStatus::AbiMismatch,
        DaviStatus::Panic,
        DaviStatus::Internal,
        DaviStatus::NotFound,
        DaviStatus::Busy,
        DaviStatus::IoError,
        DaviStatus::InvalidConfig,
    ];

    /// The raw value, as it travels through the plugin table.
    pub const fn code(self) -> DaviStatusCode {
        self as DaviStatusCode
    }

    /// Decode a raw value. Unknown values (from a newer plugin) become `None`.
    pub fn from_code(code: DaviStatusCode) -> Option<DaviStatus> {
        Self::ALL.get(usize::try_from(code).ok()?).copied()
    }

    /// A static, NUL-terminated, lower-case sentence for this status. The pointer stays valid
    /// for the life of the process; callers must not free it.
    pub const fn as_cstr(self) -> &'static CStr {
        match self {
            DaviStatus::Ok => c"ok",
            DaviStatus::NullArgument => c"a required pointer argument was NULL",
            DaviStatus::InvalidArgument => c"an argument is out of range",
            DaviStatus::InvalidSpec => c"the operator spec is invalid",
            DaviStatus::UnsupportedOperator => c"the operator kind is not supported",
            DaviStatus::UnsupportedFormat => c"the image format is not supported",
            DaviStatus::ModelError => c"the model file could not be used",
            DaviStatus::DeviceError => c"the device could not be used",
            DaviStatus::Cancelled => c"cancelled by the progress callback",
            DaviStatus::OutOfMemory => c"out of memory",
            DaviStatus::AbiMismatch => c"incompatible ABI version",
            DaviStatus::Panic => c"internal panic (caught at the boundary)",
            DaviStatus::Internal => c"internal error",
            DaviStatus::NotFound => c"not found",
            DaviStatus::Busy => c"busy: the object is in use and the call does not wait",
            DaviStatus::IoError => c"a file could not be read or written",
            DaviStatus::InvalidConfig => c"the training config is invalid",
        }
    }

    /// [`DaviStatus::as_cstr`] as a `&str`.
    pub fn as_str(self) -> &'static str {
        // The literals above are ASCII.
        self.as_cstr().to_str().unwrap_or("internal error")
    }

    /// The static string as a C pointer (what `davi_status_str` returns).
    pub const fn as_ptr(self) -> *const c_char {
        self.as_cstr().as_ptr()
    }

    /// `true` for [`DaviStatus::Ok`].
    pub const fn is_ok(self) -> bool {
        matches!(self, DaviStatus::Ok)
    }
}

impl fmt::Display for DaviStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure: the status C callers branch on and the detailed message people read.
///
/// Both sides of the plugin boundary use it: plugins return it from [`crate::RestorePlugin`]
/// methods, the loader returns it from calls into a plugin, and the C API of `libdavi` maps it
/// onto its return value and last-error text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DaviError {
    pub status: DaviStatus,
    pub message: String,
}

impl DaviError {
    /// An error with a status and a detailed message.
    pub fn new(status: DaviStatus, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.is_empty() {
            message = status.as_str().to_string();
        }
        DaviError { status, message }
    }

    pub fn null_argument(name: &str) -> Self {
        Self::new(DaviStatus::NullArgument, format!("`{name}` is NULL"))
    }
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(DaviStatus::InvalidArgument, message)
    }
    pub fn invalid_spec(message: impl Into<String>) -> Self {
        Self::new(DaviStatus::InvalidSpec, message)
    }
    pub fn unsupported_operator(message: impl Into<String>) -> Self {
        Self::new(DaviStatus::UnsupportedOperator, message)
    }
    pub fn unsupported_format(message: impl Into<String>) -> Self {
        Self::new(DaviStatus::UnsupportedFormat, message)
    }
    pub fn cancelled() -> Self {
        Self::new(DaviStatus::Cancelled, "cancelled by the progress callback")
    }
    pub fn out_of_memory(message: impl Into<String>) -> Self {
        Self::new(DaviStatus::OutOfMemory, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(DaviStatus::Internal, message)
    }
}

impl From<crate::SpecError> for DaviError {
    fn from(e: crate::SpecError) -> Self {
        DaviError::invalid_spec(e.to_string())
    }
}

/// Copy `message` into a caller buffer of `len` bytes as a NUL-terminated string, truncated
/// at a UTF-8 character boundary so the result is always valid UTF-8. Returns the number of
/// message bytes written (without the NUL).
///
/// A NULL `buf` or a zero `len` writes nothing: the message is optional for the caller.
///
/// # Safety
/// `buf` must be NULL or valid for writes of `len` bytes.
pub unsafe fn write_message(buf: *mut c_char, len: usize, message: &str) -> usize {
    if buf.is_null() || len == 0 {
        return 0;
    }
    let mut n = message.len().min(len - 1);
    while !message.is_char_boundary(n) {
        n -= 1;
    }
    // Interior NULs would cut the C string short; replace them while copying.
    let out = std::slice::from_raw_parts_mut(buf.cast::<u8>(), n + 1);
    for (dst, src) in out.iter_mut().zip(message.as_bytes()[..n].iter()) {
        *dst = if *src == 0 { b' ' } else { *src };
    }
    out[n] = 0;
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_pinned_and_strings_distinct() {
        for (i, s) in DaviStatus::ALL.iter().enumerate() {
            assert_eq!(s.code(), i as i32, "{s:?} moved");
            assert_eq!(DaviStatus::from_code(s.code()), Some(*s));
            assert!(!s.as_str().is_empty());
        }
        let mut texts: Vec<_> = DaviStatus::ALL.iter().map(|s| s.as_str()).collect();
        texts.sort();
        texts.dedup();
        assert_eq!(texts.len(), DaviStatus::ALL.len());
        assert_eq!(DaviStatus::Ok.code(), 0);
        assert_eq!(DaviStatus::Panic.code(), 11);
        assert_eq!(DaviStatus::from_code(-1), None);
        assert_eq!(DaviStatus::Busy.code(), 14);
        assert_eq!(DaviStatus::IoError.code(), 15);
        assert_eq!(DaviStatus::InvalidConfig.code(), 16);
        assert_eq!(DaviStatus::from_code(17), None);
        assert_eq!(size_of::<DaviStatus>(), size_of::<std::ffi::c_int>());
    }

    #[test]
    fn messages_are_truncated_at_char_boundaries() {
        let mut buf = [0x55 as c_char; 8];
        // "é" is two bytes: 6 ASCII bytes + half of "é" must not be written.
        let n = unsafe { write_message(buf.as_mut_ptr(), buf.len(), "abcdefé and more") };
        assert_eq!(n, 6);
        let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
        assert_eq!(s.to_str().unwrap(), "abcdef");

        let mut one = [0x55 as c_char; 1];
        assert_eq!(unsafe { write_message(one.as_mut_ptr(), 1, "xyz") }, 0);
        assert_eq!(one[0], 0);
        assert_eq!(unsafe { write_message(std::ptr::null_mut(), 10, "xyz") }, 0);

        let mut buf = [0x55 as c_char; 16];
        unsafe { write_message(buf.as_mut_ptr(), buf.len(), "a\0b") };
        assert_eq!(
            unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap(),
            "a b"
        );
    }
}
