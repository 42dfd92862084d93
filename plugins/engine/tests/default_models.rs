//! The shipped default models (models/, docs/models.md) load by task name and restore a
//! held-out photograph crop, and every one beats the lift of its measurement there (the
//! degraded image; its bilinear upsampling for 4x SR; the gray image for colorization). Their
//! gain over the classical plug-in is `host-example/cli/tests/default_models.rs` (through
//! `davi eval`, which loads the plug-in as a host does: linked into one binary, the two
//! plugins' entry points would collide); the comparison with the strongest classical methods
//! on 22 crops is `scripts/results.sh` (docs/results.md). Needs `scripts/fetch-photos.sh` (the
//! test script runs it).
use davi_engine::restore::{RestoreOptions, Restorer};
use davi_engine::{defaults, metrics, pipeline, train::data::load_rgb, weights::model_file};
use davi_sdk::OperatorSpec;
use std::path::Path;
use tch::Device;

#[test]
fn default_models_restore_a_heldout_crop() {
    let photo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/photos/heldout/coffee.png");
    assert!(
        photo.exists(),
        "{} is missing: run scripts/fetch-photos.sh",
        photo.display()
    );
    let img = load_rgb(&photo).unwrap();
    let clean = img.narrow(1, 150, 64).narrow(2, 150, 64).unsqueeze(0);
    for task in ["sr4", "deblur", "denoise", "inpaint", "colorize"] {
        let path = defaults::model_path(task).unwrap_or_else(|e| panic!("{task}: {e}"));
        let model = model_file::load(&path, Device::Cpu).unwrap();
        let spec: OperatorSpec = model
            .meta
            .operator
            .clone()
            .expect("generators carry their operator");
        assert!(
            model.meta.restore_tile.is_some() != model.meta.restore_window.is_some(),
            "{task}: a default model restores by tiles or by windows"
        );
        let obs = pipeline::simulate_observation(&spec, &clean, 7).unwrap();
        let obs = obs.clamp(0.0, 1.0);
        let problem = pipeline::problem_from_observation(&spec, &obs, 3, Device::Cpu).unwrap();
        let r = Restorer::new(model, Device::Cpu);
        let x = r
            .restore(
                problem.op.as_ref(),
                &problem.y,
                &RestoreOptions::default(),
                &mut |_| true,
            )
            .unwrap();
        let out = pipeline::to_picture(&x, false);
        assert_eq!(out.size(), vec![1, 3, 64, 64], "{task}");
        assert!(
            out.isfinite().all().int64_value(&[]) == 1,
            "{task}: non-finite output"
        );
        let restored = metrics::psnr(&out, &clean)[0];
        let degraded = match &spec {
            OperatorSpec::Colorization(_) => metrics::psnr(&obs.repeat([1, 3, 1, 1]), &clean)[0],
            OperatorSpec::SuperResolution(_) => metrics::psnr(
                &problem
                    .op
                    .lift(&(obs * 2.0 - 1.0))
                    .g_add_scalar(1.0)
                    .g_div_scalar(2.0)
                    .clamp(0.0, 1.0),
                &clean,
            )[0],
            _ => metrics::psnr(&obs, &clean)[0],
        };
        eprintln!("{task}: degraded {degraded:.2} dB -> restored {restored:.2} dB");
        assert!(
            restored > degraded,
            "{task}: {degraded:.2} -> {restored:.2} dB"
        );
    }
}
