//! `davi eval`: simulate measurements from clean photographs and score restoration methods.
//!
//! One table puts DAVI's one-step restoration ("Diffusion Prior-Based Amortized Variational
//! Inference for Noisy Inverse Problems", ECCV 2024) next to its many-step teacher-based
//! competitor DPS (Chung et al., ICLR 2023; [`crate::dps`]), a
//! classical restoration plugin and the trivial lift of the measurement, on the same
//! held-out photographs, measurements and metrics. This module is that evaluation:
//!
//! 1. every image under a folder (`train::data::list_images`, sorted) is loaded as RGB in
//!    [0, 1], optionally limited to `max_side` pixels per side (centre crop, or an
//!    antialiased downscale), then centre-cropped so both sides are multiples of every
//!    network's size multiple and of the super-resolution factor, so all methods see the
//!    same pixels;
//! 2. the observation is simulated with [`pipeline::simulate_observation`] from a seed that
//!    depends only on the run's seed and the image's relative path (adding images does not
//!    change the others' measurements);
//! 3. each method restores it; outputs are clamped to [0, 1] and scored against the clean
//!    image with [`metrics::psnr`] (data range 1) and [`metrics::ssim`]; wall time covers
//!    the restoration of one image from its observation (models are loaded beforehand), and
//!    NFE counts network evaluations per image.
//!
//! Methods: `davi` (a one-step generator through [`Restorer`], NFE 1), `dps` (a prior through
//! [`Dps`], NFE as asked, 1000 by default), `classical` (supplied by the host through
//! [`ExternalMethod`], because this crate does not link the classical plugin; NFE 0), and
//! `lift` (the operator's lift of `y`: bilinear up-sampling for super-resolution, the noisy
//! image for denoising and blur, the zero-filled image for inpainting, gray replicated for
//! colorization; NFE 0). A method whose model is missing or which does not support the
//! operator is reported as skipped with a note instead of failing the run.
//!
//! Conventions: the engine methods get the unclamped simulated observation, as the official
//! evaluators do with tensors; the external method gets it clamped to [0, 1], as it would be
//! read from an image file. Per-image PSNRs of identical images (+∞) are written as 100 dB,
//! like [`metrics::mean`]. The one-step method gets one untimed warm-up call on the first
//! image, so one-off start-up costs (allocator, cuDNN) are not billed to a method whose whole
//! cost is one call; DPS amortises them over its steps.
use crate::device::device_name;
use crate::dps::{self, Dps, DpsOptions};
use crate::error::{EngineError, Result};
use crate::metrics;
use crate::pipeline;
use crate::restore::{Precision, RestoreOptions, Restorer, SplitMix64};
use crate::train::data::{list_images, load_rgb, resize_aa};
use crate::weights::{model_file, LoadedModel};
use davi_sdk::OperatorSpec;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// A restoration method `davi eval` can score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Davi,
    Dps,
    Classical,
    Lift,
}

impl Method {
    pub const ALL: [Method; 4] = [Method::Davi, Method::Dps, Method::Classical, Method::Lift];

    pub fn name(self) -> &'static str {
        match self {
            Method::Davi => "davi",
            Method::Dps => "dps",
            Method::Classical => "classical",
            Method::Lift => "lift",
        }
    }

    /// Parse a comma-separated list (`davi,dps,classical,lift`); order is kept, repeats dropped.
    pub fn parse_list(text: &str) -> Result<Vec<Method>> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let m = Method::ALL
                .into_iter()
                .find(|m| m.name() == part)
                .ok_or_else(|| {
                    EngineError::InvalidInput(format!(
                        "unknown method `{part}` (known: davi, dps, classical, lift)"
                    ))
                })?;
            if !out.contains(&m) {
                out.push(m);
            }
        }
        if out.is_empty() {
            return Err(EngineError::InvalidInput("no method selected".into()));
        }
        Ok(out)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How images larger than `max_side` are brought down to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    /// Centre crop each side to at most `max_side` (keeps the pixel scale).
    #[default]
    Crop,
    /// Antialiased downscale so the longer side is `max_side` (keeps the whole picture).
    Resize,
}

