//! The shipped default models on a whole 1024×768 photograph, per task, as a user restores one:
//! no tile-grid structure in the error (a phantom hole per tile, a colour per tile, seams), and
//! inpainting boxes anywhere are filled while every observed pixel stays as measured (or, for a
//! noisy measurement, comes out closer to the photograph: the measurement denoiser). Quality
//! margins (beating the lifted measurement, and for inpainting a flat fill with the mean colour
//! around each box) are the opt-in `quality_targets` test (`cargo test -p davi-engine --test
//! whole_images -- --ignored`): they are the default models' training target (docs/models.md),
//! not yet met by every task. The lattice measure is `metrics::lattice_score` at a tiled
//! model's own tile stride and twice it, and for window models at the strides 32- and 64-pixel
//! tiles would have left. `DAVI_MODEL_DIR` points the test at other models: of the 32-pixel
//! tile models shipped before, super-resolution (3.8) and inpainting (13.7, a phantom hole per
//! tile) fail it; their colorizer's colour per tile scores 2.3 and is not caught.
//! Needs `scripts/fetch-photos.sh` (the test script runs it).
use davi_engine::restore::{RestoreOptions, Restorer};
use davi_engine::{defaults, metrics, pipeline, train::data::load_rgb, weights::model_file};
use davi_sdk::OperatorSpec;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A 1024×768 held-out photograph in [0, 1], `(1, 3, 768, 1024)`: the largest image of the
/// held-out folder, centre-cropped to 4:3 and resized.
fn photo() -> Tensor {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/photos/heldout");
    let path = dir.join("scipy-face.png");
    let path = if path.exists() {
        path
    } else {
        dir.join("coffee.png")
    };
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-photos.sh",
        path.display()
    );
    let img = load_rgb(&path).unwrap().unsqueeze(0);
    let (_, _, h, w) = img.size4().unwrap();
    let (ch, cw) = if w * 3 >= h * 4 {
        (h, h * 4 / 3)
    } else {
        (w * 3 / 4, w)
    };
    let c = img.narrow(2, (h - ch) / 2, ch).narrow(3, (w - cw) / 2, cw);
    if (ch, cw) == (768, 1024) {
        c
    } else {
        c.upsample_bicubic2d([768, 1024], false, None, None)
            .clamp(0.0, 1.0)
    }
}

fn restore(task: &str, spec: &OperatorSpec, obs: &Tensor) -> (Tensor, Restorer) {
    restore_with_noise(task, spec, obs, None)
}

/// [`restore`] telling the restore the measurement's noise (`None`: the model's).
fn restore_with_noise(
    task: &str,
    spec: &OperatorSpec,
    obs: &Tensor,
    measurement_noise: Option<f64>,
) -> (Tensor, Restorer) {
    let path = defaults::model_path(task).unwrap();
    let model = model_file::load(&path, Device::Cpu).unwrap();
    let problem = pipeline::problem_from_observation(spec, obs, 3, Device::Cpu).unwrap();
    let r = Restorer::new(model, Device::Cpu);
    let x = r
        .restore(
            problem.op.as_ref(),
            &problem.y,
            &RestoreOptions {
                measurement_noise,
                ..Default::default()
            },
            &mut |_| true,
        )
        .unwrap();
    (pipeline::to_picture(&x, false), r)
}

fn lift_psnr(spec: &OperatorSpec, obs: &Tensor, clean: &Tensor) -> f64 {
    let lifted = match spec {
        OperatorSpec::Colorization(_) => obs.repeat([1, 3, 1, 1]),
        OperatorSpec::SuperResolution(_) => obs
            .upsample_bicubic2d([768, 1024], false, None, None)
            .clamp(0.0, 1.0),
        _ => obs.shallow_clone(),
    };
    metrics::psnr(&lifted, clean)[0]
}

/// Restore the photograph's simulated measurement for `task`; returns (restored, clean,
/// lifted-measurement PSNR) after checking there is no tile lattice in the error.
fn check(task: &str, spec: OperatorSpec) -> (f64, f64) {
    let clean = photo();
    let obs = pipeline::simulate_observation(&spec, &clean, 11)
        .unwrap()
        .clamp(0.0, 1.0);
    let (out, r) = restore(task, &spec, &obs);
    assert_eq!(out.size(), clean.size(), "{task}");
    assert!(
        out.isfinite().all().int64_value(&[]) == 1,
        "{task}: non-finite output"
    );
    // A tiling can only leave structure at its stride and the stride's multiples, so a tiled
    // model is checked there. Elsewhere the score only measures how the photograph's own
    // content happens to fold: a plain Gaussian blur of this photograph (no tiles at all)
    // scores 2.5 at stride 24, and so does the deblurring model run on 384-pixel tiles.
    // Window models have no stride; they are checked at the strides of 32- and 64-pixel
    // tiles with a quarter overlap, where the per-tile models shipped before failed.
    let strides = match r.model.meta.restore_window {
        None => {
            let t = r.default_tiling();
            vec![t.tile - t.overlap, 2 * (t.tile - t.overlap)]
        }
        Some(_) => vec![24, 48],
    };
    for s in strides {
        let score = metrics::lattice_score(&out, &clean, s);
        eprintln!("{task}: lattice score at stride {s}: {score:.2}");
        assert!(
            score < 2.5,
            "{task}: the error is organised on a {s}-pixel tile lattice (score {score:.2})"
        );
    }
    let restored = metrics::psnr(&out, &clean)[0];
    let lifted = lift_psnr(&spec, &obs, &clean);
    eprintln!("{task}: lifted measurement {lifted:.2} dB -> restored {restored:.2} dB");
    (restored, lifted)
}

