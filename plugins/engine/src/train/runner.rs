//! The training loop: data, steps, logging, evaluation, checkpoints, resume and export.
//!
//! A run directory holds `config.toml` (the resolved config), `log.jsonl`,
//! `checkpoint.safetensors` (every network, optimiser moment, the EMA and the step; written
//! atomically), `grids/step<k>.png` (degraded | restored | reference on held-out crops),
//! `curves.png` and, at the end or on `davi export`, `model.safetensors`: the EMA network
//! as a self-describing model that `davi restore` and `libdavi` load.
//!
//! One loop for every host: [`Session`] is an open run (the trainer, its data, where it
//! stands) and [`Session::train`] runs steps with optional [`Hooks`] (a per-step progress
//! callback, a cancel flag checked between steps that ends the call with a checkpoint).
//! [`run`], what `davi train` calls, is one `train` call without hooks; libdavi's
//! `davi_training_*` (sdk/capi) keep a session open across calls and threads.
//!
//! Crash safety: every file but the log is written with [`model_file::write_atomic`] (a
//! temporary sibling, fsync, rename, fsync of the directory), so a kill at any moment leaves
//! the previous complete checkpoint (or the new one) under its name. The log is appended one
//! whole line per write and, on resume, cut back to the checkpoint's step
//! ([`truncate_log`]), so re-run steps are not logged twice. A checkpoint that cannot be
//! written (full disk, file size limit) stops the run with an error naming the step that
//! is kept.
use super::amp::GradScaler;
use super::config::TrainConfig;
use super::data::{list_images, Dataset, Prefetcher};
use super::davi::DaviTrainer;
use super::monitor::{plot_log, save_grid, truncate_log, Monitor};
use super::optim::AdamW;
use super::prior::PriorTrainer;
use super::{seed_step, Terms};
use crate::device::device_name;
use crate::error::{EngineError, Result};
use crate::metrics;
use crate::weights::{model_file, ModelMeta, ModelRole};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{nn, Device, Tensor};

const CHECKPOINT: &str = "checkpoint.safetensors";
const CHECKPOINT_FORMAT: &str = "libdavi-train-checkpoint";

/// Either kind of trainer.
pub enum Trainer {
    Prior(Box<PriorTrainer>),
    Davi(Box<DaviTrainer>),
}

/// Options of [`run`] that are not part of the config.
#[derive(Default, Clone)]
pub struct RunOptions {
    pub resume: bool,
    pub quiet: bool,
    /// Stop after this many steps in this invocation (the run stays resumable).
    pub max_steps_now: Option<u64>,
    /// Stop at the first checkpoint after this many seconds of this invocation.
    pub max_seconds_now: Option<f64>,
}

/// Outcome of [`run`].
pub struct RunReport {
    pub out_dir: PathBuf,
    pub step: u64,
    pub finished: bool,
    pub last_terms: Terms,
}

fn named(prefix: &str, vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (format!("{prefix}.{k}"), t))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn load_named(prefix: &str, vs: &mut nn::VarStore, all: &HashMap<String, Tensor>) -> Result<()> {
    let p = format!("{prefix}.");
    let sub: Vec<(String, Tensor)> = all
        .iter()
        .filter_map(|(k, t)| {
            k.strip_prefix(&p)
                .map(|n| (n.to_string(), t.shallow_clone()))
        })
        .collect();
    model_file::copy_by_name(vs, sub)
        .map_err(|e| EngineError::Weights(format!("checkpoint section `{prefix}`: {e}")))
}

impl Trainer {
    /// Build the trainer of `cfg` on `devices` (data parallel when there are several).
    pub fn new(cfg: &TrainConfig, devices: &[Device]) -> Result<Self> {
        let precision = cfg.run.precision;
        if let Some(p) = &cfg.prior {
            return Ok(Trainer::Prior(Box::new(PriorTrainer::with_devices(
                &p.unet,
                p.schedule,
                p.diffusion_steps,
                p.lr,
                p.micro_batch,
                devices,
                precision,
            )?)));
        }
        let d = cfg.davi.as_ref().expect("validated: prior or davi");
        Ok(Trainer::Davi(Box::new(DaviTrainer::with_devices(
            d,
            cfg.data.size,
            devices,
            precision,
        )?)))
    }