impl std::str::FromStr for Fit {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "crop" => Ok(Fit::Crop),
            "resize" => Ok(Fit::Resize),
            other => Err(EngineError::InvalidInput(format!(
                "--fit must be crop or resize, got `{other}`"
            ))),
        }
    }
}

/// What to evaluate.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    /// A label for the task in the report (`sr4`, or the spec file's name).
    pub task: String,
    pub spec: OperatorSpec,
    pub seed: u64,
    pub methods: Vec<Method>,
    /// Limit on each image side before the crop to a multiple.
    pub max_side: Option<i64>,
    pub fit: Fit,
    /// DPS steps (= NFE).
    pub dps_nfe: usize,
    /// DPS `scale`; `None` = [`dps::default_scale`].
    pub dps_scale: Option<f64>,
    /// DAVI perturbation `h`; `None` = the model's.
    pub perturb_h: Option<f64>,
    pub device: Device,
    /// Precision of the DAVI generator's network (DPS always runs f32).
    pub precision: Precision,
}

impl EvalConfig {
    /// Defaults: every method, seed 0, no size limit, official DPS (1000 steps), CPU.
    pub fn new(task: impl Into<String>, spec: OperatorSpec) -> Self {
        EvalConfig {
            task: task.into(),
            spec,
            seed: 0,
            methods: Method::ALL.to_vec(),
            max_side: None,
            fit: Fit::Crop,
            dps_nfe: dps::DEFAULT_NFE,
            dps_scale: None,
            perturb_h: None,
            device: Device::Cpu,
            precision: Precision::Fp32,
        }
    }
}

/// The networks an evaluation uses; a missing one skips its method.
#[derive(Default)]
pub struct Models {
    /// A DAVI one-step generator (role `generator`).
    pub generator: Option<LoadedModel>,
    /// A diffusion prior for DPS (role `prior`).
    pub prior: Option<LoadedModel>,
    /// Where each came from, for the report.
    pub generator_source: Option<String>,
    pub prior_source: Option<String>,
}

impl Models {
    /// Load the given model files onto `device`.
    pub fn load(generator: Option<&Path>, prior: Option<&Path>, device: Device) -> Result<Self> {
        Ok(Models {
            generator: generator.map(|p| model_file::load(p, device)).transpose()?,
            prior: prior.map(|p| model_file::load(p, device)).transpose()?,
            generator_source: generator.map(|p| p.display().to_string()),
            prior_source: prior.map(|p| p.display().to_string()),
        })
    }
}

/// Why an external method produced no image.
#[derive(Debug)]
pub enum ExternalError {
    /// The method does not handle this operator: the method is skipped with this note.
    Unsupported(String),
    /// The progress callback asked to stop.
    Cancelled,
    /// Anything else: the evaluation fails with this message.
    Failed(String),
}

/// A method implemented outside the engine (the classical plugin, which only the host links).
pub trait ExternalMethod {
    /// Restore `observation`, `(1, C, h, w)` in [0, 1] (clamped), to `(1, 3, H, W)` in [0, 1]
    /// at the clean image's size. `progress(fraction)` returns false to cancel.
    fn restore(
        &mut self,
        spec: &OperatorSpec,
        observation: &Tensor,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> std::result::Result<Tensor, ExternalError>;
}

/// Where an evaluation is, for progress displays.
#[derive(Clone, Debug)]
pub struct EvalProgress<'a> {
    /// 0-based index of the image and the number of images.
    pub image: usize,
    pub images: usize,
    pub name: &'a str,
    pub method: Method,
    /// Fraction of this method's work on this image.
    pub fraction: f32,
}

/// One image of the evaluation set, as evaluated.
#[derive(Clone, Debug, Serialize)]
pub struct ImageEntry {
    /// Path relative to the image folder.
    pub name: String,
    pub height: i64,
    pub width: i64,
    /// Seed of this image's measurement noise.
    pub measurement_seed: u64,
}

