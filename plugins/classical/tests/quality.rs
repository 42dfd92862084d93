//! Each classical method must raise PSNR over the degraded input it was given, for the
//! default spec of its task, on a smooth and on a photograph-like synthetic image.
mod common;

use common::*;
use davi_classical::restore;
use davi_sdk::{OperatorSpec, PlanarImage, Progress};

fn run(spec: &str, y: &PlanarImage) -> PlanarImage {
    let spec = OperatorSpec::parse(spec).unwrap();
    restore(&spec, y, &mut Progress::none()).unwrap()
}

fn report(task: &str, image: &str, before: f64, after: f64) {
    eprintln!(
        "{task:>9} {image:>8}: degraded {before:6.2} dB -> restored {after:6.2} dB ({:+.2})",
        after - before
    );
}

const SIZE: usize = 64;

#[test]
fn deblurring_raises_psnr() {
    for (name, x) in [
        ("smooth", smooth(SIZE, SIZE)),
        ("natural", natural(SIZE, SIZE)),
    ] {
        let mut y = gaussian_blur(&x, 3.0, 61);
        add_noise(&mut y, 0.025, 1);
        let y = clamped(&y);
        let out = run(
            "kind = \"gaussian_blur\"\nsigma = 3.0\nsize = 61\nnoise_sigma = 0.05",
            &y,
        );
        let (before, after) = (psnr(&y, &x), psnr(&out, &x));
        report("deblur", name, before, after);
        assert!(after > before + 2.0, "{name}: {before:.2} -> {after:.2} dB");
    }
}

#[test]
fn upscaling_raises_psnr_over_the_enlarged_measurement() {
    for (name, x) in [
        ("smooth", smooth(SIZE, SIZE)),
        ("natural", natural(SIZE, SIZE)),
    ] {
        for f in [2, 4] {
            let mut y = avg_pool(&x, f);
            add_noise(&mut y, 0.025, 2);
            let y = clamped(&y);
            let out = run(&format!("kind = \"super_resolution\"\nfactor = {f}"), &y);
            assert_eq!((out.width, out.height), (SIZE, SIZE));
            let (before, after) = (psnr(&nearest_up(&y, f), &x), psnr(&out, &x));
            report(&format!("sr x{f}"), name, before, after);
            assert!(
                after > before + 0.4,
                "{name} x{f}: {before:.2} -> {after:.2} dB"
            );
        }
    }
}

#[test]
fn noiseless_upscaling_uses_the_measurement_model() {
    // Back-projection makes the result consistent with the block means it was made from.
    let x = smooth(SIZE, SIZE);
    let y = avg_pool(&x, 4);
    let out = run(
        "kind = \"super_resolution\"\nfactor = 4\nnoise_sigma = 0.0",
        &y,
    );
    let noisy_model = run("kind = \"super_resolution\"\nfactor = 4", &y);
    let (plain, consistent) = (psnr(&noisy_model, &x), psnr(&out, &x));
    report("sr x4 exact", "smooth", plain, consistent);
    assert!(consistent > plain + 0.5, "{plain:.2} -> {consistent:.2} dB");
    let back = avg_pool(&out, 4);
    let worst = back
        .data
        .iter()
        .zip(&y.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 0.01, "D(x) differs from y by {worst}");
}

#[test]
fn denoising_raises_psnr_and_follows_noise_sigma() {
    for (name, x) in [
        ("smooth", smooth(SIZE, SIZE)),
        ("natural", natural(SIZE, SIZE)),
    ] {
        let mut y = x.clone();
        add_noise(&mut y, 0.1, 3);
        let y = clamped(&y);
        let out = run("kind = \"denoising\"\nnoise_sigma = 0.2", &y);
        let (before, after) = (psnr(&y, &x), psnr(&out, &x));
        report("denoise", name, before, after);
        assert!(after > before + 6.0, "{name}: {before:.2} -> {after:.2} dB");
        // Telling the filter the noise is tiny makes it (almost) leave the image alone.
        let weak = run("kind = \"denoising\"\nnoise_sigma = 0.002", &y);
        assert!(psnr(&weak, &y) > 40.0, "noise_sigma is ignored");
    }
}

