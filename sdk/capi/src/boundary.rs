//! The panic boundary and pointer checks every exported function goes through.
//!
//! Why: a Rust panic unwinding into C is undefined behaviour and in practice aborts the host
//! (GIMP, an OpenFX host, a video tool) with its unsaved work. Every exported body runs inside
//! [`guard`], which catches the panic and turns it into `DAVI_STATUS_PANIC` with the panic's
//! message; a panic hook, installed once and chained to the previous one, keeps panics raised
//! inside a boundary off the host's stderr. Pointers are checked by [`arg`], [`arg_mut`] and
//! [`c_str`] before anything is read through them.
//!
//! The only per-thread state is a `Cell<u32>` depth counter, which has no destructor, so the
//! library never registers a thread-local destructor (one would point into unmapped code if a
//! host unloaded the library while the thread lived on; see `sdk/src/loader.rs`).
//!
//! Anchor: `rustls/rustls-ffi: librustls/src/panic.rs` (`ffi_panic_boundary!`) and
//! `librustls/src/ffi.rs` (`try_ref_from_ptr!`).

use davi_sdk::DaviError;
#[cfg(test)]
use davi_sdk::DaviStatus;
use std::ffi::{c_char, CStr};

/// Run `f`; a panic becomes `Err` with [`DaviStatus::Panic`] and the panic's message (the
/// SDK's boundary, shared with the plugin trampolines).
pub fn guard<T>(f: impl FnOnce() -> Result<T, DaviError>) -> Result<T, DaviError> {
    davi_sdk::panic_boundary::catch_panics("libdavi", f)
}

/// [`guard`] for functions that return a value instead of a status: a panic yields `fallback`.
pub fn guard_value<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    guard(|| Ok(f())).unwrap_or(fallback)
}

/// A required input pointer as a reference; NULL is `NullArgument` naming the parameter.
///
/// # Safety
/// `p` must be NULL or valid for reads of `T` for `'a`.
pub unsafe fn arg<'a, T>(p: *const T, name: &str) -> Result<&'a T, DaviError> {
    p.as_ref().ok_or_else(|| DaviError::null_argument(name))
}

/// A required output pointer; NULL is `NullArgument`. Nothing is read or written here.
pub fn arg_mut<T>(p: *mut T, name: &str) -> Result<*mut T, DaviError> {
    if p.is_null() {
        Err(DaviError::null_argument(name))
    } else {
        Ok(p)
    }
}

/// A required NUL-terminated UTF-8 string.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string valid for `'a`.
pub unsafe fn c_str<'a>(p: *const c_char, name: &str) -> Result<&'a str, DaviError> {
    if p.is_null() {
        return Err(DaviError::null_argument(name));
    }
    CStr::from_ptr(p)
        .to_str()
        .map_err(|_| DaviError::invalid_argument(format!("`{name}` is not UTF-8")))
}

/// An optional NUL-terminated UTF-8 string (NULL is `None`).
///
/// # Safety
/// As [`c_str`].
pub unsafe fn opt_c_str<'a>(p: *const c_char, name: &str) -> Result<Option<&'a str>, DaviError> {
    if p.is_null() {
        Ok(None)
    } else {
        c_str(p, name).map(Some)
    }
}

/// Read the leading `struct_size` of a caller struct and check it covers the ABI 1 layout,
/// before anything else of the struct is read.
///
/// # Safety
/// `p` must be non-NULL and point to at least 4 readable bytes.
pub unsafe fn struct_size_at_least<T>(
    p: *const T,
    v1_size: usize,
    name: &str,
) -> Result<(), DaviError> {
    let size = std::ptr::read_unaligned(p.cast::<u32>()) as usize;
    if size < v1_size {
        return Err(DaviError::invalid_argument(format!(
            "{name}.struct_size is {size}, the ABI 1 struct has {v1_size} bytes (set it to \
                sizeof({name}))"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_statuses_with_their_message() {
        let r: Result<(), _> = guard(|| panic!("boom {}", 7));
        let e = r.unwrap_err();
        assert_eq!(e.status, DaviStatus::Panic);
        assert_eq!(e.message, "libdavi panicked: boom 7");
        assert_eq!(guard_value(3, || -> i32 { panic!("x") }), 3);
        assert_eq!(guard(|| Ok(5)).unwrap(), 5);
        // The depth counter is balanced after a panic.
        assert_eq!(davi_sdk::panic_boundary::boundary_depth(), 0);
    }

    #[test]
    fn null_pointers_are_refused_by_name() {
        let e = unsafe { arg::<u32>(std::ptr::null(), "ctx") }.unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (DaviStatus::NullArgument, "`ctx` is NULL")
        );
        assert!(arg_mut::<u32>(std::ptr::null_mut(), "out").is_err());
        assert!(unsafe { c_str(std::ptr::null(), "task") }.is_err());
        assert_eq!(
            unsafe { opt_c_str(std::ptr::null(), "device") }.unwrap(),
            None
        );
        let bad = [0xffu8 as c_char, 0];
        assert_eq!(
            unsafe { c_str(bad.as_ptr(), "task") }.unwrap_err().status,
            DaviStatus::InvalidArgument
        );
    }
}
