//! Generate `include/davi.h` with the pinned cbindgen (a dev-dependency of `davi-capi`).
//!
//! Shared by `tests/header.rs` (the committed header must equal a fresh generation) and
//! `examples/gen-header.rs` (rewrite it): both include this file with `#[path]`, so there is
//! one generator. The header is built from this crate's sources plus the SDK files that
//! define the types both C boundaries share (`DaviStatus`, `DaviImage` and its enums), and
//! gets version macros from `Cargo.toml`: `DAVI_VERSION_MAJOR/MINOR/PATCH` and
//! `DAVI_VERSION_STRING` from the package version, `DAVI_ABI_VERSION` from
//! `[package.metadata.davi] abi_version`.

use std::path::PathBuf;

/// `sdk/capi`.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The committed header, `include/davi.h` at the workspace root.
pub fn header_path() -> PathBuf {
    let dir = crate_dir();
    let root = dir
        .parent()
        .and_then(|p| p.parent())
        .expect("sdk/capi sits two levels below the workspace root");
    root.join("include").join("davi.h")
}

/// `[package.metadata.davi] abi_version` of `sdk/capi/Cargo.toml`.
pub fn abi_version() -> u32 {
    let text =
        std::fs::read_to_string(crate_dir().join("Cargo.toml")).expect("read sdk/capi/Cargo.toml");
    let manifest: toml::Table = toml::from_str(&text).expect("sdk/capi/Cargo.toml is TOML");
    let value = manifest
        .get("package")
        .and_then(|p| p.get("metadata"))
        .and_then(|m| m.get("davi"))
        .and_then(|d| d.get("abi_version"))
        .and_then(|v| v.as_integer())
        .expect("sdk/capi/Cargo.toml needs [package.metadata.davi] abi_version = N");
    u32::try_from(value).expect("abi_version fits in 32 bits")
}

/// The version macros placed after the includes.
pub fn version_macros() -> String {
    format!(
        "/* Version of the header, from sdk/capi/Cargo.toml. Compare with davi_version() and\n \
         * davi_abi_version() at run time. */\n\
         #define DAVI_VERSION_MAJOR {}\n\
         #define DAVI_VERSION_MINOR {}\n\
         #define DAVI_VERSION_PATCH {}\n\
         #define DAVI_VERSION_STRING \"{}\"\n\
         /* C ABI revision: bumped by every append; a library with davi_abi_version() >=\n \
         * DAVI_ABI_VERSION implements everything this header declares. */\n\
         #define DAVI_ABI_VERSION {}",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_PATCH"),
        env!("CARGO_PKG_VERSION"),
        abi_version()
    )
}

/// The header text a fresh cbindgen run produces.
pub fn generate() -> Result<String, String> {
    let dir = crate_dir();
    let mut config = cbindgen::Config::from_file(dir.join("cbindgen.toml"))?;
    config.after_includes = Some(version_macros());
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("../src/status.rs"))
        .with_src(dir.join("../src/image.rs"))
        .with_src(dir.join("src/types.rs"))
        .with_src(dir.join("src/capi.rs"))
        .generate()
        .map_err(|e| format!("cbindgen: {e}"))?;
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).map_err(|e| format!("header is not UTF-8: {e}"))
}
