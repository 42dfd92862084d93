//! Test fixtures for the plugin loader: tiny hand-written plugin libraries, each broken in one
//! way (wrong ABI major, truncated table, no entry symbol, NULL table, NULL function), plus one
//! correct one, so a refusal can be traced to exactly one fault.
//!
//! Why hand-written rather than made with `davi_export_plugin!`: a broken plugin must be able
//! to break the contract, and a C plugin would not use the Rust SDK either. The one source file
//! `fixtures/plugin.rs` (no dependencies, written like a C plugin) is compiled by `build.rs`
//! with `rustc --crate-type cdylib --cfg fault="…"` once per fault, into `OUT_DIR`.
//!
//! Anchor: `rustls/rustls-ffi: librustls/tests/` (C-level behaviour tested from outside).
//! Run: `cargo test -p davi-test-plugins`.
use std::path::PathBuf;

/// Faults the fixtures are built with; `ok` is the correct control plugin.
pub const FAULTS: &[&str] = &[
    "ok",
    "major",
    "truncated",
    "no_entry",
    "null_table",
    "null_fn",
];

/// Directory holding every fixture library.
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("DAVI_TEST_PLUGIN_DIR"))
}

/// Path of the fixture library built with `fault`.
pub fn fixture(fault: &str) -> PathBuf {
    assert!(FAULTS.contains(&fault), "unknown fixture {fault}");
    fixture_dir().join(format!(
        "{}davi_fixture_{fault}.{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_EXTENSION
    ))
}
