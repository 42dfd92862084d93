//! DPS (Chung et al., ICLR 2023, as described in docs/algorithm.md §8) and `davi eval`
//! on tiny random networks: what must hold whatever the weights are — shapes,
//! finiteness, the requested NFE, determinism for a seed, cancellation, the guidance pulling
//! the sample towards the measurement, and an evaluation report with every requested method.
//! The networks are a few thousand parameters on 16–24 pixel images, so this runs in seconds.
use davi_engine::diffusion::{BetaSchedule, Diffusion};
use davi_engine::dps::{Dps, DpsOptions};
use davi_engine::error::EngineError;
use davi_engine::eval::{self, EvalConfig, ExternalError, ExternalMethod, Method, Models};
use davi_engine::operators;
use davi_engine::restore::{seeded_normal, SplitMix64};
use davi_engine::unet::UNetConfig;
use davi_engine::weights::{model_file, LoadedModel, ModelMeta, ModelRole};
use davi_sdk::OperatorSpec;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

const CPU: Device = Device::Cpu;

fn tiny_unet() -> UNetConfig {
    UNetConfig {
        image_size: 16,
        model_channels: 16,
        num_res_blocks: 1,
        attention_resolutions: vec![8],
        channel_mult: vec![1, 2],
        num_head_channels: 16,
        norm_groups: 8,
        ..UNetConfig::ffhq256()
    }
}

/// A random tiny network whose zero-initialised layers are perturbed, so its output depends
/// on its input.
fn tiny(
    role: ModelRole,
    schedule: BetaSchedule,
    steps: usize,
    operator: Option<OperatorSpec>,
    seed: i64,
) -> LoadedModel {
    let meta = ModelMeta {
        role,
        unet: tiny_unet(),
        schedule,
        diffusion_steps: steps,
        operator,
        perturb_h: (role == ModelRole::Generator).then_some(0.1),
        restore_tile: None,
        measurement_denoiser: None,
        restore_window: None,
        provenance: serde_json::json!({"test": true}),
    };
    let m = LoadedModel::random(meta, CPU, seed).unwrap();
    tch::no_grad(|| {
        for (_, mut v) in m.vs.variables() {
            let r = v.randn_like() * 0.02;
            v.copy_(&(&v + r));
        }
    });
    m
}

