//! The registry of live opaque handles: every `DaviContext`, `DaviSpec` and `DaviTraining` this
//! library has handed out and not yet freed, by address and kind.
//!
//! Why: a C host can pass any pointer where a handle is expected: a handle of another kind
//! (a spec where a context belongs), one it already freed, or garbage. A tag stored inside
//! the handle can only be checked by reading through the pointer, which is itself the bug
//! when the pointer is of another kind (the read may pass the end of a smaller allocation) or
//! freed. The registry answers "is this a live handle of this kind?" from the address alone,
//! so a wrong, freed or never-made pointer is refused with `DAVI_STATUS_INVALID_ARGUMENT`
//! without anything being read through it, and a second `*_free` of a handle is a no-op.
//!
//! Limits (stated in `docs/C_API.md`): an address freed and then reused by a new handle of the
//! same kind is that new handle; freeing a handle while another thread uses it is undefined
//! behaviour, as for any C object.
//!
//! The registry is a process-wide `Mutex<BTreeMap>`: no thread-local state, nothing with a
//! destructor that runs at exit. Lookups take the lock for a map search, which is negligible
//! next to any call that does work.

use davi_sdk::DaviError;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The kinds of opaque handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Context,
    Spec,
    Training,
}

impl Kind {
    fn c_name(self) -> &'static str {
        match self {
            Kind::Context => "DaviContext",
            Kind::Spec => "DaviSpec",
            Kind::Training => "DaviTraining",
        }
    }
}

static LIVE: Mutex<BTreeMap<usize, Kind>> = Mutex::new(BTreeMap::new());

fn live() -> std::sync::MutexGuard<'static, BTreeMap<usize, Kind>> {
    // The map is consistent after any panic (inserts and removes are single operations).
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hand out `value` as a new handle of `kind`.
pub(crate) fn register<T>(value: Box<T>, kind: Kind) -> *mut T {
    let p = Box::into_raw(value);
    live().insert(p as usize, kind);
    p
}

/// Check that `p` is a live handle of `kind`, naming the parameter `name` otherwise. NULL is
/// `NullArgument`. Nothing is read through `p`.
pub(crate) fn check<T>(p: *const T, kind: Kind, name: &str) -> Result<(), DaviError> {
    if p.is_null() {
        return Err(DaviError::null_argument(name));
    }
    match live().get(&(p as usize)) {
        Some(k) if *k == kind => Ok(()),
        Some(other) => Err(DaviError::invalid_argument(format!(
            "`{name}` is a {}, not a {}",
            other.c_name(),
            kind.c_name()
        ))),
        None => Err(DaviError::invalid_argument(format!(
            "`{name}` is not a live {} (never made by libdavi, or already freed)",
            kind.c_name()
        ))),
    }
}

/// Take back a live handle of `kind` for freeing: `None` (nothing to free) for NULL, a handle
/// of another kind, or one already freed.
///
/// # Safety
/// If `p` is registered as `kind`, it must be the pointer [`register`] returned for a `T`.
pub(crate) unsafe fn unregister<T>(p: *mut T, kind: Kind) -> Option<Box<T>> {
    if p.is_null() {
        return None;
    }
    let mut map = live();
    match map.get(&(p as usize)) {
        Some(k) if *k == kind => {
            map.remove(&(p as usize));
            drop(map);
            Some(Box::from_raw(p))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use davi_sdk::DaviStatus;

    #[test]
    fn handles_are_checked_by_address_and_kind() {
        let p = register(Box::new(7u64), Kind::Spec);
        assert!(check(p, Kind::Spec, "spec").is_ok());
        let e = check(p.cast::<u8>(), Kind::Context, "ctx").unwrap_err();
        assert_eq!(e.status, DaviStatus::InvalidArgument);
        assert_eq!(e.message, "`ctx` is a DaviSpec, not a DaviContext");
        assert!(unsafe { unregister(p.cast::<u8>(), Kind::Context) }.is_none());
        assert_eq!(*unsafe { unregister(p, Kind::Spec) }.unwrap(), 7);
        // Freed: refused, and a second free is a no-op.
        assert!(check(p, Kind::Spec, "spec")
            .unwrap_err()
            .message
            .contains("already freed"));
        assert!(unsafe { unregister(p, Kind::Spec) }.is_none());
        let null: *const u64 = std::ptr::null();
        assert_eq!(
            check(null, Kind::Spec, "spec").unwrap_err().status,
            DaviStatus::NullArgument
        );
    }
}
