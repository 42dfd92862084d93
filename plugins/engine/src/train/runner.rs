//! The training loop: data, steps, logging, evaluation, checkpoints, resume and export.
//!
//! A run directory holds `config.toml` (the resolved config), `log.jsonl`,
//! `checkpoint.safetensors` (every network, optimiser moment, the EMA and the step; written
//! atomically), `grids/step<k>.png` (degraded | restored | reference on held-out crops),
//! `curves.png` and, at the end or on `davi export`, `model.safetensors`: the EMA network
//! as a self-describing model that `davi restore` and `libdavi` load.
//!
//! Crash safety: every file but the log is written with [`model_file::write_atomic`] (a
//! temporary sibling, fsync, rename, fsync of the directory), so a kill at any moment leaves
//! the previous complete checkpoint (or the new one) under its name. The log is appended one
//! whole line per write and, on resume, cut back to the checkpoint's step
//! ([`truncate_log`]), so re-run steps are not logged twice. A checkpoint that cannot be
//! written (full disk, file size limit) stops the run with an error naming the step that
//! is kept.
use super::config::TrainConfig;
use super::data::{list_images, Dataset, Prefetcher};
use super::davi::DaviTrainer;
use super::monitor::{plot_log, save_grid, truncate_log, Monitor};
use super::optim::AdamW;
use super::prior::PriorTrainer;
use super::{seed_step, Terms};
use super::amp::GradScaler;
use crate::device::device_name;
use crate::error::{EngineError, Result};
use crate::metrics;
use crate::weights::{model_file, ModelMeta, ModelRole};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
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
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(k, t)| (format!("{prefix}.{k}"), t)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn load_named(prefix: &str, vs: &mut nn::VarStore, all: &HashMap<String, Tensor>) -> Result<()> {
    let p = format!("{prefix}.");
    let sub: Vec<(String, Tensor)> = all.iter().filter_map(|(k, t)| k.strip_prefix(&p).map(|n| (n.to_string(), t.shallow_clone()))).collect();
    model_file::copy_by_name(vs, sub).map_err(|e| EngineError::Weights(format!("checkpoint section `{prefix}`: {e}")))
}

impl Trainer {
    /// Build the trainer of `cfg` on `devices` (data parallel when there are several).
    pub fn new(cfg: &TrainConfig, devices: &[Device]) -> Result<Self> {
        let precision = cfg.run.precision;
        if let Some(p) = &cfg.prior {
            return Ok(Trainer::Prior(Box::new(PriorTrainer::with_devices(&p.unet, p.schedule, p.diffusion_steps, p.lr, p.micro_batch, devices, precision)?)));
        }
        let d = cfg.davi.as_ref().expect("validated: prior or davi");
        Ok(Trainer::Davi(Box::new(DaviTrainer::with_devices(d, cfg.data.size, devices, precision)?)))
    }

