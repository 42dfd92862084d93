include!("../../build-support/torch_link.rs");
fn main() {
    link_libtorch();
    // Load once, never unload: a host that dlcloses the plugin library keeps it mapped.
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if matches!(
        os.as_str(),
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly"
    ) {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
        // Export the plugin entry only: without this, every `#[no_mangle]` function of the
        // dependencies (tch's stream callbacks, bzip2's error hook) is exported too, and a
        // host loading two tch-based libraries could bind them to the wrong copy.
        println!("cargo:rustc-cdylib-link-arg=-Wl,--exclude-libs,ALL");
    }
}