    fn state(&self) -> (Vec<(String, Tensor)>, i64) {
        let mut out = Vec::new();
        let opt =
            |out: &mut Vec<(String, Tensor)>, name: &str, o: &AdamW| out.extend(o.state(name));
        match self {
            Trainer::Prior(p) => {
                out.extend(named("net", &p.vs));
                out.extend(named("ema", &p.ema_vs));
                opt(&mut out, "opt", &p.opt);
                (out, p.ema.calls)
            }
            Trainer::Davi(d) => {
                let p = d.primary();
                out.extend(named("gen", &p.gen_vs));
                out.extend(named("ema", &d.ema_vs));
                out.extend(named("fake", &p.fake_vs));
                out.extend(named("disc", &p.disc_vs));
                opt(&mut out, "opt_g", &d.opt_g);
                opt(&mut out, "opt_s", &d.opt_s);
                opt(&mut out, "opt_d", &d.opt_d);
                (out, d.ema.calls)
            }
        }
    }

    fn load_state(&mut self, all: &HashMap<String, Tensor>, ema_calls: i64) -> Result<()> {
        let get = |k: &str| all.get(k).map(|t| t.shallow_clone());
        let werr = |e: String| EngineError::Weights(e);
        match self {
            Trainer::Prior(p) => {
                load_named("net", &mut p.vs, all)?;
                load_named("ema", &mut p.ema_vs, all)?;
                p.opt.load_state("opt", &get).map_err(werr)?;
                p.ema.calls = ema_calls;
                p.sync_replicas()?;
            }
            Trainer::Davi(d) => {
                load_named("gen", &mut d.nets[0].gen_vs, all)?;
                load_named("ema", &mut d.ema_vs, all)?;
                load_named("fake", &mut d.nets[0].fake_vs, all)?;
                load_named("disc", &mut d.nets[0].disc_vs, all)?;
                d.opt_g.load_state("opt_g", &get).map_err(werr)?;
                d.opt_s.load_state("opt_s", &get).map_err(werr)?;
                d.opt_d.load_state("opt_d", &get).map_err(werr)?;
                d.ema.calls = ema_calls;
                d.sync_replicas()?;
            }
        }
        Ok(())
    }

    /// The loss scaler of a mixed-precision run (`None` in fp32).
    fn scaler(&self) -> Option<&GradScaler> {
        match self {
            Trainer::Prior(p) => p.scaler.as_ref(),
            Trainer::Davi(d) => d.scaler.as_ref(),
        }
    }

    fn scaler_mut(&mut self) -> Option<&mut GradScaler> {
        match self {
            Trainer::Prior(p) => p.scaler.as_mut(),
            Trainer::Davi(d) => d.scaler.as_mut(),
        }
    }

    fn step(&mut self, x: &Tensor, seed: u64, step: u64, total: u64) -> Terms {
        let mut rng = seed_step(seed, step);
        match self {
            Trainer::Prior(p) => p.step(x),
            Trainer::Davi(d) => {
                d.set_step(step, total);
                d.step(x, &mut rng)
            }
        }
    }

    /// Side of the clean training windows the data loader must cut (patch plus context).
    fn window(&self, size: i64) -> i64 {
        match self {
            Trainer::Prior(_) => size,
            Trainer::Davi(d) => d.window(),
        }
    }