    fn state(&self) -> (Vec<(String, Tensor)>, i64) {
        let mut out = Vec::new();
        let opt = |out: &mut Vec<(String, Tensor)>, name: &str, o: &AdamW| out.extend(o.state(name));
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
    fn export_parts(&self, cfg: &TrainConfig, step: u64, extra: serde_json::Value) -> (ModelMeta, &nn::VarStore) {
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
                    restore_tile: (cfg.data.crop == super::data::Crop::Random && !dc.window).then_some(cfg.data.size),
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
fn save_checkpoint(dir: &Path, cfg: &TrainConfig, trainer: &Trainer, step: u64, wall: f64) -> Result<()> {
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
        EngineError::Io { path, source } => {
            EngineError::Io { path, source: std::io::Error::new(source.kind(), format!("writing the checkpoint of step {step} failed: {source} ({kept})")) }
        }
        other => other,
    }
}

/// Load a checkpoint written by [`save_checkpoint`]: returns (step, wall seconds so far).
/// A truncated, corrupt or foreign file is refused with a message naming it.
pub fn load_checkpoint(path: &Path, cfg: &TrainConfig, trainer: &mut Trainer) -> Result<(u64, f64)> {
    let (all, md) = model_file::read_tensors(path)?;
    if md.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
        return Err(EngineError::model(path, "not a libdavi training checkpoint"));
    }
    let saved: TrainConfig = md.get("config").and_then(|c| TrainConfig::from_toml(c, &[]).ok()).ok_or_else(|| EngineError::model(path, "checkpoint config unreadable"))?;
    if saved.prior.is_some() != cfg.prior.is_some() || saved.data.size != cfg.data.size {
        return Err(EngineError::model(path, format!("checkpoint is of run `{}`, whose kind or patch size differs from `{}`", saved.name, cfg.name)));
    }
    let step: u64 = md.get("step").and_then(|s| s.parse().ok()).ok_or_else(|| EngineError::model(path, "step missing"))?;
    let ema_calls: i64 = md.get("ema_calls").and_then(|s| s.parse().ok()).unwrap_or(step as i64);
    let wall: f64 = md.get("wall_seconds").and_then(|s| s.parse().ok()).unwrap_or(0.0);
    trainer.load_state(&all, ema_calls).map_err(|e| EngineError::model(path, e.to_string()))?;
    // A run that switches precision on resume starts the loss scale afresh.
    if let (Some(s), Some(scale), Some(tracker)) = (
        trainer.scaler_mut(),
        md.get("amp_scale").and_then(|v| v.parse::<f64>().ok()),
        md.get("amp_growth_tracker").and_then(|v| v.parse::<i64>().ok()),
    ) {
        s.scale = scale;
        s.growth_tracker = tracker;
    }
    Ok((step, wall))
}

/// Evaluate on held-out crops: returns JSON metrics and writes a grid.
fn evaluate(trainer: &Trainer, eval: Option<&Tensor>, dir: &Path, step: u64, seed: u64) -> Result<serde_json::Value> {
    let Some(clean) = eval else { return Ok(serde_json::json!({})) };
    match trainer {
        Trainer::Prior(p) => Ok(serde_json::json!({ "heldout_eps_mse": p.eval_mse(clean, seed as i64) })),
        Trainer::Davi(d) => {
            let (y_img, x_hat) = d.evaluate(clean, seed)?;
            let to01 = |t: &Tensor| ((t.to_device(Device::Cpu) + 1.0) / 2.0).clamp(0.0, 1.0);
            let c = to01(clean);
            let psnr = metrics::mean(&metrics::psnr(&to01(&x_hat), &c));
            let ssim = metrics::mean(&metrics::ssim(&to01(&x_hat), &c));
            let psnr_y = metrics::mean(&metrics::psnr(&to01(&y_img), &c));
            std::fs::create_dir_all(dir.join("grids")).map_err(|e| EngineError::io(dir, e))?;
            save_grid(&dir.join("grids").join(format!("step{step:07}.png")), &[&y_img, &x_hat, clean])?;
            Ok(serde_json::json!({ "heldout_psnr": psnr, "heldout_ssim": ssim, "heldout_psnr_measurement": psnr_y }))
        }
    }
}

fn eval_set(cfg: &TrainConfig, device: Device) -> Result<Option<Tensor>> {
    let Some(dir) = &cfg.data.heldout_dir else { return Ok(None) };
    let images = list_images(dir)?.iter().map(|f| super::data::load_rgb(f)).collect::<Result<Vec<_>>>()?;
    let m = match (&cfg.prior, &cfg.davi) {
        (Some(p), _) => p.unet.size_multiple(),
        _ => 32,
    };
    // Centre crops of a common side, a multiple of the network's factor. Priors: 4x the
    // patch, at most 128 px (keeps CPU evaluation cheap). DAVI generators: 256 px, the size
    // their results are reported at (a window model's context and a tile model's blending
    // both show at that size); images smaller than that are left out, unless all are.
    let want = if cfg.prior.is_some() { (cfg.data.size * 4).min(128) } else { 256 };
    let short = |i: &Tensor| i.size()[1].min(i.size()[2]);
    let images: Vec<Tensor> = if images.iter().any(|i| short(i) >= want) { images.into_iter().filter(|i| short(i) >= want).collect() } else { images };
    let smallest = images.iter().map(short).min().unwrap_or(0);
    let side = want.min(smallest) / m * m;
    if side < m {
        return Err(EngineError::InvalidInput(format!("held-out images in {} are too small to evaluate", dir.display())));
    }
    let crops: Vec<Tensor> = images
        .iter()
        .map(|img| {
            let (_, h, w) = img.size3().expect("3-D");
            img.narrow(1, (h - side) / 2, side).narrow(2, (w - side) / 2, side) * 2.0 - 1.0
        })
        .collect();
    Ok(Some(Tensor::stack(&crops, 0).to_device(device)))
}

/// Train according to `cfg` (creating or resuming its run directory).
pub fn run(cfg: &TrainConfig, opts: &RunOptions) -> Result<RunReport> {
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
    if ckpt.exists() && !opts.resume {
        return Err(EngineError::InvalidInput(format!("{} already holds a run: pass --resume to continue it, or choose another run.out_dir", dir.display())));
    }
    model_file::write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    tch::manual_seed(cfg.run.seed as i64);
    let mut trainer = Trainer::new(cfg, &devices)?;
    let (mut step, wall_before) = if opts.resume && ckpt.exists() { load_checkpoint(&ckpt, cfg, &mut trainer)? } else { (0, 0.0) };
    // Records of steps after the checkpoint were logged by a run that stopped before saving
    // them: those steps run again now.
    truncate_log(&dir.join("log.jsonl"), step)?;
    let mut saved_step = (step > 0).then_some(step);
    let files = list_images(&cfg.data.train_dir)?;
    let batch = cfg.prior.as_ref().map(|p| p.batch).or(cfg.davi.as_ref().map(|d| d.batch)).expect("validated");
    let ds = Dataset::open(files, trainer.window(cfg.data.size), cfg.data.crop, cfg.data.min_scale, cfg.data.hflip)?;
    let eval = eval_set(cfg, device)?;
    let monitor = Monitor::new(&dir, step, cfg.run.total_steps).quiet(opts.quiet);
    let prefetch = Prefetcher::start(ds, cfg.run.seed, step, batch, 2);
    let stop_at = opts.max_steps_now.map(|n| (step + n).min(cfg.run.total_steps)).unwrap_or(cfg.run.total_steps);
    let mut last = Terms::new();
    while step < stop_at {
        let x = prefetch.next(step).to_device(device);
        last = trainer.step(&x, cfg.run.seed, step, cfg.run.total_steps);
        if last.values().any(|v| !v.is_finite()) {
            // The weights are already updated from a non-finite loss: do not save them; the
            // last checkpoint on disk stays the last good state.
            return Err(EngineError::InvalidInput(format!(
                "loss became non-finite at step {step}: {last:?} (the last checkpoint is kept; lower the learning rate and --resume)"
            )));
        }
        step += 1;
        monitor.progress(step, &last);
        if step % cfg.run.log_every == 0 || step == stop_at {
            let mut rec = serde_json::json!({ "step": step, "wall_s": wall_before + monitor.elapsed() });
            for (k, v) in &last {
                rec[k] = serde_json::json!(v);
            }
            monitor.log(&rec)?;
        }
        if step % cfg.run.eval_every == 0 || step == cfg.run.total_steps {
            let m = evaluate(&trainer, eval.as_ref(), &dir, step, cfg.run.seed)?;
            let mut rec = serde_json::json!({ "step": step, "eval": true });
            for (k, v) in m.as_object().into_iter().flatten() {
                rec[k] = v.clone();
            }
            monitor.log(&rec)?;
            keep_best(cfg, &trainer, &dir, step, wall_before + monitor.elapsed(), device, &m)?;
        }
        let out_of_time = opts.max_seconds_now.is_some_and(|s| monitor.elapsed() >= s);
        if step % cfg.run.checkpoint_every == 0 || step == stop_at || out_of_time {
            save_checkpoint(&dir, cfg, &trainer, step, wall_before + monitor.elapsed()).map_err(|e| checkpoint_failed(e, step, saved_step))?;
            saved_step = Some(step);
        }
        if out_of_time {
            break;
        }
    }
    if !opts.quiet {
        eprintln!();
    }
    let finished = step >= cfg.run.total_steps;
    let wall = wall_before + monitor.elapsed();
    if finished {
        export(cfg, &trainer, step, wall, device, &dir.join("model.safetensors"))?;
    }
    let keys: &[&str] = if cfg.prior.is_some() { &["loss", "mse", "vb", "heldout_eps_mse"] } else { &["loss_g", "ikl", "con", "gt", "fake_score", "heldout_psnr"] };
    if monitor.log_path.exists() {
        plot_log(&monitor.log_path, keys, &dir.join("curves.png"))?;
    }
    Ok(RunReport { out_dir: dir, step, finished, last_terms: last })
}

/// The file beside a run's checkpoint holding the EMA generator of its best evaluation so far,
/// and the record of which step and score that was.
pub const BEST_MODEL: &str = "best.safetensors";
const BEST_RECORD: &str = "best.json";

/// Export the EMA generator as [`BEST_MODEL`] when this evaluation's held-out PSNR beats every
/// earlier one of the run: checkpoints are chosen by validation score, not by the last step.
fn keep_best(cfg: &TrainConfig, trainer: &Trainer, dir: &Path, step: u64, wall: f64, device: Device, m: &serde_json::Value) -> Result<()> {
    let Some(psnr) = m.get("heldout_psnr").and_then(|v| v.as_f64()) else { return Ok(()) };
    let record = dir.join(BEST_RECORD);
    let best = std::fs::read_to_string(&record).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()).and_then(|v| v.get("heldout_psnr").and_then(|p| p.as_f64()));
    if best.is_some_and(|b| b >= psnr) {
        return Ok(());
    }
    let mut extra = m.clone();
    extra["step"] = serde_json::json!(step);
    export_scored(cfg, trainer, step, wall, device, &dir.join(BEST_MODEL), m.clone())?;
    model_file::write_atomic(&record, extra.to_string().as_bytes())
}