fn prior(seed: i64) -> LoadedModel {
    tiny(ModelRole::Prior, BetaSchedule::Linear, 1000, None, seed)
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

/// A measurement of a smooth image under `task` at 16x16.
fn problem(task: &str) -> (Box<dyn operators::Operator>, Tensor) {
    let spec = OperatorSpec::for_task(task).unwrap();
    let op = operators::build(&spec, 3, 16, 16, CPU).unwrap();
    let ramp = Tensor::linspace(-0.8, 0.8, 16, (Kind::Float, CPU));
    let x = (ramp.view([1, 1, 1, 16]) * ramp.view([1, 1, 16, 1]).cos())
        .expand([1, 3, 16, 16], false)
        .contiguous();
    let y = tch::no_grad(|| op.forward(&x));
    (op, y)
}

fn run(dps: &Dps, task: &str, opts: &DpsOptions) -> davi_engine::dps::DpsOutput {
    let (op, y) = problem(task);
    dps.sample(op.as_ref(), &y, (16, 16), opts, &mut |_| true)
        .unwrap()
}

#[test]
fn dps_runs_the_requested_steps_and_is_deterministic() {
    let dps = Dps::new(prior(11)).unwrap();
    let opts = DpsOptions {
        nfe: 12,
        scale: 0.3,
        seed: 5,
    };
    let a = run(&dps, "sr4", &opts);
    assert_eq!(a.sample.size(), vec![1, 3, 16, 16]);
    assert_eq!(a.nfe, 12);
    assert_eq!(a.timesteps.len(), 12);
    assert_eq!(
        (a.timesteps[0], a.timesteps[11]),
        (999, 0),
        "respaced chain runs from T-1 down to 0"
    );
    assert!(a.timesteps.windows(2).all(|w| w[0] > w[1]));
    assert_eq!(a.residual_norms.len(), 12);
    assert!(
        a.residual_norms.iter().all(|r| r.is_finite() && *r > 0.0),
        "{:?}",
        a.residual_norms
    );
    assert!(
        a.sample.isfinite().all().int64_value(&[]) == 1,
        "finite sample"
    );
    assert!(
        max_abs(&a.sample) < 10.0,
        "x is a clamped x̂0 minus a bounded step"
    );

    let b = run(&dps, "sr4", &opts);
    assert_eq!(
        max_abs(&(&a.sample - &b.sample)),
        0.0,
        "same seed, same sample"
    );
    assert_eq!(a.residual_norms, b.residual_norms);
    let c = run(&dps, "sr4", &DpsOptions { seed: 6, ..opts });
    assert!(
        max_abs(&(&a.sample - &c.sample)) > 1e-3,
        "the seed must matter"
    );
}

#[test]
fn dps_full_chain_when_nfe_equals_the_prior_steps() {
    // 50 linear steps: betas 0.002 ... 0.4 (the schedule scales with 1000 / T).
    let dps = Dps::new(tiny(ModelRole::Prior, BetaSchedule::Linear, 50, None, 12)).unwrap();
    let out = run(
        &dps,
        "inpaint",
        &DpsOptions {
            nfe: 50,
            scale: 0.5,
            seed: 1,
        },
    );
    assert_eq!(out.nfe, 50);
    assert_eq!(
        out.timesteps,
        (0..50).rev().collect::<Vec<i64>>(),
        "no respacing: every step visited"
    );
    assert!(out.sample.isfinite().all().int64_value(&[]) == 1);
}

/// A two-step chain (timesteps 999 then 0), transcribed by hand from docs/algorithm.md §8.2
/// with the respaced betas of §8.4 (β'_999 = 1 − ᾱ_999/ᾱ_0), must give exactly what
/// the sampler gives: the Tweedie estimate, the learned-range ancestral noise of the first
/// step, and at the last step `x̂0 − scale·∇‖y − A(x̂0)‖` with no noise.
#[test]
fn two_steps_match_a_transcription_of_the_reference() {
    let bytes = {
        let m = prior(17);
        let vars: std::collections::BTreeMap<String, Tensor> =
            m.vs.variables().into_iter().collect();
        model_file::to_bytes(&m.meta, &vars.into_iter().collect::<Vec<_>>()).unwrap()
    };
    let dps = Dps::new(model_file::load_bytes(&bytes, CPU).unwrap()).unwrap();
    let net = model_file::load_bytes(&bytes, CPU).unwrap();
    let (op, y) = problem("sr4");
    let (seed, scale) = (21u64, 0.7);
    let got = dps
        .sample(
            op.as_ref(),
            &y,
            (16, 16),
            &DpsOptions {
                nfe: 2,
                scale,
                seed,
            },
            &mut |_| true,
        )
        .unwrap();
    assert_eq!(got.timesteps, vec![999, 0]);

    let abar = Diffusion::new(BetaSchedule::Linear, 1000).alphas_cumprod;
    let (a0, a999) = (abar[0], abar[999]);
    let shape = [1i64, 3, 16, 16];
    let mut g = SplitMix64(seed);
    let x_t = seeded_normal(&shape, g.next());
    let z = seeded_normal(&shape, g.next());
    // One guided step at prior timestep t with cumulative product a, returning (x̂0, ∇‖r‖, v).
    let guided = |x: &Tensor, t: i64, a: f64| -> (Tensor, Tensor, Tensor) {
        let x = x.detach().set_requires_grad(true);
        let out = net.net.forward(&x, &Tensor::from_slice(&[t]));
        let (eps, v) = (out.narrow(1, 0, 3), out.narrow(1, 3, 3));
        let x0 = (&x * (1.0 / a).sqrt() - eps * (1.0 / a - 1.0).sqrt()).clamp(-1.0, 1.0);
        let loss = (&y - op.forward(&x0)).square().sum(Kind::Float).sqrt();
        loss.backward();
        (x0.detach(), x.grad(), v.detach())
    };
    // Step 1: t = 999, previous cumulative product ᾱ_0.
    let (x0, grad, v) = guided(&x_t, 999, a999);
    let beta = 1.0 - a999 / a0;
    let c1 = beta * a0.sqrt() / (1.0 - a999);
    let c2 = (1.0 - a0) * (1.0 - beta).sqrt() / (1.0 - a999);
    let var = beta * (1.0 - a0) / (1.0 - a999);
    let f = (v + 1.0) / 2.0;
    let logvar = &f * beta.ln() + (1f64 - &f) * var.ln();
    let x_mid = x0 * c1 + &x_t * c2 + (logvar * 0.5).exp() * z - grad * scale;
    // Step 2: t = 0, mean = x̂0, no noise.
    let (x0, grad, _) = guided(&x_mid, 0, a0);
    let want = x0 - grad * scale;
    let err = max_abs(&(&got.sample - &want));
    assert!(
        err < 1e-4,
        "sampler differs from the transcription by {err}"
    );
    assert!(max_abs(&want) > 0.1, "a non-trivial sample");
}

#[test]
fn guidance_pulls_the_sample_towards_the_measurement() {
    // Denoising: A = I, so ‖y − x‖ of the result measures consistency directly. Unguided
    // samples of a random prior ignore y; guided ones must end closer to it.
    let dps = Dps::new(prior(13)).unwrap();
    let (op, y) = problem("denoise");
    // Each guided step moves x by at most `scale` in L2 norm (the gradient of a norm), so a
    // short chain needs a larger scale than the official 1000-step one to show the pull.
    for seed in 0..3u64 {
        let residual = |scale| {
            let o = DpsOptions {
                nfe: 25,
                scale,
                seed,
            };
            let s = dps
                .sample(op.as_ref(), &y, (16, 16), &o, &mut |_| true)
                .unwrap()
                .sample;
            (&y - s.clamp(-1.0, 1.0)).norm().double_value(&[])
        };
        let (free, guided) = (residual(0.0), residual(3.0));
        assert!(
            guided < 0.8 * free,
            "seed {seed}: guided residual {guided} vs unguided {free}"
        );
    }
}

#[test]
fn dps_batches_are_independent_runs() {
    // The loss is Σ_b ‖r_b‖ (per-sample norms) and each sample has its own noise: a batch
    // of two copies of y gives two different samples of the right shape.
    let dps = Dps::new(prior(14)).unwrap();
    let (op, y) = problem("sr4");
    let y2 = Tensor::cat(&[&y, &y], 0);
    let out = dps
        .sample(
            op.as_ref(),
            &y2,
            (16, 16),
            &DpsOptions {
                nfe: 4,
                scale: 0.3,
                seed: 2,
            },
            &mut |_| true,
        )
        .unwrap();
    assert_eq!(out.sample.size(), vec![2, 3, 16, 16]);
    assert!(max_abs(&(out.sample.get(0) - out.sample.get(1))) > 1e-3);
}

#[test]
fn dps_cancels_and_rejects_bad_input() {
    let dps = Dps::new(prior(15)).unwrap();
    let (op, y) = problem("sr4");
    let opts = DpsOptions {
        nfe: 10,
        scale: 0.3,
        seed: 0,
    };
    let mut calls = 0;
    let r = dps.sample(op.as_ref(), &y, (16, 16), &opts, &mut |f| {
        calls += 1;
        f < 0.5
    });
    assert!(matches!(r, Err(EngineError::Cancelled)), "{r:?}");
    assert_eq!(calls, 5, "stops at the first callback that says no");
    assert!(dps
        .sample(
            op.as_ref(),
            &y,
            (16, 16),
            &DpsOptions { nfe: 0, ..opts },
            &mut |_| true
        )
        .is_err());
    assert!(dps
        .sample(
            op.as_ref(),
            &y,
            (16, 16),
            &DpsOptions { nfe: 1001, ..opts },
            &mut |_| true
        )
        .is_err());
    assert!(dps
        .sample(
            op.as_ref(),
            &y,
            (16, 16),
            &DpsOptions {
                scale: f64::NAN,
                ..opts
            },
            &mut |_| true
        )
        .is_err());
    assert!(
        dps.sample(op.as_ref(), &y, (15, 16), &opts, &mut |_| true)
            .is_err(),
        "odd size for a 2-level U-Net"
    );
    assert!(
        dps.sample(op.as_ref(), &y, (32, 32), &opts, &mut |_| true)
            .is_err(),
        "y does not fit the size"
    );
    let one = dps
        .sample(
            op.as_ref(),
            &y,
            (16, 16),
            &DpsOptions { nfe: 1, ..opts },
            &mut |_| true,
        )
        .unwrap();
    assert_eq!((one.nfe, one.timesteps.clone()), (1, vec![999]));
    let generator = tiny(
        ModelRole::Generator,
        BetaSchedule::I2sb,
        1000,
        OperatorSpec::for_task("sr4").ok(),
        16,
    );
    assert!(Dps::new(generator).is_err(), "a generator is not a prior");
}

/// A temporary folder with two small photographs-to-be (smooth colour patterns).
fn image_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("davi-eval-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for (i, (w, h)) in [(22u32, 18u32), (17, 26)].into_iter().enumerate() {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let v = |a: u32, b: u32| ((a * 37 + b * 11 + i as u32 * 50) % 200 + 30) as u8;
            image::Rgb([v(x, y), v(y, x + 3), ((x + y) * 6 % 256) as u8])
        });
        let path = if i == 0 {
            dir.join("a.png")
        } else {
            dir.join("sub").join("b.png")
        };
        img.save(&path).unwrap();
    }
    dir
}

