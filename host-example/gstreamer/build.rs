//! Build script of the GStreamer plugin: libtorch's rpath (shared with libdavi and the CLI),
//! and how the plugin library is linked.
//!
//! - `-z nodelete`: GStreamer never unloads plugins, but `gst-plugin-scanner` and hosts may
//!   `dlclose`; libtorch and Rust's std register thread-local destructors that must not
//!   outlive their code.
//! - `--exclude-libs,ALL`: the plugin links libdavi's Rust crate statically, whose `davi_*`
//!   C functions would otherwise be exported too and could bind, in a process that also loads
//!   `libdavi.so`, to the other copy. Only `gst_plugin_davi_*` stay visible.
include!("../../build-support/torch_link.rs");

fn main() {
    link_libtorch();
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
        println!("cargo:rustc-cdylib-link-arg=-Wl,--exclude-libs,ALL");
    }
}