/// One method's score on one image.
#[derive(Clone, Debug, Serialize)]
pub struct ImageScore {
    pub name: String,
    pub psnr: f64,
    pub ssim: f64,
    pub seconds: f64,
}

/// One method's results.
#[derive(Clone, Debug, Serialize)]
pub struct MethodReport {
    pub method: Method,
    /// False when the method was skipped (see `note`).
    pub ran: bool,
    pub note: Option<String>,
    /// Network evaluations per image.
    pub nfe: Option<usize>,
    /// Means over images.
    pub psnr: Option<f64>,
    pub ssim: Option<f64>,
    pub seconds_per_image: Option<f64>,
    /// DPS seconds per image divided by this method's.
    pub speedup_vs_dps: Option<f64>,
    pub per_image: Vec<ImageScore>,
    /// Method settings (model file, DPS scale, perturbation h, ...).
    pub settings: serde_json::Value,
}

/// One claim of one-step restoration against its competitors (see [`EvalReport::targets`])
/// and whether this run bears it out.
#[derive(Clone, Debug, Serialize)]
pub struct ClaimCheck {
    /// The claim, e.g. "DAVI PSNR >= DPS-1000 PSNR".
    pub target: String,
    /// `None` when a method it needs did not run.
    pub met: Option<bool>,
    /// The measured values behind the verdict.
    pub detail: String,
}

/// The whole evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub task: String,
    pub spec: OperatorSpec,
    pub seed: u64,
    pub device: String,
    /// Both image sides are multiples of this.
    pub crop_multiple: i64,
    pub max_side: Option<i64>,
    pub fit: Fit,
    pub images: Vec<ImageEntry>,
    pub methods: Vec<MethodReport>,
    /// The comparisons the evaluation exists to make: DAVI's PSNR at least DPS-1000's and
    /// above the classical baseline's, at least 500x less wall time than DPS.
    pub targets: Vec<ClaimCheck>,
}

/// A 64-bit FNV-1a hash, for turning image names into seeds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The seed of one image's random stream `purpose` (1 measurement, 2 DAVI, 3 DPS), from the
/// run seed and the image's relative name; distinct purposes never share noise.
pub fn image_seed(seed: u64, name: &str, purpose: u64) -> u64 {
    let mut g =
        SplitMix64(seed ^ fnv1a(name.as_bytes()) ^ purpose.wrapping_mul(0xA24B_AED4_963E_E407));
    g.next()
}

fn lcm(a: i64, b: i64) -> i64 {
    fn gcd(a: i64, b: i64) -> i64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    a / gcd(a, b) * b
}

/// Bring a `(3, H, W)` image to the evaluation geometry: the `max_side` policy, then a centre
/// crop to multiples of `multiple`.
pub fn prepare_image(
    img: &Tensor,
    multiple: i64,
    max_side: Option<i64>,
    fit: Fit,
) -> Result<Tensor> {
    let (_, mut h, mut w) = img
        .size3()
        .map_err(|_| EngineError::InvalidInput("expected a (3, H, W) image".into()))?;
    let mut x = img.shallow_clone();
    if let Some(limit) = max_side {
        if limit < 1 {
            return Err(EngineError::InvalidInput(format!(
                "--max-side must be positive, got {limit}"
            )));
        }
        match fit {
            Fit::Resize if h.max(w) > limit => {
                let s = limit as f64 / h.max(w) as f64;
                let (nh, nw) = (
                    ((h as f64 * s).round() as i64).max(1),
                    ((w as f64 * s).round() as i64).max(1),
                );
                x = resize_aa(&x.unsqueeze(0), nh, nw)
                    .squeeze_dim(0)
                    .clamp(0.0, 1.0);
                (h, w) = (nh, nw);
            }
            Fit::Crop => {
                let (nh, nw) = (h.min(limit), w.min(limit));
                x = x.narrow(1, (h - nh) / 2, nh).narrow(2, (w - nw) / 2, nw);
                (h, w) = (nh, nw);
            }
            Fit::Resize => {}
        }
    }
    let (nh, nw) = (h - h % multiple, w - w % multiple);
    if nh == 0 || nw == 0 {
        return Err(EngineError::InvalidInput(format!(
            "a {w}x{h} image is smaller than the {multiple}-pixel multiple the networks and \
                operator need"
        )));
    }
    Ok(x.narrow(1, (h - nh) / 2, nh)
        .narrow(2, (w - nw) / 2, nw)
        .contiguous())
}

