//! The GIMP 2.10 plug-in of `host-example/gimp`, end to end: `install.sh` builds it against
//! Debian's libgimp2.0-dev and this run's `libdavi.so`; headless `gimp-console-2.10` runs
//! Script-Fu (the shipped `davi-batch.scm` example, loaded in the same batch command as
//! its call since each `-b` runs in a fresh interpreter, and inline code) in a hermetic
//! `GIMP2_DIRECTORY`; the pictures GIMP writes are compared with the C host's restore of the
//! same input through the library directly.
//!
//! GIMP exits 0 even when a batch command fails, so every test reads GIMP's log: each batch
//! command must report success, and the failure test looks for the library's message.
//! Needs `gimp`, `libgimp2.0-dev` (`scripts/setup-hosts.sh`) and the default models; a
//! missing piece fails the test, naming it.
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The plug-ins folder with davi-gimp installed by its own script, once per test binary.
fn plug_ins() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("gimp-plug-ins");
        run(Command::new("bash")
            .arg(root().join("host-example/gimp/install.sh"))
            .arg("--lib")
            .arg(lib_dir())
            .arg("--no-models")
            .arg(&dir));
        assert!(dir.join("davi-gimp/davi-gimp").is_file());
        dir
    })
}

/// Run headless GIMP with `batch` commands (each one `-b`) in a fresh config dir under `dir`;
/// returns its combined output.
fn gimp(dir: &Path, batch: &[String]) -> String {
    let cfg = dir.join("gimp-config");
    for sub in ["gradients", "brushes", "patterns", "palettes", "fonts"] {
        std::fs::create_dir_all(cfg.join(sub)).unwrap();
    }
    std::os::unix::fs::symlink(plug_ins(), cfg.join("plug-ins")).unwrap();
    let mut cmd = Command::new("timeout");
    cmd.args(["300", "gimp-console-2.10", "-i", "-d", "-f", "-n"])
        .args(["--batch-interpreter", "plug-in-script-fu-eval"])
        .current_dir(dir)
        .env("GIMP2_DIRECTORY", &cfg)
        .env("DAVI_MODEL_DIR", root().join("models"));
    for b in batch {
        cmd.arg("-b").arg(b);
    }
    cmd.args(["-b", "(gimp-quit 0)"]);
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run gimp-console-2.10 ({e}): scripts/setup-hosts.sh installs it")
    });
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "GIMP failed ({}):\n{log}", out.status);
    log
}

/// Every batch command of the run reported success (`gimp-quit` reports nothing).
fn assert_all_succeeded(log: &str, commands: usize) {
    let ok = log.matches("batch command executed successfully").count();
    assert!(
        ok == commands && !log.contains("execution error"),
        "{ok} of {commands} GIMP batch commands succeeded:\n{log}"
    );
}

fn load_rgb(path: &Path) -> Pnm {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    Pnm {
        width: img.width() as usize,
        height: img.height() as usize,
        channels: 3,
        data: img.into_raw(),
    }
}

/// The C host's restore (libdavi directly) of `input` with the default model of `task`.
fn library_restore(task: &str, input: &Path, out: &Path) -> Pnm {
    run(Command::new(c_host())
        .args(["--task", task, "--device", "cpu", "--seed", "0", "--quiet"])
        .arg(input)
        .arg(out)
        .env("DAVI_MODEL_DIR", root().join("models")));
    read_pnm(out)
}