/// A stand-in for the classical plugin (which the engine does not link): bilinear lift of the
/// observation, or "unsupported" for colorization.
struct Bilinear {
    calls: usize,
}

impl ExternalMethod for Bilinear {
    fn restore(
        &mut self,
        spec: &OperatorSpec,
        observation: &Tensor,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Tensor, ExternalError> {
        self.calls += 1;
        let f = match spec {
            OperatorSpec::SuperResolution(s) => s.factor as i64,
            OperatorSpec::Colorization(_) => {
                return Err(ExternalError::Unsupported("no colorization".into()))
            }
            _ => 1,
        };
        let (_, _, h, w) = observation.size4().unwrap();
        if !progress(1.0) {
            return Err(ExternalError::Cancelled);
        }
        Ok(observation.upsample_bilinear2d([h * f, w * f], false, None, None))
    }
}

/// The tiny generator and prior as model-file bytes: tch's global RNG is shared by tests
/// running in parallel, so the same random network is built once and reloaded for each run.
fn model_bytes(spec: &OperatorSpec) -> (Vec<u8>, Vec<u8>) {
    let bytes = |m: LoadedModel| {
        let vars: std::collections::BTreeMap<String, Tensor> =
            m.vs.variables().into_iter().collect();
        model_file::to_bytes(&m.meta, &vars.into_iter().collect::<Vec<_>>()).unwrap()
    };
    (
        bytes(tiny(
            ModelRole::Generator,
            BetaSchedule::I2sb,
            1000,
            Some(spec.clone()),
            21,
        )),
        bytes(prior(22)),
    )
}

fn models((generator, prior): &(Vec<u8>, Vec<u8>)) -> Models {
    Models {
        generator: Some(model_file::load_bytes(generator, CPU).unwrap()),
        prior: Some(model_file::load_bytes(prior, CPU).unwrap()),
        generator_source: Some("tiny generator".into()),
        prior_source: Some("tiny prior".into()),
    }
}

#[test]
fn eval_reports_every_method_with_finite_numbers() {
    let dir = image_dir("all");
    let spec = OperatorSpec::for_task("sr4").unwrap();
    let mut cfg = EvalConfig::new("sr4", spec.clone());
    cfg.dps_nfe = 6;
    cfg.seed = 3;
    let mut classical = Bilinear { calls: 0 };
    let mut seen = Vec::new();
    let nets = model_bytes(&spec);
    let report = eval::evaluate(&dir, &cfg, models(&nets), Some(&mut classical), &mut |p| {
        seen.push(p.method);
        true
    })
    .unwrap();
    assert_eq!(classical.calls, 2);
    assert_eq!(report.images.len(), 2);
    assert_eq!(report.crop_multiple, 4);
    let names: Vec<&str> = report.images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["a.png", "sub/b.png"]);
    assert_eq!((report.images[0].height, report.images[0].width), (16, 20));
    assert_eq!((report.images[1].height, report.images[1].width), (24, 16));
    assert_eq!(
        report.methods.iter().map(|m| m.method).collect::<Vec<_>>(),
        Method::ALL.to_vec()
    );
    for m in &report.methods {
        assert!(m.ran, "{} skipped: {:?}", m.method, m.note);
        assert_eq!(m.per_image.len(), 2, "{}", m.method);
        for v in [m.psnr, m.ssim, m.seconds_per_image, m.speedup_vs_dps] {
            assert!(v.is_some_and(f64::is_finite), "{}: {v:?}", m.method);
        }
        for s in &m.per_image {
            assert!(
                s.psnr.is_finite() && s.psnr > 0.0 && s.ssim.is_finite() && s.ssim <= 1.0,
                "{}: {s:?}",
                m.method
            );
        }
    }
    let nfe = |m: Method| report.methods.iter().find(|r| r.method == m).unwrap().nfe;
    assert_eq!(
        (
            nfe(Method::Davi),
            nfe(Method::Dps),
            nfe(Method::Classical),
            nfe(Method::Lift)
        ),
        (Some(1), Some(6), Some(0), Some(0))
    );
    // The stand-in *is* the lift for super-resolution, on the clamped observation.
    let psnr = |m: Method| {
        report
            .methods
            .iter()
            .find(|r| r.method == m)
            .unwrap()
            .psnr
            .unwrap()
    };
    assert!((psnr(Method::Classical) - psnr(Method::Lift)).abs() < 0.5);
    for m in Method::ALL {
        assert!(
            seen.contains(&m) || m == Method::Lift,
            "progress reported for {m}"
        );
    }
    assert_eq!(report.targets.len(), 3);
    assert!(report.targets.iter().all(|t| t.met.is_some()));

    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["methods"].as_array().unwrap().len(), 4);
    for m in json["methods"].as_array().unwrap() {
        for key in ["psnr", "ssim", "nfe", "seconds_per_image", "speedup_vs_dps"] {
            assert!(m[key].is_number(), "{key} of {}: {}", m["method"], m[key]);
        }
    }
    let md = report.to_markdown();
    assert!(
        md.contains("| method | PSNR (dB) | SSIM | NFE | seconds/image | speed-up vs DPS |"),
        "{md}"
    );
    for m in [
        "| davi |",
        "| dps |",
        "| classical |",
        "| lift |",
        "sub/b.png",
    ] {
        assert!(md.contains(m), "{m} missing from\n{md}");
    }

    // Everything but wall time is a function of the seed.
    let again = eval::evaluate(
        &dir,
        &cfg,
        models(&nets),
        Some(&mut Bilinear { calls: 0 }),
        &mut |_| true,
    )
    .unwrap();
    for (a, b) in report.methods.iter().zip(&again.methods) {
        assert_eq!(
            (a.psnr, a.ssim),
            (b.psnr, b.ssim),
            "{} differs between identical runs",
            a.method
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eval_skips_what_it_cannot_run() {
    let dir = image_dir("skip");
    let spec = OperatorSpec::for_task("colorize").unwrap();
    let mut cfg = EvalConfig::new("colorize", spec);
    cfg.methods = vec![Method::Lift, Method::Dps, Method::Classical, Method::Davi];
    cfg.max_side = Some(12);
    let report = eval::evaluate(
        &dir,
        &cfg,
        Models::default(),
        Some(&mut Bilinear { calls: 0 }),
        &mut |_| true,
    )
    .unwrap();
    let order: Vec<Method> = report.methods.iter().map(|m| m.method).collect();
    assert_eq!(order, cfg.methods, "report keeps the requested order");
    for m in &report.methods {
        match m.method {
            Method::Lift => {
                assert!(m.ran && m.psnr.is_some_and(f64::is_finite));
                assert!(m.speedup_vs_dps.is_none(), "no DPS, no speed-up");
            }
            _ => assert!(
                !m.ran && m.note.is_some() && m.psnr.is_none(),
                "{}: {:?}",
                m.method,
                m.note
            ),
        }
    }
    assert!(report
        .images
        .iter()
        .all(|i| i.height <= 12 && i.width <= 12));
    assert!(report.targets.iter().all(|t| t.met.is_none()));
    let md = report.to_markdown();
    assert!(
        md.contains("| dps | — | — | — | — | skipped: no prior model given"),
        "{md}"
    );
    assert!(
        md.contains("| classical | — | — | — | — | skipped: does not support this operator"),
        "{md}"
    );

    // A prior where a generator belongs is an error, not a silent skip.
    let wrong = Models {
        generator: Some(prior(23)),
        ..Models::default()
    };
    assert!(eval::evaluate(&dir, &cfg, wrong, None, &mut |_| true).is_err());
    // So is an empty folder.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(eval::evaluate(&empty, &cfg, Models::default(), None, &mut |_| true).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