/// Per-method state during a run.
struct Running {
    method: Method,
    note: Option<String>,
    nfe: Option<usize>,
    scores: Vec<ImageScore>,
    settings: serde_json::Value,
    skipped: bool,
}

/// Evaluate every image under `dir`.
pub fn evaluate(
    dir: &Path,
    cfg: &EvalConfig,
    models: Models,
    mut classical: Option<&mut dyn ExternalMethod>,
    progress: &mut dyn FnMut(&EvalProgress) -> bool,
) -> Result<EvalReport> {
    let files = list_images(dir)?;
    let spec = &cfg.spec;
    spec.validate()?;
    if cfg.methods.is_empty() {
        return Err(EngineError::InvalidInput("no method selected".into()));
    }
    let wants = |m: Method| cfg.methods.contains(&m);

    let mut runs: Vec<Running> = cfg
        .methods
        .iter()
        .map(|&method| Running {
            method,
            note: None,
            nfe: None,
            scores: Vec::new(),
            settings: serde_json::json!({}),
            skipped: false,
        })
        .collect();
    let skip = |runs: &mut Vec<Running>, m: Method, note: String| {
        if let Some(r) = runs.iter_mut().find(|r| r.method == m) {
            r.skipped = true;
            r.note = Some(note);
        }
    };

    // Both sides must be multiples of every network's size multiple and of the SR factor.
    let mut multiple = match spec {
        OperatorSpec::SuperResolution(s) => s.factor as i64,
        _ => 1,
    };
    let restorer = match (wants(Method::Davi), models.generator) {
        (true, Some(g)) => {
            if g.meta.role != crate::weights::ModelRole::Generator {
                return Err(EngineError::InvalidInput(
                    "--model must be a DAVI generator (role `generator`), not a prior".into(),
                ));
            }
            multiple = lcm(multiple, g.meta.unet.size_multiple());
            let r = run_of(&mut runs, Method::Davi);
            r.nfe = Some(1);
            r.settings = serde_json::json!({
                "model": models.generator_source,
                "parameters": g.parameter_count(),
                "trained_for": g.meta.operator.as_ref().map(|o| o.to_string()),
                "perturb_h": cfg.perturb_h.or(g.meta.perturb_h).unwrap_or(0.1),
                "precision": cfg.precision.name(),
            });
            if let Some(trained) = &g.meta.operator {
                if trained != spec {
                    r.note = Some(format!(
                        "generator trained for {trained}, evaluated on {spec}"
                    ));
                }
            }
            let mut restorer = Restorer::new(g, cfg.device);
            restorer.set_precision(cfg.precision)?;
            Some(restorer)
        }
        (true, None) => {
            skip(
                &mut runs,
                Method::Davi,
                "no generator model given (--model)".into(),
            );
            None
        }
        (false, _) => None,
    };
    let dps_opts = DpsOptions {
        nfe: cfg.dps_nfe,
        scale: cfg.dps_scale.unwrap_or_else(|| dps::default_scale(spec)),
        seed: 0,
    };
    let sampler = match (wants(Method::Dps), models.prior) {
        (true, Some(p)) => {
            let steps = p.meta.diffusion_steps;
            if cfg.dps_nfe == 0 || cfg.dps_nfe > steps {
                return Err(EngineError::InvalidInput(format!(
                    "--dps-nfe must lie in 1..={steps} (the prior's diffusion steps), got {}",
                    cfg.dps_nfe
                )));
            }
            multiple = lcm(multiple, p.meta.unet.size_multiple());
            let params = p.parameter_count();
            let schedule = p.meta.schedule;
            let d = Dps::new(p)?;
            let r = run_of(&mut runs, Method::Dps);
            r.nfe = Some(cfg.dps_nfe);
            r.settings = serde_json::json!({
                "model": models.prior_source,
                "parameters": params,
                "schedule": schedule,
                "diffusion_steps": steps,
                "nfe": cfg.dps_nfe,
                "scale": dps_opts.scale,
                "respaced": cfg.dps_nfe < steps,
            });
            if cfg.dps_nfe < steps {
                r.note = Some(format!(
                    "respaced to {} of the prior's {steps} steps",
                    cfg.dps_nfe
                ));
            }
            Some(d)
        }
        (true, None) => {
            skip(
                &mut runs,
                Method::Dps,
                "no prior model given (--prior)".into(),
            );
            None
        }
        (false, _) => None,
    };
    if wants(Method::Classical) {
        if classical.is_none() {
            skip(
                &mut runs,
                Method::Classical,
                "the classical plugin is not available to this host".into(),
            );
        } else {
            run_of(&mut runs, Method::Classical).nfe = Some(0);
        }
    }
    if wants(Method::Lift) {
        let r = run_of(&mut runs, Method::Lift);
        r.nfe = Some(0);
    }

    let mut images = Vec::with_capacity(files.len());
    let total = files.len();
    for (index, file) in files.iter().enumerate() {
        let name = file
            .strip_prefix(dir)
            .unwrap_or(file)
            .to_string_lossy()
            .replace('\\', "/");
        let clean = prepare_image(&load_rgb(file)?, multiple, cfg.max_side, cfg.fit)?;
        let (_, h, w) = clean.size3().expect("3-D");
        spec.validate_for_size(h as usize, w as usize)
            .map_err(|e| {
                EngineError::InvalidInput(format!("{name} ({w}x{h} after cropping): {e}"))
            })?;
        let clean = clean.unsqueeze(0);
        let measurement_seed = image_seed(cfg.seed, &name, 1);
        let obs = pipeline::simulate_observation(spec, &clean, measurement_seed)?;
        images.push(ImageEntry {
            name: name.clone(),
            height: h,
            width: w,
            measurement_seed,
        });

        for r in runs.iter_mut().filter(|r| !r.skipped) {
            let method = r.method;
            let mut report = |fraction: f32| {
                progress(&EvalProgress {
                    image: index,
                    images: total,
                    name: &name,
                    method,
                    fraction,
                })
            };
            let mut start = Instant::now();
            let restored: Option<(Tensor, usize)> = match method {
                Method::Lift => {
                    let problem = pipeline::problem_from_observation(spec, &obs, 3, Device::Cpu)?;
                    let lifted = tch::no_grad(|| problem.op.lift(&problem.y));
                    Some((pipeline::to_picture(&lifted, problem.gray_out), 0))
                }
                Method::Davi => {
                    let restorer = restorer.as_ref().expect("davi runs only with a generator");
                    let opts = RestoreOptions {
                        perturb_h: cfg.perturb_h,
                        seed: image_seed(cfg.seed, &name, 2),
                        tiling: None,
                        measurement_noise: Some(spec.noise_sigma()),
                    };
                    if index == 0 {
                        let _ = davi_once(restorer, spec, &obs, cfg.device, &opts, &mut |_| true)?;
                        r.settings["warmup_call_excluded"] = serde_json::json!(true);
                        start = Instant::now();
                    }
                    Some((
                        davi_once(restorer, spec, &obs, cfg.device, &opts, &mut report)?,
                        1,
                    ))
                }
                Method::Dps => {
                    let sampler = sampler.as_ref().expect("dps runs only with a prior");
                    let channels = sampler.model.meta.unet.in_channels;
                    let problem =
                        pipeline::problem_from_observation(spec, &obs, channels, sampler.device)?;
                    let opts = DpsOptions {
                        seed: image_seed(cfg.seed, &name, 3),
                        ..dps_opts
                    };
                    let out = sampler.sample(
                        problem.op.as_ref(),
                        &problem.y,
                        (h, w),
                        &opts,
                        &mut report,
                    )?;
                    let pic =
                        pipeline::to_picture(&out.sample, problem.gray_out).to_device(Device::Cpu);
                    Some((pic, out.nfe))
                }
                Method::Classical => {
                    let ext = classical
                        .as_mut()
                        .expect("classical runs only when supplied");
                    let observed = obs.clamp(0.0, 1.0);
                    match ext.restore(spec, &observed, &mut report) {
                        Ok(pic) => {
                            let pic = pic
                                .to_device(Device::Cpu)
                                .to_kind(Kind::Float)
                                .clamp(0.0, 1.0);
                            if pic.size() != clean.size() {
                                return Err(EngineError::InvalidInput(format!(
                                    "the classical method returned {:?} for a {:?} image",
                                    pic.size(),
                                    clean.size()
                                )));
                            }
                            Some((pic, 0))
                        }
                        Err(ExternalError::Unsupported(msg)) => {
                            r.skipped = true;
                            r.note = Some(format!("does not support this operator: {msg}"));
                            r.scores.clear();
                            None
                        }
                        Err(ExternalError::Cancelled) => return Err(EngineError::Cancelled),
                        Err(ExternalError::Failed(msg)) => {
                            return Err(EngineError::InvalidInput(format!(
                                "classical method on {name}: {msg}"
                            )))
                        }
                    }
                }
            };
            if let Some((pic, nfe)) = restored {
                let seconds = start.elapsed().as_secs_f64();
                r.nfe = Some(nfe);
                score(r, &name, &clean, &pic, seconds);
            }
        }
    }

    Ok(finish(cfg, multiple, images, runs))
}