/// PSNR over the pixels where `mask` is `want`.
fn masked_psnr(a: &PlanarImage, b: &PlanarImage, mask: &[bool], want: bool) -> f64 {
    let n = a.width * a.height;
    let (mut se, mut count) = (0.0f64, 0usize);
    for c in 0..a.channels {
        for (i, m) in mask.iter().enumerate() {
            if *m == want {
                se += (a.data[c * n + i] as f64 - b.data[c * n + i] as f64).powi(2);
                count += 1;
            }
        }
    }
    10.0 * (count as f64 / se.max(1e-20)).log10()
}

#[test]
fn inpainting_raises_psnr_in_the_hole_and_outside() {
    let boxes = "[[boxes]]\ntop = 20\nleft = 14\nheight = 16\nwidth = 24\n";
    for (name, x) in [
        ("smooth", smooth(SIZE, SIZE)),
        ("natural", natural(SIZE, SIZE)),
    ] {
        let spec = OperatorSpec::parse(&format!("kind = \"inpainting\"\n{boxes}")).unwrap();
        let OperatorSpec::Inpainting(p) = &spec else {
            unreachable!()
        };
        let mask = davi_classical::inpaint::box_mask(SIZE, SIZE, &p.boxes_for(SIZE, SIZE));
        // The measurement: the hole blanked to mid-grey (0 in [-1, 1]), then noise everywhere.
        let mut blank = x.clone();
        for c in 0..3 {
            for (i, m) in mask.iter().enumerate() {
                if *m {
                    blank.data[c * SIZE * SIZE + i] = 0.5;
                }
            }
        }
        let mut y = blank.clone();
        add_noise(&mut y, 0.025, 4);
        let y = clamped(&y);
        let out = restore(&spec, &y, &mut Progress::none()).unwrap();
        let (before, after) = (psnr(&y, &x), psnr(&out, &x));
        report("inpaint", name, before, after);
        assert!(after > before + 3.0, "{name}: {before:.2} -> {after:.2} dB");
        let (hole_before, hole_after) = (
            masked_psnr(&y, &x, &mask, true),
            masked_psnr(&out, &x, &mask, true),
        );
        report("  hole", name, hole_before, hole_after);
        assert!(
            hole_after > hole_before + 3.0,
            "{name} hole: {hole_before:.2} -> {hole_after:.2} dB"
        );
        // Noise in the measured pixels is removed too (the spec says how much there is).
        let (known_before, known_after) = (
            masked_psnr(&y, &x, &mask, false),
            masked_psnr(&out, &x, &mask, false),
        );
        report("  known", name, known_before, known_after);
        assert!(
            known_after > known_before + 1.5,
            "{name} known: {known_before:.2} -> {known_after:.2} dB"
        );

        // Without noise, measured pixels are kept exactly and only the hole changes.
        let exact = OperatorSpec::parse(&format!(
            "kind = \"inpainting\"\nnoise_sigma = 0.0\n{boxes}"
        ))
        .unwrap();
        let out = restore(&exact, &blank, &mut Progress::none()).unwrap();
        for c in 0..3 {
            for (i, m) in mask.iter().enumerate() {
                if !m {
                    assert_eq!(
                        out.data[c * SIZE * SIZE + i],
                        blank.data[c * SIZE * SIZE + i]
                    );
                }
            }
        }
        let (hole_before, hole_after) = (
            masked_psnr(&blank, &x, &mask, true),
            masked_psnr(&out, &x, &mask, true),
        );
        report("  exact", name, hole_before, hole_after);
        assert!(
            hole_after > hole_before + 3.0,
            "{name} noiseless hole: {hole_before:.2} -> {hole_after:.2} dB"
        );
    }
    // The official default box (centred half) also works.
    let out = run("kind = \"inpainting\"", &smooth(SIZE, SIZE));
    assert_eq!(out.data.len(), SIZE * SIZE * 3);
}
