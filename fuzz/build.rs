//! The libtorch rpath for the fuzz binaries (the same helper the workspace's build scripts use),
//! so they run without LD_LIBRARY_PATH.
include!("../build-support/torch_link.rs");

fn main() {
    link_libtorch();
    println!("cargo:rerun-if-changed=build.rs");
}