    /// The EMA network as a model file's metadata and var store.
    fn export_parts(
        &self,
        cfg: &TrainConfig,
        step: u64,
        extra: serde_json::Value,
    ) -> (ModelMeta, &nn::VarStore) {
        match self {
            Trainer::Prior(p) => {
                let pc = cfg.prior.as_ref().expect("prior");
                let meta = ModelMeta {
                    role: ModelRole::Prior,
                    unet: pc.unet.clone(),
                    schedule: pc.schedule,
                    diffusion_steps: pc.diffusion_steps,
                    operator: None,
                    perturb_h: None,
                    restore_tile: None,
                    measurement_denoiser: None,
                    restore_window: None,
                    provenance: provenance(cfg, step, extra),
                };
                (meta, &p.ema_vs)
            }
            Trainer::Davi(d) => {
                let dc = cfg.davi.as_ref().expect("davi");
                let meta = ModelMeta {
                    role: ModelRole::Generator,
                    unet: d.primary().teacher.meta.unet.clone(),
                    schedule: d.primary().teacher.meta.schedule,
                    diffusion_steps: d.primary().teacher.meta.diffusion_steps,
                    operator: Some(dc.operator.clone()),
                    perturb_h: Some(dc.eval_perturb_h.unwrap_or(dc.perturb_h)),
                    restore_tile: (cfg.data.crop == super::data::Crop::Random && !dc.window)
                        .then_some(cfg.data.size),
                    measurement_denoiser: None,
                    restore_window: dc.window.then_some(cfg.data.size),
                    provenance: provenance(cfg, step, extra),
                };
                (meta, &d.ema_vs)
            }
        }
    }
}

fn provenance(cfg: &TrainConfig, step: u64, extra: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "trained_by": format!("libdavi {}", env!("CARGO_PKG_VERSION")),
        "config": cfg.name,
        "steps": step,
        "train_dir": cfg.data.train_dir,
        "patch_size": cfg.data.size,
        "seed": cfg.run.seed,
        "run": extra,
    })
}

/// Write the checkpoint atomically.
fn save_checkpoint(
    dir: &Path,
    cfg: &TrainConfig,
    trainer: &Trainer,
    step: u64,
    wall: f64,
) -> Result<()> {
    let (tensors, ema_calls) = trainer.state();
    let mut md = HashMap::new();
    md.insert("format".into(), CHECKPOINT_FORMAT.into());
    md.insert("config".into(), cfg.to_toml());
    md.insert("step".into(), step.to_string());
    md.insert("ema_calls".into(), ema_calls.to_string());
    md.insert("wall_seconds".into(), format!("{wall:.1}"));
    if let Some(s) = trainer.scaler() {
        md.insert("amp_scale".into(), s.scale.to_string());
        md.insert("amp_growth_tracker".into(), s.growth_tracker.to_string());
    }
    model_file::write_tensors(&dir.join(CHECKPOINT), &tensors, md)
}

/// Say, in a failed checkpoint write's error, which step is kept on disk.
fn checkpoint_failed(e: EngineError, step: u64, kept: Option<u64>) -> EngineError {
    let kept = match kept {
        Some(k) => format!("the checkpoint of step {k} is kept; make room and --resume"),
        None => "no checkpoint was written yet".into(),
    };
    match e {
        EngineError::Io { path, source } => EngineError::Io {
            path,
            source: std::io::Error::new(
                source.kind(),
                format!("writing the checkpoint of step {step} failed: {source} ({kept})"),
            ),
        },
        other => other,
    }
}

