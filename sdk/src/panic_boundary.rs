//! The panic boundary of both C boundaries: [`catch_panics`] runs a closure so that a Rust panic
//! never unwinds into C (undefined behaviour, in practice an aborted host) but becomes an
//! error with [`DaviStatus::Panic`] and the panic's message.
//!
//! Users: the trampolines a plugin's [`davi_export_plugin!`](crate::davi_export_plugin)
//! expands to ([`crate::export`]) and every exported `davi_*` function of libdavi
//! (`sdk/capi/src/boundary.rs`, `guard`).
//!
//! A panic hook, installed once and chained to the hook that was there before, keeps panics
//! raised inside a boundary off the host's stderr and forwards every other panic. The
//! bookkeeping is one `Cell<u32>` depth counter per thread, which has no destructor: a library
//! must never register a thread-local destructor, which would point into unmapped code if a
//! host unloaded the library while the thread lived on.
//!
//! Anchor: `rustls/rustls-ffi: librustls/src/panic.rs` (`ffi_panic_boundary!`: `catch_unwind`
//! around every body, a panic mapped to a status).

use crate::status::{DaviError, DaviStatus};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// How many boundaries this thread is inside (a plain `Cell`: no TLS destructor).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

static HOOK: Once = Once::new();

fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Inside a boundary the panic becomes a status and a message; stay quiet.
            if DEPTH.with(|d| d.get()) == 0 {
                previous(info);
            }
        }));
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// How many panic boundaries the calling thread is inside: 0 outside any, 1 inside one call;
/// more when a callback run inside a boundary calls into the library again (libdavi uses that
/// to tell a nested call from a progress callback; tests use it to check the count balances).
pub fn boundary_depth() -> u32 {
    DEPTH.with(|d| d.get())
}

/// Run `f` inside the panic boundary: a panic becomes `Err` with [`DaviStatus::Panic`] and
/// "`who` panicked: <message>", and stays off the host's stderr. Shared by the plugin
/// trampolines ([`crate::export`]) and by every exported function of `libdavi` (`sdk/capi`).
pub fn catch_panics<T>(
    who: &str,
    f: impl FnOnce() -> Result<T, DaviError>,
) -> Result<T, DaviError> {
    install_panic_hook();
    DEPTH.with(|d| d.set(d.get() + 1));
    let outcome = catch_unwind(AssertUnwindSafe(f));
    DEPTH.with(|d| d.set(d.get() - 1));
    match outcome {
        Ok(result) => result,
        Err(payload) => {
            let msg = panic_message(&*payload);
            // Dropping a payload can itself panic; never let that escape.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            Err(DaviError::new(
                DaviStatus::Panic,
                format!("{who} panicked: {msg}"),
            ))
        }
    }
}