#[test]
fn sr4_whole_image() {
    check("sr4", OperatorSpec::for_task("sr4").unwrap());
}

#[test]
fn deblur_whole_image() {
    check("deblur", OperatorSpec::for_task("deblur").unwrap());
}

#[test]
fn denoise_whole_image() {
    check("denoise", OperatorSpec::for_task("denoise").unwrap());
}

#[test]
fn colorize_whole_image() {
    check("colorize", OperatorSpec::for_task("colorize").unwrap());
}

#[test]
fn inpaint_whole_image_official_box() {
    check("inpaint", OperatorSpec::for_task("inpaint").unwrap());
}

/// Three boxes of different sizes away from the centre: every observed pixel comes back
/// exactly as measured; returns the hole MSE of the restoration, of a flat fill with the mean
/// colour of a 16-px ring around each box, and of a mid-gray fill.
fn inpaint_boxes() -> (f64, f64, f64) {
    let clean = photo();
    let boxes: [(i64, i64, i64, i64); 3] =
        [(40, 60, 90, 120), (500, 700, 200, 150), (300, 400, 24, 24)];
    let list: Vec<String> = boxes
        .iter()
        .map(|(t, l, h, w)| format!("{{ top = {t}, left = {l}, height = {h}, width = {w} }}"))
        .collect();
    let spec = OperatorSpec::parse(&format!(
        "kind = \"inpainting\"\nboxes = [{}]",
        list.join(", ")
    ))
    .unwrap();
    let obs = pipeline::simulate_observation(&spec, &clean, 5)
        .unwrap()
        .clamp(0.0, 1.0);
    let (out, r) = restore("inpaint", &spec, &obs);
    let op = davi_engine::operators::build(&spec, 3, 768, 1024, Device::Cpu).unwrap();
    let keep = op.keep_mask().unwrap();
    if r.model.meta.restore_window.is_some() {
        // Observed pixels stay as measured when the measurement is declared clean; a noisy
        // one's are denoised by the model's measurement denoiser, if it has one.
        let (exact, _) = restore_with_noise("inpaint", &spec, &obs, Some(0.0));
        let outside = ((&exact - &obs) * &keep).abs().max().double_value(&[]);
        assert!(
            outside < 1.0 / 255.0,
            "observed pixels changed by {outside}"
        );
        let error = |t: &Tensor| {
            ((t - &clean) * &keep)
                .square()
                .mean(Kind::Float)
                .double_value(&[])
        };
        if r.measurement_denoiser().is_some() {
            let (got, measured) = (error(&out), error(&obs));
            eprintln!(
                "inpaint boxes: observed-pixel MSE {measured:.6} measured, {got:.6} restored"
            );
            assert!(
                got < measured,
                "denoised observed pixels: MSE {got} vs {measured}"
            );
        } else {
            assert_eq!(error(&out), error(&exact));
        }
    }
    let hole: Tensor = 1.0 - &keep;
    let n = hole.sum(Kind::Float).double_value(&[]) * 3.0;
    let hole_mse = |t: &Tensor| {
        ((t - &clean) * &hole)
            .square()
            .sum(Kind::Float)
            .double_value(&[])
            / n
    };
    // the flat fill: each box gets the mean colour of the observed pixels within 16 px of it
    let ring = hole.max_pool2d([33, 33], [1, 1], [16, 16], [1, 1], false) * &keep;
    let flat = obs.shallow_clone() * &keep;
    for (top, left, h, w) in boxes {
        let (t0, l0) = ((top - 16).max(0), (left - 16).max(0));
        let sel = |t: &Tensor| {
            t.narrow(2, t0, (top + h + 16).min(768) - t0).narrow(
                3,
                l0,
                (left + w + 16).min(1024) - l0,
            )
        };
        let rm = sel(&ring);
        let mean = (sel(&obs) * &rm).sum_dim_intlist([2i64, 3].as_slice(), true, Kind::Float)
            / rm.sum(Kind::Float).clamp_min(1.0);
        let mut region = flat.narrow(2, top, h).narrow(3, left, w);
        region.copy_(&mean.expand([1, 3, h, w], false));
    }
    let (got, zero, flat) = (
        hole_mse(&out),
        hole_mse(&(obs.shallow_clone() * &keep + &hole * 0.5)),
        hole_mse(&flat),
    );
    eprintln!(
        "inpaint boxes: hole MSE restored {got:.5}, flat ring-mean fill {flat:.5}, gray fill \
        {zero:.5}"
    );
    (got, flat, zero)
}

#[test]
fn inpaint_boxes_anywhere() {
    let (got, _, zero) = inpaint_boxes();
    assert!(
        got.is_finite() && got < zero,
        "hole MSE {got:.5} vs gray fill {zero:.5}"
    );
}

/// The quality targets of the default models on the whole photograph (opt-in: see the
/// module docs): every task beats its lifted measurement, and box inpainting beats a flat
/// fill with the mean colour around each box.
#[test]
#[ignore = "training target of the default models; run with --ignored"]
fn quality_targets() {
    let mut failed = Vec::new();
    for task in ["sr4", "deblur", "denoise", "inpaint", "colorize"] {
        let (restored, lifted) = check(task, OperatorSpec::for_task(task).unwrap());
        if restored <= lifted {
            failed.push(format!("{task}: {lifted:.2} -> {restored:.2} dB"));
        }
    }
    let (got, flat, _) = inpaint_boxes();
    if got > flat {
        failed.push(format!(
            "inpaint boxes: hole MSE {got:.5} vs flat fill {flat:.5}"
        ));
    }
    assert!(failed.is_empty(), "{}", failed.join("; "));
}
