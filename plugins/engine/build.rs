include!("../../build-support/torch_link.rs");
fn main() {
    link_libtorch();
    // Load once, never unload: a host that dlcloses the plugin library keeps it mapped.
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if matches!(os.as_str(), "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    }
}