/// One DAVI restoration of an observation, returned on the CPU in [0, 1].
fn davi_once(
    restorer: &Restorer,
    spec: &OperatorSpec,
    obs: &Tensor,
    device: Device,
    opts: &RestoreOptions,
    progress: &mut dyn FnMut(f32) -> bool,
) -> Result<Tensor> {
    let channels = restorer.model.meta.unet.in_channels;
    let problem = pipeline::problem_from_observation(spec, obs, channels, device)?;
    let x = restorer.restore(problem.op.as_ref(), &problem.y, opts, progress)?;
    Ok(pipeline::to_picture(&x, problem.gray_out).to_device(Device::Cpu))
}

fn run_of(runs: &mut [Running], m: Method) -> &mut Running {
    runs.iter_mut()
        .find(|r| r.method == m)
        .expect("method selected")
}

fn score(r: &mut Running, name: &str, clean: &Tensor, pic: &Tensor, seconds: f64) {
    let pic = pic.to_kind(Kind::Float).clamp(0.0, 1.0);
    let psnr = metrics::psnr(clean, &pic)[0].min(100.0);
    let ssim = metrics::ssim(clean, &pic)[0];
    r.scores.push(ImageScore {
        name: name.to_string(),
        psnr,
        ssim,
        seconds,
    });
}

