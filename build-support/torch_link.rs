// Shared by the build scripts of every package that links libtorch (included with `include!`).
//
// Why: the libtorch of the PyTorch wheel lives in a project-local venv, so binaries need an
// rpath to find it without LD_LIBRARY_PATH; and tch links `libtorch_cuda.so` under the
// linker's default `--as-needed`, which drops it because no symbol is referenced directly,
// leaving CUDA unusable at run time. Forcing it in keeps CUDA available on GPU machines and
// is harmless on CPU-only ones (the library loads; no device is found).

/// Emit rpath and CUDA link arguments for every linked target of the calling package.
pub fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(libtorch) = std::env::var("LIBTORCH") else { return };
    let lib = std::path::Path::new(&libtorch).join("lib");
    let lib = std::fs::canonicalize(&lib).unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