/// Load a checkpoint written by [`save_checkpoint`]: returns (step, wall seconds so far).
/// A truncated, corrupt or foreign file is refused with a message naming it.
pub fn load_checkpoint(
    path: &Path,
    cfg: &TrainConfig,
    trainer: &mut Trainer,
) -> Result<(u64, f64)> {
    let (all, md) = model_file::read_tensors(path)?;
    if md.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
        return Err(EngineError::model(
            path,
            "not a libdavi training checkpoint",
        ));
    }
    let saved: TrainConfig = md
        .get("config")
        .and_then(|c| TrainConfig::from_toml(c, &[]).ok())
        .ok_or_else(|| EngineError::model(path, "checkpoint config unreadable"))?;
    if saved.prior.is_some() != cfg.prior.is_some() || saved.data.size != cfg.data.size {
        return Err(EngineError::model(
            path,
            format!(
                "checkpoint is of run `{}`, whose kind or patch size differs from `{}`",
                saved.name, cfg.name
            ),
        ));
    }
    let step: u64 = md
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| EngineError::model(path, "step missing"))?;
    let ema_calls: i64 = md
        .get("ema_calls")
        .and_then(|s| s.parse().ok())
        .unwrap_or(step as i64);
    let wall: f64 = md
        .get("wall_seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    trainer
        .load_state(&all, ema_calls)
        .map_err(|e| EngineError::model(path, e.to_string()))?;
    // A run that switches precision on resume starts the loss scale afresh.
    if let (Some(s), Some(scale), Some(tracker)) = (
        trainer.scaler_mut(),
        md.get("amp_scale").and_then(|v| v.parse::<f64>().ok()),
        md.get("amp_growth_tracker")
            .and_then(|v| v.parse::<i64>().ok()),
    ) {
        s.scale = scale;
        s.growth_tracker = tracker;
    }
    Ok((step, wall))
}

/// Evaluate on held-out crops: returns JSON metrics and writes a grid.
fn evaluate(
    trainer: &Trainer,
    eval: Option<&Tensor>,
    dir: &Path,
    step: u64,
    seed: u64,
) -> Result<serde_json::Value> {
    let Some(clean) = eval else {
        return Ok(serde_json::json!({}));
    };
    match trainer {
        Trainer::Prior(p) => {
            Ok(serde_json::json!({ "heldout_eps_mse": p.eval_mse(clean, seed as i64) }))
        }
        Trainer::Davi(d) => {
            let (y_img, x_hat) = d.evaluate(clean, seed)?;
            let to01 = |t: &Tensor| ((t.to_device(Device::Cpu) + 1.0) / 2.0).clamp(0.0, 1.0);
            let c = to01(clean);
            let psnr = metrics::mean(&metrics::psnr(&to01(&x_hat), &c));
            let ssim = metrics::mean(&metrics::ssim(&to01(&x_hat), &c));
            let psnr_y = metrics::mean(&metrics::psnr(&to01(&y_img), &c));
            std::fs::create_dir_all(dir.join("grids")).map_err(|e| EngineError::io(dir, e))?;
            save_grid(
                &dir.join("grids").join(format!("step{step:07}.png")),
                &[&y_img, &x_hat, clean],
            )?;
            Ok(serde_json::json!({
                "heldout_psnr": psnr,
                "heldout_ssim": ssim,
                "heldout_psnr_measurement": psnr_y,
            }))
        }
    }
}

fn eval_set(cfg: &TrainConfig, device: Device) -> Result<Option<Tensor>> {
    let Some(dir) = &cfg.data.heldout_dir else {
        return Ok(None);
    };
    let images = list_images(dir)?
        .iter()
        .map(|f| super::data::load_rgb(f))
        .collect::<Result<Vec<_>>>()?;
    let m = match (&cfg.prior, &cfg.davi) {
        (Some(p), _) => p.unet.size_multiple(),
        _ => 32,
    };
    // Centre crops of a common side, a multiple of the network's factor. Priors: 4x the
    // patch, at most 128 px (keeps CPU evaluation cheap). DAVI generators: 256 px, the size
    // their results are reported at (a window model's context and a tile model's blending
    // both show at that size); images smaller than that are left out, unless all are.
    let want = if cfg.prior.is_some() {
        (cfg.data.size * 4).min(128)
    } else {
        256
    };
    let short = |i: &Tensor| i.size()[1].min(i.size()[2]);
    let images: Vec<Tensor> = if images.iter().any(|i| short(i) >= want) {
        images.into_iter().filter(|i| short(i) >= want).collect()
    } else {
        images
    };
    let smallest = images.iter().map(short).min().unwrap_or(0);
    let side = want.min(smallest) / m * m;
    if side < m {
        return Err(EngineError::InvalidInput(format!(
            "held-out images in {} are too small to evaluate",
            dir.display()
        )));
    }
    let crops: Vec<Tensor> = images
        .iter()
        .map(|img| {
            let (_, h, w) = img.size3().expect("3-D");
            img.narrow(1, (h - side) / 2, side)
                .narrow(2, (w - side) / 2, side)
                * 2.0
                - 1.0
        })
        .collect();
    Ok(Some(Tensor::stack(&crops, 0).to_device(device)))
}

