//! The dependency-free Python module of `host-example/python` (ctypes over this run's
//! `libdavi.so`): its result equals the C host's on the same photograph, byte for byte, under
//! the system's plain `python3`; and its own unit tests (`test_davi.py`: sample types, alpha,
//! super-resolution, colorization, inpainting boxes, seeds, progress and cancel, errors, NumPy
//! arrays, and training: a tiny run cancelled from the `events()` generator and resumed equals
//! the uninterrupted one, and its export restores) pass under the project's `.venv` Python,
//! which has NumPy.
mod common;

use common::*;
use std::process::Command;

#[test]
fn python_module_restores_a_photo_exactly_like_the_c_host() {
    let dir = scratch("python-vs-c");
    let clean = photo(96, 64);
    let noisy = degrade(&clean, &default_denoise_model(), 11);
    let input = dir.join("noisy.ppm");
    write_pnm(&input, &noisy);
    let (c_out, py_out) = (dir.join("c.ppm"), dir.join("python.ppm"));
    run(Command::new(c_host())
        .args([
            "--task", "denoise", "--device", "cpu", "--seed", "5", "--quiet",
        ])
        .arg(&input)
        .arg(&c_out)
        .env("DAVI_MODEL_DIR", root().join("models")));
    run(Command::new("python3")
        .arg(root().join("host-example/python/davi.py"))
        .arg(&input)
        .arg(&py_out)
        .args(["--task", "denoise", "--device", "cpu", "--seed", "5"])
        .env("DAVI_LIBRARY", lib_dir().join("libdavi.so"))
        .env("DAVI_MODEL_DIR", root().join("models")));
    let (c, py) = (read_pnm(&c_out), read_pnm(&py_out));
    assert_eq!(py, c, "the Python module and the C host disagree");
    assert!(psnr(&py.data, &clean.data) > psnr(&noisy.data, &clean.data) + 0.5);
}

#[test]
fn python_module_unit_tests_pass() {
    let python = root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh",
        python.display()
    );
    let out = Command::new(&python)
        .args(["-m", "unittest", "-v", "test_davi"])
        .current_dir(root().join("host-example/python"))
        .env("DAVI_LIBRARY", lib_dir().join("libdavi.so"))
        .env("DAVI_MODEL_DIR", root().join("models"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "test_davi.py failed:\n{log}");
    assert!(
        log.contains("NumpyTests") && log.contains("TrainingTests") && !log.contains("skipped"),
        "{log}"
    );
}
