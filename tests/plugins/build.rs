//! Compile `fixtures/plugin.rs` into one shared library per fault (see `src/lib.rs`).
use std::path::PathBuf;
use std::process::Command;

const FAULTS: &[&str] = &[
    "ok",
    "major",
    "truncated",
    "no_entry",
    "null_table",
    "null_fn",
];

fn main() {
    println!("cargo:rerun-if-changed=fixtures/plugin.rs");
    println!("cargo:rerun-if-changed=build.rs");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let (prefix, ext) = match os.as_str() {
        "windows" => ("", "dll"),
        "macos" | "ios" => ("lib", "dylib"),
        _ => ("lib", "so"),
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("fixtures");
    std::fs::create_dir_all(&out).expect("create fixture dir");
    let values: Vec<String> = FAULTS.iter().map(|f| format!("\"{f}\"")).collect();
    let check_cfg = format!("cfg(fault, values({}))", values.join(", "));
    for fault in FAULTS {
        let name = format!("davi_fixture_{fault}");
        let file = out.join(format!("{prefix}{name}.{ext}"));
        let status = Command::new(&rustc)
            .args([
                "--edition=2021",
                "--crate-type=cdylib",
                "--crate-name",
                &name,
            ])
            .args([
                "-C",
                "opt-level=0",
                "-C",
                "debuginfo=0",
                "--target",
                &target,
            ])
            .args([
                "--cfg",
                &format!("fault=\"{fault}\""),
                "--check-cfg",
                &check_cfg,
            ])
            .arg("-o")
            .arg(&file)
            .arg("fixtures/plugin.rs")
            .status()
            .expect("run rustc for a plugin fixture");
        assert!(status.success(), "building fixture {fault} failed");
    }
    println!("cargo:rustc-env=DAVI_TEST_PLUGIN_DIR={}", out.display());
}