/// Train according to `cfg` (creating or resuming its run directory): one [`Session`], one
/// [`Session::train`] invocation. What `davi train` runs.
pub fn run(cfg: &TrainConfig, opts: &RunOptions) -> Result<RunReport> {
    run_with_hooks(cfg, opts, &mut Hooks::default())
}

/// [`run`] with a progress callback and a cancel flag (libdavi's `davi_training_*` use
/// [`Session`] directly, on the same code).
pub fn run_with_hooks(
    cfg: &TrainConfig,
    opts: &RunOptions,
    hooks: &mut Hooks<'_>,
) -> Result<RunReport> {
    let mut session = Session::open(cfg, opts.resume, opts.quiet)?;
    session.train(opts.max_steps_now, opts.max_seconds_now, hooks)?;
    Ok(RunReport {
        out_dir: session.dir.clone(),
        step: session.step,
        finished: session.finished(),
        last_terms: session.last.clone(),
    })
}

/// What [`Hooks::progress`] hears after every step.
#[derive(Debug)]
pub struct StepReport<'a> {
    /// Steps done: the step that just finished, counted from 1.
    pub step: u64,
    pub total_steps: u64,
    /// The step's loss terms (`loss`, `mse`, `vb` for a prior; `loss_g`, `ikl`, `con`, `gt`,
    /// `fake_score`, `disc`, `gan_g`, `w_adv` for DAVI; `amp_*` with mixed precision).
    pub terms: &'a Terms,
    /// The held-out metrics when this step evaluated (`heldout_psnr`, `heldout_ssim`,
    /// `heldout_psnr_measurement` for DAVI, `heldout_eps_mse` for a prior), else `None`.
    pub eval: Option<&'a Terms>,
    /// The step of the newest checkpoint on disk, after this step's own (if it wrote one).
    pub checkpoint_step: Option<u64>,
    /// Wall seconds the run has trained, over all its invocations.
    pub wall_seconds: f64,
}

/// Callbacks of [`Session::train`]; the default has none (what the CLI passes).
#[derive(Default)]
pub struct Hooks<'a> {
    /// Called on the training thread after every step (after its log record, evaluation and
    /// checkpoint).
    pub progress: Option<&'a mut dyn FnMut(&StepReport<'_>)>,
    /// Checked before every step: once set, the session writes a checkpoint of the step it
    /// reached (unless one is on disk already) and returns [`Stop::Cancelled`].
    pub cancel: Option<&'a AtomicBool>,
}

/// Why [`Session::train`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// `run.total_steps` reached; `model.safetensors` written.
    Finished,
    /// This invocation's step or time limit reached; the checkpoint is on disk.
    Paused,
    /// [`Hooks::cancel`] was set; the checkpoint of the step reached is on disk.
    Cancelled,
}

/// An open run: the trainer, its data and evaluation set, and where it stands. Made by
/// [`Session::open`] (which creates or resumes the run directory); [`Session::train`] runs
/// steps, as often as the owner likes. Between invocations the state in memory equals the
/// checkpoint on disk: every invocation ends with one (or with an error, after which the
/// session must be dropped and the run resumed from its directory).
pub struct Session {
    cfg: TrainConfig,
    dir: PathBuf,
    device: Device,
    trainer: Trainer,
    step: u64,
    /// Wall seconds of earlier invocations (and earlier processes).
    wall_before: f64,
    saved_step: Option<u64>,
    prefetch: Prefetcher,
    eval: Option<Tensor>,
    monitor: Monitor,
    last: Terms,
    quiet: bool,
}

