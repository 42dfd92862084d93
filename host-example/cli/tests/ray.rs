//! Opt-in (`cargo test -p davi-cli --test ray -- --ignored`): `scripts/test-ray.sh`, the Ray
//! Data recipe `host-example/ray/restore_folder.py` on a local Ray instance, compared byte for
//! byte with this build's `davi restore` (docs/scale-out.md, docs/testing.md). It uses the
//! `libdavi.so` beside the `davi` binary, so build `davi-capi` of the same profile first. The
//! script's skip (exit 77, Ray cannot be installed here) fails this test: it was asked for.
use std::path::Path;
use std::process::Command;

#[test]
#[ignore = "opt-in: makes a 640 MB venv with Ray (network on first use); about a minute"]
fn ray_data_recipe_restores_a_folder_like_davi_restore() {
    let bin = Path::new(env!("CARGO_BIN_EXE_davi"));
    let lib = bin.parent().unwrap().join("libdavi.so");
    assert!(
        lib.is_file(),
        "{} is missing: build it first (cargo build -p davi-capi)",
        lib.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-ray.sh");
    let status = Command::new("bash")
        .arg(&script)
        .env("DAVI_BIN", bin)
        .env("DAVI_LIBRARY", &lib)
        .status()
        .expect("run scripts/test-ray.sh");
    match status.code() {
        Some(0) => {}
        Some(77) => panic!(
            "scripts/test-ray.sh skipped: Ray cannot be installed here (the reason is above)"
        ),
        other => panic!("scripts/test-ray.sh failed ({other:?}); its output is above"),
    }
}