fn export(cfg: &TrainConfig, trainer: &Trainer, step: u64, wall: f64, device: Device, out: &Path) -> Result<()> {
    export_scored(cfg, trainer, step, wall, device, out, serde_json::Value::Null)
}

/// [`export`], recording the held-out scores the exported network reached in its provenance.
fn export_scored(cfg: &TrainConfig, trainer: &Trainer, step: u64, wall: f64, device: Device, out: &Path, scores: serde_json::Value) -> Result<()> {
    let extra = serde_json::json!({ "wall_seconds": wall.round(), "device": device_name(device), "threads": cfg.run.threads, "heldout": scores });
    let (meta, vs) = trainer.export_parts(cfg, step, extra);
    model_file::save(out, &meta, vs)
}

/// Export the EMA network of a run directory's checkpoint as a model file.
pub fn export_run(dir: &Path, out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(dir.join("config.toml")).map_err(|e| EngineError::io(dir.join("config.toml"), e))?;
    let mut cfg = TrainConfig::from_toml(&text, &[])?;
    cfg.run.device = "cpu".into();
    let mut trainer = Trainer::new(&cfg, &[Device::Cpu])?;
    let (step, wall) = load_checkpoint(&dir.join(CHECKPOINT), &cfg, &mut trainer)?;
    export(&cfg, &trainer, step, wall, Device::Cpu, out)
}