fn finish(
    cfg: &EvalConfig,
    multiple: i64,
    images: Vec<ImageEntry>,
    runs: Vec<Running>,
) -> EvalReport {
    let mut methods: Vec<MethodReport> = runs
        .into_iter()
        .map(|r| {
            let ran = !r.skipped && !r.scores.is_empty();
            let avg = |f: &dyn Fn(&ImageScore) -> f64| {
                ran.then(|| metrics::mean(&r.scores.iter().map(f).collect::<Vec<_>>()))
            };
            MethodReport {
                method: r.method,
                ran,
                note: r.note,
                nfe: if ran { r.nfe } else { None },
                psnr: avg(&|s| s.psnr),
                ssim: avg(&|s| s.ssim),
                seconds_per_image: avg(&|s| s.seconds),
                speedup_vs_dps: None,
                per_image: r.scores,
                settings: r.settings,
            }
        })
        .collect();
    let dps_seconds = methods
        .iter()
        .find(|m| m.method == Method::Dps)
        .and_then(|m| m.seconds_per_image);
    for m in &mut methods {
        m.speedup_vs_dps = match (dps_seconds, m.seconds_per_image) {
            (Some(d), Some(s)) if s > 0.0 => Some(d / s),
            _ => None,
        };
    }
    let targets = claim_checks(cfg, &methods);
    EvalReport {
        task: cfg.task.clone(),
        spec: cfg.spec.clone(),
        seed: cfg.seed,
        device: device_name(cfg.device),
        crop_multiple: multiple,
        max_side: cfg.max_side,
        fit: cfg.fit,
        images,
        methods,
        targets,
    }
}