impl Session {
    /// Create `cfg.run.out_dir` or, with `resume`, continue the run it holds (a directory
    /// holding a checkpoint is refused without `resume`). Builds the networks, loads the
    /// checkpoint, the training images and the held-out set. A checkpoint that does not load
    /// is refused and left as it is.
    pub fn open(cfg: &TrainConfig, resume: bool, quiet: bool) -> Result<Self> {
        let devices = crate::device::parse_devices(&cfg.run.device)?;
        let device = devices[0];
        if cfg.run.threads > 0 {
            tch::set_num_threads(cfg.run.threads);
        }
        let dir = cfg.run.out_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| EngineError::io(&dir, e))?;
        // Temporary files of writes a killed run never finished.
        model_file::remove_stale_temporaries(&dir);
        model_file::remove_stale_temporaries(&dir.join("grids"));
        let ckpt = dir.join(CHECKPOINT);
        if ckpt.exists() && !resume {
            return Err(EngineError::InvalidInput(format!(
                "{} already holds a run: pass --resume to \
                continue it, or choose another run.out_dir",
                dir.display()
            )));
        }
        model_file::write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
        tch::manual_seed(cfg.run.seed as i64);
        let mut trainer = Trainer::new(cfg, &devices)?;
        let (step, wall_before) = if resume && ckpt.exists() {
            load_checkpoint(&ckpt, cfg, &mut trainer)?
        } else {
            (0, 0.0)
        };
        // Records of steps after the checkpoint were logged by a run that stopped before saving
        // them: those steps run again now.
        truncate_log(&dir.join("log.jsonl"), step)?;
        let files = list_images(&cfg.data.train_dir)?;
        let batch = cfg
            .prior
            .as_ref()
            .map(|p| p.batch)
            .or(cfg.davi.as_ref().map(|d| d.batch))
            .expect("validated");
        let ds = Dataset::open(
            files,
            trainer.window(cfg.data.size),
            cfg.data.crop,
            cfg.data.min_scale,
            cfg.data.hflip,
        )?;
        let eval = eval_set(cfg, device)?;
        let monitor = Monitor::new(&dir, step, cfg.run.total_steps).quiet(quiet);
        let prefetch = Prefetcher::start(ds, cfg.run.seed, step, batch, 2);
        Ok(Session {
            cfg: cfg.clone(),
            dir,
            device,
            trainer,
            step,
            wall_before,
            saved_step: (step > 0).then_some(step),
            prefetch,
            eval,
            monitor,
            last: Terms::new(),
            quiet,
        })
    }

    /// Steps done (in memory; equal to the checkpoint's step between invocations).
    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn total_steps(&self) -> u64 {
        self.cfg.run.total_steps
    }

    /// Whether `run.total_steps` are done.
    pub fn finished(&self) -> bool {
        self.step >= self.cfg.run.total_steps
    }

    /// The step of the newest checkpoint on disk.
    pub fn checkpoint_step(&self) -> Option<u64> {
        self.saved_step
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The resolved config.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The loss terms of the last step run in this session (empty before the first).
    pub fn last_terms(&self) -> &Terms {
        &self.last
    }

    fn wall(&self) -> f64 {
        self.wall_before + self.monitor.elapsed()
    }

    /// Write the checkpoint of the current step, saying on failure which step is kept.
    fn save(&mut self) -> Result<()> {
        save_checkpoint(&self.dir, &self.cfg, &self.trainer, self.step, self.wall())
            .map_err(|e| checkpoint_failed(e, self.step, self.saved_step))?;
        self.saved_step = Some(self.step);
        Ok(())
    }

    /// Run steps until `run.total_steps`, `max_steps` more steps, `max_seconds` of this
    /// invocation (at the first step after them) or a cancel, then write the checkpoint of the
    /// step reached (and, at the end of the run, `model.safetensors`) and the curves.
    ///
    /// An error (a non-finite loss, a checkpoint that cannot be written, a failed
    /// evaluation) leaves the last checkpoint on disk as it was; the session must then be
    /// dropped (its weights may be ahead of any checkpoint, or damaged).
    // `step % every == 0` rather than `is_multiple_of`: the two differ for `every = 0`, and
    // this cleanup changes no behaviour.
    #[allow(clippy::manual_is_multiple_of)]
    pub fn train(
        &mut self,
        max_steps: Option<u64>,
        max_seconds: Option<f64>,
        hooks: &mut Hooks<'_>,
    ) -> Result<Stop> {
        if self.cfg.run.threads > 0 {
            // libtorch keeps this per thread with some builds: set it on the training thread.
            tch::set_num_threads(self.cfg.run.threads);
        }
        // Wall time counts the invocations, not the time a host keeps the session idle.
        self.wall_before += self.monitor.elapsed();
        self.monitor =
            Monitor::new(&self.dir, self.step, self.cfg.run.total_steps).quiet(self.quiet);
        let (total, seed) = (self.cfg.run.total_steps, self.cfg.run.seed);
        let stop_at = max_steps
            .map(|n| (self.step + n).min(total))
            .unwrap_or(total);
        let cancel = hooks.cancel;
        let cancelled = || cancel.is_some_and(|c| c.load(Ordering::SeqCst));
        let mut stop = None;
        while self.step < stop_at {
            if cancelled() {
                stop = Some(Stop::Cancelled);
                break;
            }
            let x = self.prefetch.next(self.step).to_device(self.device);
            self.last = self.trainer.step(&x, seed, self.step, total);
            if self.last.values().any(|v| !v.is_finite()) {
                // The weights are already updated from a non-finite loss: do not save them; the
                // last checkpoint on disk stays the last good state.
                return Err(EngineError::InvalidInput(format!(
                    "loss became non-finite at step {}: {:?} (the last checkpoint is kept; lower \
                        the learning rate and --resume)",
                    self.step, self.last
                )));
            }
            self.step += 1;
            let step = self.step;
            self.monitor.progress(step, &self.last);
            if step % self.cfg.run.log_every == 0 || step == stop_at {
                let mut rec = serde_json::json!({ "step": step, "wall_s": self.wall() });
                for (k, v) in &self.last {
                    rec[k] = serde_json::json!(v);
                }
                self.monitor.log(&rec)?;
            }
            let mut eval_terms = None;
            if step % self.cfg.run.eval_every == 0 || step == total {
                let m = evaluate(&self.trainer, self.eval.as_ref(), &self.dir, step, seed)?;
                let mut rec = serde_json::json!({ "step": step, "eval": true });
                for (k, v) in m.as_object().into_iter().flatten() {
                    rec[k] = v.clone();
                }
                self.monitor.log(&rec)?;
                keep_best(
                    &self.cfg,
                    &self.trainer,
                    &self.dir,
                    step,
                    self.wall(),
                    self.device,
                    &m,
                )?;
                eval_terms = Some(
                    m.as_object()
                        .into_iter()
                        .flatten()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                        .collect::<Terms>(),
                );
            }
            let out_of_time = max_seconds.is_some_and(|s| self.monitor.elapsed() >= s);
            if step % self.cfg.run.checkpoint_every == 0 || step == stop_at || out_of_time {
                self.save()?;
            }
            if let Some(progress) = hooks.progress.as_mut() {
                progress(&StepReport {
                    step,
                    total_steps: total,
                    terms: &self.last,
                    eval: eval_terms.as_ref(),
                    checkpoint_step: self.saved_step,
                    wall_seconds: self.wall(),
                });
            }
            if out_of_time {
                break;
            }
        }
        if stop.is_none() && self.step < stop_at && cancelled() {
            stop = Some(Stop::Cancelled);
        }
        if stop == Some(Stop::Cancelled) && self.step > 0 && self.saved_step != Some(self.step) {
            self.save()?;
        }
        if !self.quiet {
            eprintln!();
        }
        let finished = self.finished();
        if finished {
            export(
                &self.cfg,
                &self.trainer,
                self.step,
                self.wall(),
                self.device,
                &self.dir.join("model.safetensors"),
            )?;
        }
        let keys: &[&str] = if self.cfg.prior.is_some() {
            &["loss", "mse", "vb", "heldout_eps_mse"]
        } else {
            &["loss_g", "ikl", "con", "gt", "fake_score", "heldout_psnr"]
        };
        if self.monitor.log_path.exists() {
            plot_log(&self.monitor.log_path, keys, &self.dir.join("curves.png"))?;
        }
        Ok(stop.unwrap_or(if finished {
            Stop::Finished
        } else {
            Stop::Paused
        }))
    }

    /// Write the EMA network of the current step as a model file (what the end of the run
    /// writes as `model.safetensors`): a generator `davi restore` and `libdavi` load, or a
    /// prior a DAVI run takes as its teacher.
    pub fn export(&self, out: &Path) -> Result<()> {
        export(
            &self.cfg,
            &self.trainer,
            self.step,
            self.wall(),
            self.device,
            out,
        )
    }
}