fn max_abs_diff(a: &Pnm, b: &Pnm) -> u8 {
    assert_eq!(
        (a.width, a.height, a.channels),
        (b.width, b.height, b.channels)
    );
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

fn scm_str(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

#[test]
fn gimp_denoises_a_photo_like_the_library_at_8_bit_16_bit_and_float_precision_keeping_alpha() {
    let dir = scratch("gimp-denoise");
    let clean = photo(96, 64);
    let noisy = degrade(&clean, &default_model("denoise"), 3);
    let input = dir.join("noisy.ppm");
    write_pnm(&input, &noisy);
    let reference = library_restore("denoise", &input, &dir.join("library.ppm"));

    let example = root().join("host-example/gimp/davi-batch.scm");
    let at_precision = |precision: &str, out: &str| {
        format!(
            "(let* ((img (car (gimp-file-load RUN-NONINTERACTIVE {i} {i}))) \
                    (l (car (gimp-image-get-active-drawable img)))) \
               (gimp-image-convert-precision img {precision}) \
               (plug-in-davi-denoise RUN-NONINTERACTIVE img l 0 -1 0) \
               (gimp-image-convert-precision img PRECISION-U8-GAMMA) \
               (gimp-file-save RUN-NONINTERACTIVE img l {out} {out}) \
               (gimp-image-delete img))",
            i = scm_str(&input),
            out = format!("\"{out}\""),
        )
    };
    let batch = vec![
        format!(
            "(begin (load {}) (davi-restore-file \"denoise\" {} \"out-u8.png\" 0))",
            scm_str(&example),
            scm_str(&input)
        ),
        at_precision("PRECISION-U16-GAMMA", "out-u16.png"),
        at_precision("PRECISION-FLOAT-GAMMA", "out-float.png"),
        // An RGBA layer with a transparent corner: alpha must come back untouched.
        format!(
            "(let* ((img (car (gimp-file-load RUN-NONINTERACTIVE {i} {i}))) \
                    (l (car (gimp-image-get-active-drawable img)))) \
               (gimp-layer-add-alpha l) \
               (gimp-image-select-rectangle img CHANNEL-OP-REPLACE 0 0 16 12) \
               (gimp-drawable-edit-clear l) \
               (gimp-selection-none img) \
               (plug-in-davi-denoise RUN-NONINTERACTIVE img l 0 -1 0) \
               (gimp-file-save RUN-NONINTERACTIVE img l \"out-rgba.png\" \"out-rgba.png\") \
               (gimp-image-delete img))",
            i = scm_str(&input)
        ),
    ];
    let log = gimp(&dir, &batch);
    assert_all_succeeded(&log, batch.len());

    for (name, tolerance) in [("out-u8.png", 0), ("out-u16.png", 1), ("out-float.png", 1)] {
        let got = load_rgb(&dir.join(name));
        let diff = max_abs_diff(&got, &reference);
        assert!(
            diff <= tolerance,
            "{name}: differs from the library's restore by up to {diff} levels (allowed \
                {tolerance})"
        );
    }
    let rgba = image::open(dir.join("out-rgba.png")).unwrap().to_rgba8();
    for (x, y, p) in rgba.enumerate_pixels() {
        let want = if x < 16 && y < 12 { 0 } else { 255 };
        assert_eq!(p.0[3], want, "alpha at ({x}, {y}) changed");
    }
    let (before, after) = (
        psnr(&noisy.data, &clean.data),
        psnr(&load_rgb(&dir.join("out-u8.png")).data, &clean.data),
    );
    eprintln!("GIMP denoise: PSNR noisy {before:.2} dB, restored {after:.2} dB");
    assert!(
        after > before + 0.5,
        "restored {after:.2} dB vs noisy {before:.2} dB"
    );
}

#[test]
fn gimp_super_resolution_opens_a_new_image_four_times_larger() {
    let dir = scratch("gimp-sr4");
    let small = degrade(&photo(96, 64), &default_model("sr4"), 5);
    assert_eq!((small.width, small.height), (24, 16));
    let input = dir.join("small.ppm");
    write_pnm(&input, &small);
    let reference = library_restore("sr4", &input, &dir.join("library.ppm"));
    let batch = vec![format!(
        "(begin (load {}) (davi-restore-file \"sr4\" {} \"big.png\" 0))",
        scm_str(&root().join("host-example/gimp/davi-batch.scm")),
        scm_str(&input)
    )];
    let log = gimp(&dir, &batch);
    assert_all_succeeded(&log, batch.len());
    let got = load_rgb(&dir.join("big.png"));
    assert_eq!((got.width, got.height), (96, 64));
    assert_eq!(max_abs_diff(&got, &reference), 0);
    // GIMP recorded the five procedures with their menu entries.
    // pluginrc holds other plug-ins' strings in their own encodings: read it as bytes.
    let rc = String::from_utf8_lossy(
        &std::fs::read(dir.join("gimp-config/pluginrc")).expect("GIMP wrote pluginrc"),
    )
    .into_owned();
    assert_eq!(
        rc.matches("(menu-path \"<Image>/Filters/Enhance/DAVI Restore\")")
            .count(),
        5,
        "{rc}"
    );
    // Each task also has its -ex procedure (the knobs as parameters), with no menu entry.
    for t in ["deblur", "denoise", "sr4", "inpaint", "colorize"] {
        for name in [format!("plug-in-davi-{t}"), format!("plug-in-davi-{t}-ex")] {
            assert!(
                rc.contains(&format!("\"{name}\"")),
                "{name} is not registered"
            );
        }
    }
}

#[test]
fn gimp_ex_procedure_takes_threads_device_precision_and_ensemble() {
    let dir = scratch("gimp-ex");
    let clean = photo(64, 48);
    let noisy = degrade(&clean, &default_model("denoise"), 3);
    let input = dir.join("noisy.ppm");
    write_pnm(&input, &noisy);
    let restore = |proc_call: &str, out: &str| {
        format!(
            "(let* ((img (car (gimp-file-load RUN-NONINTERACTIVE {i} {i}))) \
                    (l (car (gimp-image-get-active-drawable img)))) \
               {proc_call} \
               (gimp-file-save RUN-NONINTERACTIVE img l \"{out}\" \"{out}\") \
               (gimp-image-delete img))",
            i = scm_str(&input)
        )
    };
    // One thread on the CPU in fp32, a self-ensemble of two orientations, called directly
    // and through davi-batch.scm's optional knobs; and the menu procedure, whose parameter
    // list is unchanged, with its defaults (no ensemble).
    let batch = vec![
        restore(
            "(plug-in-davi-denoise-ex RUN-NONINTERACTIVE img l 0 -1 0 1 \"cpu\" \"fp32\" 2)",
            "out-ex.png",
        ),
        format!(
            "(begin (load {}) \
               (davi-restore-file \"denoise\" {} \"out-ex-batch.png\" 0 1 \"cpu\" \"fp32\" 2))",
            scm_str(&root().join("host-example/gimp/davi-batch.scm")),
            scm_str(&input)
        ),
        restore(
            "(plug-in-davi-denoise RUN-NONINTERACTIVE img l 0 -1 0)",
            "out-plain.png",
        ),
    ];
    let log = gimp(&dir, &batch);
    assert_all_succeeded(&log, batch.len());

    let ex = load_rgb(&dir.join("out-ex.png"));
    let plain = load_rgb(&dir.join("out-plain.png"));
    assert_eq!(
        max_abs_diff(&ex, &load_rgb(&dir.join("out-ex-batch.png"))),
        0,
        "davi-restore-file with the same knobs gave other pixels"
    );
    assert!(
        max_abs_diff(&ex, &plain) > 0,
        "the ensemble of 2 gave the pixels of no ensemble: the knob did not reach libdavi"
    );
    let (before, after) = (psnr(&noisy.data, &clean.data), psnr(&ex.data, &clean.data));
    eprintln!("GIMP denoise-ex (ensemble 2): PSNR noisy {before:.2} dB, restored {after:.2} dB");
    assert!(
        after > before + 0.5,
        "restored {after:.2} dB vs noisy {before:.2} dB"
    );
}

#[test]
fn gimp_reports_failures_as_pdb_execution_errors_with_the_message() {
    let dir = scratch("gimp-errors");
    let input = dir.join("in.ppm");
    write_pnm(&input, &photo(32, 32));
    let call = |proc_call: &str| {
        format!(
            "(let* ((img (car (gimp-file-load RUN-NONINTERACTIVE {i} {i}))) \
                    (l (car (gimp-image-get-active-drawable img)))) \
               {proc_call})",
            i = scm_str(&input)
        )
    };
    // Inpainting with nothing selected, and a tile size the library refuses (its message);
    // an -ex call with a precision that does not exist (a calling error the plug-in names),
    // and one with fp16 on the CPU, which libdavi refuses (its message).
    let batch = vec![
        call("(plug-in-davi-inpaint RUN-NONINTERACTIVE img l 0 -1 0)"),
        call("(plug-in-davi-denoise RUN-NONINTERACTIVE img l 0 -1 7)"),
        call("(plug-in-davi-denoise-ex RUN-NONINTERACTIVE img l 0 -1 0 0 \"auto\" \"fp64\" 1)"),
        call("(plug-in-davi-denoise-ex RUN-NONINTERACTIVE img l 0 -1 0 0 \"cpu\" \"fp16\" 1)"),
    ];
    let log = gimp(&dir, &batch);
    assert_eq!(
        log.matches("batch command experienced an execution error")
            .count(),
        batch.len(),
        "{log}"
    );
    assert!(log.contains("select the region to fill first"), "{log}");
    assert!(
        log.contains("DAVI Restore: restore: an argument is out of range: tile 7 must be"),
        "{log}"
    );
    assert!(
        log.contains("DAVI Restore: precision \"fp64\" is not one of \"fp32\", \"bf16\", \"fp16\""),
        "{log}"
    );
    assert!(
        log.contains("the denoise model cannot run on device \"cpu\" in precision \"fp16\"")
            && log.contains("precision fp16 runs on CUDA devices only"),
        "{log}"
    );
}