/// The claims checked on every report: DAVI PSNR ≥ DPS-1000's and > the classical plugin's,
/// at ≥ 500× less wall time than DPS.
fn claim_checks(cfg: &EvalConfig, methods: &[MethodReport]) -> Vec<ClaimCheck> {
    let get = |m: Method| methods.iter().find(|r| r.method == m && r.ran);
    let (davi, dps, classical) = (get(Method::Davi), get(Method::Dps), get(Method::Classical));
    let nfe_note = if cfg.dps_nfe == dps::DEFAULT_NFE {
        String::new()
    } else {
        format!(" (this run: DPS-{})", cfg.dps_nfe)
    };
    let mut out = Vec::new();
    let absent = |what: &str| format!("not measured: {what} did not run");
    out.push(
        match (davi.and_then(|d| d.psnr), dps.and_then(|d| d.psnr)) {
            (Some(a), Some(b)) => ClaimCheck {
                target: format!("DAVI PSNR >= DPS-1000 PSNR{nfe_note}"),
                met: Some(a >= b),
                detail: format!("{a:.2} dB vs {b:.2} dB"),
            },
            _ => ClaimCheck {
                target: format!("DAVI PSNR >= DPS-1000 PSNR{nfe_note}"),
                met: None,
                detail: absent("davi or dps"),
            },
        },
    );
    out.push(
        match (davi.and_then(|d| d.psnr), classical.and_then(|d| d.psnr)) {
            (Some(a), Some(b)) => ClaimCheck {
                target: "DAVI PSNR > classical PSNR".into(),
                met: Some(a > b),
                detail: format!("{a:.2} dB vs {b:.2} dB"),
            },
            _ => ClaimCheck {
                target: "DAVI PSNR > classical PSNR".into(),
                met: None,
                detail: absent("davi or classical"),
            },
        },
    );
    out.push(match davi.and_then(|d| d.speedup_vs_dps) {
        Some(s) => ClaimCheck {
            target: format!("DAVI at least 500x faster than DPS-1000{nfe_note}"),
            met: Some(s >= 500.0),
            detail: format!("{s:.0}x"),
        },
        None => ClaimCheck {
            target: format!("DAVI at least 500x faster than DPS-1000{nfe_note}"),
            met: None,
            detail: absent("davi or dps"),
        },
    });
    out
}

