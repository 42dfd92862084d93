//! Build script of libdavi: libtorch rpath and CUDA link arguments (shared with the engine),
//! the versioned SONAME, and the C ABI revision read from `[package.metadata.davi]`.
//!
//! SONAME: `libdavi.so.<major>` from the crate version, so an ABI break (a major bump) gets a
//! new file name and old binaries keep finding the library they were linked against. For 0.x
//! versions that is `libdavi.so.0`.
include!("../../build-support/torch_link.rs");

fn main() {
    link_libtorch();
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.toml");

    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the version");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if matches!(
        os.as_str(),
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly"
    ) {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libdavi.so.{major}");
        // Load once, never unload: a host that dlcloses libdavi keeps it mapped, so no
        // thread-local destructor of Rust's std or libtorch can outlive its code.
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
        // Export the `davi_*` API only: symbols of the static dependencies stay local
        // (tests/header.rs checks `nm -D` against include/davi.h).
        println!("cargo:rustc-cdylib-link-arg=-Wl,--exclude-libs,ALL");
    }

    let manifest = std::fs::read_to_string("Cargo.toml").expect("read Cargo.toml");
    let abi =
        abi_version(&manifest).expect("Cargo.toml needs [package.metadata.davi] abi_version = N");
    println!("cargo:rustc-env=DAVI_ABI_VERSION={abi}");
}

/// `abi_version` of the `[package.metadata.davi]` table (a line scan: build scripts of this
/// workspace take no build dependencies).
fn abi_version(manifest: &str) -> Option<u32> {
    let mut in_table = false;
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            in_table = line == "[package.metadata.davi]";
        } else if in_table {
            if let Some((key, value)) = line.split_once('=') {
                if key.trim() == "abi_version" {
                    return value.trim().parse().ok();
                }
            }
        }
    }
    None
}
