//! Link the plugin library with `-z nodelete` (ELF targets): a host that `dlclose`s it anyway
//! keeps it mapped, so no function pointer or thread-local destructor can outlive its code
//! ("load once, never unload", the rule `sdk/src/loader.rs` follows on the host side).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if matches!(
        os.as_str(),
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly"
    ) {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    }
}