/// The file beside a run's checkpoint holding the EMA generator of its best evaluation so far,
/// and the record of which step and score that was.
pub const BEST_MODEL: &str = "best.safetensors";
const BEST_RECORD: &str = "best.json";

/// Export the EMA generator as [`BEST_MODEL`] when this evaluation's held-out PSNR beats every
/// earlier one of the run: checkpoints are chosen by validation score, not by the last step.
fn keep_best(
    cfg: &TrainConfig,
    trainer: &Trainer,
    dir: &Path,
    step: u64,
    wall: f64,
    device: Device,
    m: &serde_json::Value,
) -> Result<()> {
    let Some(psnr) = m.get("heldout_psnr").and_then(|v| v.as_f64()) else {
        return Ok(());
    };
    let record = dir.join(BEST_RECORD);
    let best = std::fs::read_to_string(&record)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("heldout_psnr").and_then(|p| p.as_f64()));
    if best.is_some_and(|b| b >= psnr) {
        return Ok(());
    }
    let mut extra = m.clone();
    extra["step"] = serde_json::json!(step);
    export_scored(
        cfg,
        trainer,
        step,
        wall,
        device,
        &dir.join(BEST_MODEL),
        m.clone(),
    )?;
    model_file::write_atomic(&record, extra.to_string().as_bytes())
}