impl EvalReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reports always serialise") + "\n"
    }

    /// The report as Markdown: the summary table, notes, targets, then per-image scores.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let n = self.images.len();
        let _ = writeln!(
            s,
            "## `{}`: {} ({} image{}, seed {}, {})\n",
            self.task,
            self.spec,
            n,
            if n == 1 { "" } else { "s" },
            self.seed,
            self.device
        );
        s.push_str("| method | PSNR (dB) | SSIM | NFE | seconds/image | speed-up vs DPS |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|\n");
        for m in &self.methods {
            if !m.ran {
                let _ = writeln!(
                    s,
                    "| {} | — | — | — | — | skipped: {} |",
                    m.method,
                    m.note.as_deref().unwrap_or("did not run")
                );
                continue;
            }
            let opt = |v: Option<f64>, d: usize| {
                v.map(|v| format!("{v:.d$}")).unwrap_or_else(|| "—".into())
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                m.method,
                opt(m.psnr, 2),
                opt(m.ssim, 4),
                m.nfe.map(|v| v.to_string()).unwrap_or_else(|| "—".into()),
                m.seconds_per_image
                    .map(fmt_seconds)
                    .unwrap_or_else(|| "—".into()),
                m.speedup_vs_dps
                    .map(fmt_speedup)
                    .unwrap_or_else(|| "—".into()),
            );
        }
        let notes: Vec<String> = self
            .methods
            .iter()
            .filter(|m| m.ran)
            .filter_map(|m| m.note.as_ref().map(|n| format!("- {}: {n}", m.method)))
            .collect();
        if !notes.is_empty() {
            s.push('\n');
            for line in notes {
                let _ = writeln!(s, "{line}");
            }
        }
        if let Some(d) = self
            .methods
            .iter()
            .find(|m| m.method == Method::Dps && m.ran)
        {
            let _ = writeln!(
                s,
                "\nDPS: scale {} (step = scale · ∇‖y − A(x̂0)‖), {} steps.",
                d.settings["scale"],
                d.nfe.unwrap_or(0)
            );
        }
        s.push_str("\n| target | met | detail |\n|---|---|---|\n");
        for t in &self.targets {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            let _ = writeln!(s, "| {} | {met} | {} |", t.target, t.detail);
        }
        let ran: Vec<&MethodReport> = self.methods.iter().filter(|m| m.ran).collect();
        if !ran.is_empty() {
            s.push_str("\nPer image, PSNR (dB) / SSIM:\n\n| image | size |");
            for m in &ran {
                let _ = write!(s, " {} |", m.method);
            }
            s.push_str("\n|---|---|");
            for _ in &ran {
                s.push_str("---:|");
            }
            s.push('\n');
            for (i, img) in self.images.iter().enumerate() {
                let _ = write!(s, "| {} | {}x{} |", img.name, img.width, img.height);
                for m in &ran {
                    match m.per_image.get(i) {
                        Some(sc) => {
                            let _ = write!(s, " {:.2} / {:.4} |", sc.psnr, sc.ssim);
                        }
                        None => s.push_str(" — |"),
                    }
                }
                s.push('\n');
            }
        }
        s
    }
}

fn fmt_seconds(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

fn fmt_speedup(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}×")
    } else {
        format!("{v:.1}×")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_lists_parse() {
        assert_eq!(
            Method::parse_list("davi, lift,davi").unwrap(),
            vec![Method::Davi, Method::Lift]
        );
        assert!(Method::parse_list("davi,ddrm").is_err());
        assert!(Method::parse_list(" , ").is_err());
    }

    #[test]
    fn images_are_cropped_to_the_multiple_and_limit() {
        let _rng = crate::test_rng::seeded(0);
        let img = Tensor::rand([3, 50, 70], (Kind::Float, Device::Cpu));
        assert_eq!(
            prepare_image(&img, 8, None, Fit::Crop).unwrap().size(),
            vec![3, 48, 64]
        );
        assert_eq!(
            prepare_image(&img, 8, Some(40), Fit::Crop).unwrap().size(),
            vec![3, 40, 40]
        );
        assert_eq!(
            prepare_image(&img, 4, Some(35), Fit::Resize)
                .unwrap()
                .size(),
            vec![3, 24, 32]
        );
        assert!(prepare_image(&img, 64, None, Fit::Crop).is_err());
        // The crop is centred.
        let c = prepare_image(&img, 8, None, Fit::Crop).unwrap();
        assert_eq!(
            (c - img.narrow(1, 1, 48).narrow(2, 3, 64))
                .abs()
                .max()
                .double_value(&[]),
            0.0
        );
    }

    #[test]
    fn image_seeds_depend_on_name_seed_and_purpose() {
        let a = image_seed(0, "a.png", 1);
        assert_eq!(a, image_seed(0, "a.png", 1));
        assert_ne!(a, image_seed(1, "a.png", 1));
        assert_ne!(a, image_seed(0, "b.png", 1));
        assert_ne!(a, image_seed(0, "a.png", 2));
    }
}