fn export(
    cfg: &TrainConfig,
    trainer: &Trainer,
    step: u64,
    wall: f64,
    device: Device,
    out: &Path,
) -> Result<()> {
    export_scored(
        cfg,
        trainer,
        step,
        wall,
        device,
        out,
        serde_json::Value::Null,
    )
}

/// [`export`], recording the held-out scores the exported network reached in its provenance.
fn export_scored(
    cfg: &TrainConfig,
    trainer: &Trainer,
    step: u64,
    wall: f64,
    device: Device,
    out: &Path,
    scores: serde_json::Value,
) -> Result<()> {
    let extra = serde_json::json!({
        "wall_seconds": wall.round(),
        "device": device_name(device),
        "threads": cfg.run.threads,
        "heldout": scores,
    });
    let (meta, vs) = trainer.export_parts(cfg, step, extra);
    model_file::save(out, &meta, vs)
}

/// Export the EMA network of a run directory's checkpoint as a model file.
pub fn export_run(dir: &Path, out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(dir.join("config.toml"))
        .map_err(|e| EngineError::io(dir.join("config.toml"), e))?;
    let mut cfg = TrainConfig::from_toml(&text, &[])?;
    cfg.run.device = "cpu".into();
    let mut trainer = Trainer::new(&cfg, &[Device::Cpu])?;
    let (step, wall) = load_checkpoint(&dir.join(CHECKPOINT), &cfg, &mut trainer)?;
    export(&cfg, &trainer, step, wall, Device::Cpu, out)
}
