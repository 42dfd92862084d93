//! `davi`: one-step diffusion-prior image restoration from the shell.
//!
//! ```text
//! davi degrade IN -o OUT (--task T | --op SPEC) [--seed N]      simulate a measurement
//! davi restore IN -o OUT [--model M] [--task T | --op SPEC] ...  restore a photograph
//! davi batch IN_DIR OUT_DIR [--task T ...] [--shard i/n] ...     restore a folder tree
//! davi convert CKPT.pt -o MODEL.safetensors --preset P ...       official checkpoint → model
//! davi info (MODEL | --preset P)                                  config and parameter count
//! davi train-prior / train (--config F | --preset P) [--set k=v]... [--resume]
//! davi export RUN_DIR -o MODEL.safetensors                       EMA network of a run
//! davi eval --images DIR --task T ...                             DAVI vs DPS vs classical
//! ```
//! Errors are one line on stderr and a non-zero exit; outputs are written atomically.
mod batch;
mod eval_cmd;
mod imageio;
mod plugins;
mod restore_cmd;
mod runtime;
mod video;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use davi_engine::diffusion::BetaSchedule;
use davi_engine::pipeline;
use davi_engine::restore::{RestoreOptions, Restorer};
use davi_engine::unet::{parameter_count, UNetConfig};
use davi_engine::weights::{convert, model_file, ModelMeta, ModelRole};
use davi_sdk::OperatorSpec;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "davi",
    version,
    about = "One-step diffusion-prior image restoration (DAVI)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Simulate a measurement y = A(x) + noise from a clean image.
    Degrade {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        op: OpArgs,
        /// Seed of the measurement noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Restore a degraded image in one network evaluation.
    Restore {
        input: PathBuf,
        /// Output image (.png/.jpg/.tif), or .npy for the raw f32 result (shape (C, H, W),
        /// values in [-1, 1], before clamping and quantisation).
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        args: restore_cmd::RestoreArgs,
        /// Restore through a plugin loaded from this folder or file (repeatable) instead of
        /// the built-in engine; see `davi plugins`.
        #[arg(long)]
        plugin: Vec<PathBuf>,
        /// Use the plugin with this id (e.g. `classical`, `davi`); implies the plugin path.
        #[arg(long)]
        plugin_id: Option<String>,
        /// Write timings and the network work done (calls, tiles, pixels, FLOPs) as JSON to
        /// this file (what scripts/bench-photo.sh reads; built-in engine only).
        #[arg(long)]
        stats_json: Option<PathBuf>,
    },
    /// Restore every image under a folder into another, keeping relative paths (resumable,
    /// shardable; see docs/hosts/batch.md).
    Batch(batch::BatchArgs),
    /// Convert an official PyTorch checkpoint into a self-describing model file.
    Convert {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Architecture: ffhq256 | imagenet256.
        #[arg(long)]
        preset: String,
        /// What the checkpoint is: `generator` (DAVI `{deg}_ema.pt`) or `prior` (a teacher
        /// such as `ffhq_10m.pt`). Default: a DAVI checkpoint layout, or a given --task/--op,
        /// means generator; a plain state dict means prior.
        #[arg(long)]
        role: Option<String>,
        #[command(flatten)]
        op: OpArgs,
        /// Perturbation h to restore with (default 0.1; the official ImageNet SR, inpainting,
        /// denoising and colorization rows evaluate with 0.01 — pass it for those).
        #[arg(long)]
        perturb_h: Option<f64>,
    },
    /// Train a diffusion prior (the teacher) on an image folder.
    TrainPrior(TrainArgs),
    /// DAVI amortised training of a one-step generator from a teacher model.
    Train(TrainArgs),
    /// Export the EMA network of a run directory as a model file.
    Export {
        run_dir: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Score DAVI against DPS, the classical plugin and the lift of y on clean images.
    Eval(eval_cmd::EvalArgs),
    /// Restore raw video frames from stdin to stdout (for ffmpeg pipes; see docs/hosts/video.md).
    Video {
        #[arg(long)]
        width: usize,
        #[arg(long)]
        height: usize,
        #[arg(long, value_enum, default_value = "rgb24")]
        pix_fmt: video::PixFmt,
        #[arg(long)]
        model: Option<PathBuf>,
        #[command(flatten)]
        op: OpArgs,
        #[arg(long, default_value = "auto")]
        device: String,
        /// Precision of the network: fp32, bf16 (CUDA, CPUs with bf16 instructions) or fp16
        /// (CUDA only); see `davi restore --help`.
        #[arg(long, default_value = "fp32", value_parser = restore_cmd::PRECISIONS)]
        precision: String,
        /// Frames per network evaluation.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        perturb_h: Option<f64>,
        /// One JSON object per batch on stderr: {"frame": N, "fps": F}.
        #[arg(long)]
        progress_json: bool,
        /// Print the output frame size as WxH and exit.
        #[arg(long)]
        print_output_size: bool,
    },
    /// List the restoration plugins found (and files refused, with the reason).
    Plugins {
        /// Extra plugin folders or files to search first.
        #[arg(long)]
        plugin: Vec<PathBuf>,
    },
    /// Put images side by side (same height, scaled by nearest neighbour) into one PNG.
    Montage {
        inputs: Vec<PathBuf>,
        #[arg(short, long)]
        output: PathBuf,
        /// Height of every panel (default: the tallest input).
        #[arg(long)]
        height: Option<u32>,
    },
    /// Store a denoising generator in a window model (inpainting, colorization) as its
    /// measurement denoiser, so the measured part of its answer is denoised instead of kept
    /// with the measurement's noise (docs/models.md, "Measurement denoiser").
    AttachDenoiser {
        /// The window model.
        model: PathBuf,
        /// A denoising tile generator trained at the window model's measurement noise.
        #[arg(long)]
        denoiser: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Print a model's or a preset's configuration and exact parameter count.
    Info {
        model: Option<PathBuf>,
        #[arg(long)]
        preset: Option<String>,
    },
}

#[derive(Args, Clone)]
struct TrainArgs {
    /// Run config (TOML); see plugins/engine/presets/.
    #[arg(long, conflicts_with = "preset")]
    config: Option<PathBuf>,
    /// A compiled-in preset, e.g. photo-prior, photo-sr4, ffhq256-gaussian.
    #[arg(long)]
    preset: Option<String>,
    /// Override any config value: --set davi.t_ikl=400 --set run.total_steps=10
    #[arg(long = "set")]
    set: Vec<String>,
    /// Continue the run in run.out_dir from its checkpoint.
    #[arg(long)]
    resume: bool,
    /// Stop after this many steps now (the run stays resumable).
    #[arg(long)]
    steps: Option<u64>,
    /// Stop at the first checkpoint after this many minutes (the run stays resumable).
    #[arg(long)]
    minutes: Option<f64>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Clone, Default)]
pub(crate) struct OpArgs {
    /// Task: deblur | sr4 | sr2 | sr8 | inpaint | denoise | colorize.
    #[arg(long, conflicts_with = "op")]
    task: Option<String>,
    /// Operator spec file (TOML or JSON), see docs/specs/.
    #[arg(long)]
    op: Option<PathBuf>,
    /// Override the measurement noise sigma (in [-1, 1] units): the noise `degrade` and `eval`
    /// simulate. A DAVI generator is trained for one noise level and does not read it, but
    /// `restore` with a window model that carries a measurement denoiser (inpaint, colorize)
    /// does: 0 keeps the observed pixels (the gray) exactly, for a clean photograph.
    #[arg(long)]
    noise_sigma: Option<f64>,
}

impl OpArgs {
    /// The spec the user asked for, if any.
    fn spec(&self) -> Result<Option<OperatorSpec>> {
        let mut spec = if let Some(t) = &self.task {
            Some(OperatorSpec::for_task(t)?)
        } else if let Some(p) = &self.op {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            Some(OperatorSpec::parse(&text).with_context(|| format!("in {}", p.display()))?)
        } else {
            None
        };
        if let (Some(s), Some(n)) = (spec.as_mut(), self.noise_sigma) {
            s.set_noise_sigma(Some(n));
            s.validate()?;
        }
        Ok(spec)
    }
}

fn main() {
    // First, before anything allocates much or starts a thread (see runtime.rs).
    runtime::tune_allocator();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("davi: error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line. A cause whose text its parent already ends with (an
/// engine I/O error prints its `std::io::Error`, which is also its source) is said once.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in e.chain() {
        let s = c.to_string();
        if parts.last().is_some_and(|p| p.ends_with(&s)) {
            continue;
        }
        parts.push(s);
    }
    parts.join(": ")
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Degrade {
            input,
            output,
            op,
            seed,
        } => degrade(&input, &output, &op, seed),
        Cmd::Restore {
            input,
            output,
            args,
            plugin,
            plugin_id,
            stats_json,
        } => {
            if !plugin.is_empty() || plugin_id.is_some() {
                if stats_json.is_some() {
                    bail!(
                        "--stats-json reports the built-in engine's work; it does not apply to \
                        --plugin"
                    );
                }
                if args.precision != "fp32" {
                    bail!(
                        "--precision applies to the built-in engine; the plugin table has no \
                        precision (plugins run fp32)"
                    );
                }
                if args.ensemble != 1 {
                    bail!(
                        "--ensemble applies to the built-in engine; the plugin table has no \
                        self-ensemble"
                    );
                }
                return restore_with_plugin(
                    &input,
                    &output,
                    args.model.as_deref(),
                    &args.op,
                    &args.device,
                    &plugin,
                    plugin_id.as_deref(),
                );
            }
            let start = std::time::Instant::now();
            let engine = restore_cmd::Engine::load(&args)?;
            let load_s = start.elapsed().as_secs_f64();
            let timings = engine.restore_file_timed(&input, &output, true)?;
            if let Some(path) = stats_json {
                let stats = engine.stats_json(&input, &output, load_s, &timings);
                std::fs::write(&path, serde_json::to_string_pretty(&stats)? + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            Ok(())
        }
        Cmd::Batch(a) => batch::run(&a),
        Cmd::Plugins { plugin } => plugins::list(&plugin),
        Cmd::Video {
            width,
            height,
            pix_fmt,
            model,
            op,
            device,
            precision,
            batch,
            seed,
            perturb_h,
            progress_json,
            print_output_size,
        } => {
            if width == 0 || height == 0 || width > 16384 || height > 16384 {
                bail!("--width and --height must be in 1..=16384");
            }
            if batch == 0 {
                bail!("--batch must be at least 1");
            }
            let device = davi_engine::parse_device(&device)?;
            let precision = davi_engine::precision::Precision::parse(&precision)?;
            precision.check_device(device)?;
            let (loaded, spec) = load_generator(model.as_deref(), &op, device)?;
            spec.validate_for_size(height, width)
                .or_else(|e| match &spec {
                    OperatorSpec::SuperResolution(_) => Ok(()),
                    _ => Err(e),
                })?;
            let mut restorer = Restorer::new(loaded, device);
            restorer.set_precision(precision)?;
            let job = video::VideoJob {
                restorer: &restorer,
                spec: &spec,
                fmt: pix_fmt,
                width,
                height,
                batch,
                opts: RestoreOptions {
                    perturb_h,
                    seed,
                    tiling: None,
                    measurement_noise: Some(spec.noise_sigma()),
                },
                progress_json,
            };
            if print_output_size {
                let (w, h) = job.output_size();
                println!("{w}x{h}");
                return Ok(());
            }
            let n = job.run(&mut std::io::stdin().lock(), &mut std::io::stdout().lock())?;
            if n == 0 {
                bail!("no frames on stdin");
            }
            Ok(())
        }
        Cmd::Montage {
            inputs,
            output,
            height,
        } => montage(&inputs, &output, height),
        Cmd::Convert {
            input,
            output,
            preset,
            role,
            op,
            perturb_h,
        } => convert_cmd(&input, &output, &preset, role.as_deref(), &op, perturb_h),
        Cmd::Info { model, preset } => info(model.as_deref(), preset.as_deref()),
        Cmd::AttachDenoiser {
            model,
            denoiser,
            output,
        } => {
            let mut window = model_file::load(&model, tch::Device::Cpu)?;
            window.attach_denoiser(model_file::load(&denoiser, tch::Device::Cpu)?)?;
            window.save(&output)?;
            eprintln!("wrote {}", output.display());
            Ok(())
        }
        Cmd::Eval(a) => eval_cmd::run(&a),
        Cmd::TrainPrior(a) => train(&a, true),
        Cmd::Train(a) => train(&a, false),
        Cmd::Export { run_dir, output } => {
            davi_engine::train::runner::export_run(&run_dir, &output)?;
            eprintln!("wrote {}", output.display());
            Ok(())
        }
    }
}

fn degrade(input: &Path, output: &Path, op: &OpArgs, seed: u64) -> Result<()> {
    let spec = op
        .spec()?
        .ok_or_else(|| anyhow!("say what degradation to simulate: --task or --op"))?;
    let pic = imageio::read(input)?;
    if pic.channels() == 1 && matches!(spec, OperatorSpec::Colorization(_)) {
        bail!("colorization needs a colour image to degrade");
    }
    let clean = pic.color.shallow_clone();
    // Super-resolution needs a size divisible by the factor: crop the right/bottom remainder.
    let (clean, alpha_src) = match &spec {
        OperatorSpec::SuperResolution(s) => {
            let f = s.factor as i64;
            let (h, w) = (pic.height() / f * f, pic.width() / f * f);
            if h == 0 || w == 0 {
                bail!("the image is smaller than the super-resolution factor {f}");
            }
            if h != pic.height() || w != pic.width() {
                eprintln!(
                    "note: cropped {}x{} to {w}x{h} (a multiple of the factor {f})",
                    pic.width(),
                    pic.height()
                );
            }
            let crop = |t: &tch::Tensor| t.narrow(2, 0, h).narrow(3, 0, w);
            (crop(&clean), pic.alpha.as_ref().map(crop))
        }
        _ => (clean, pic.alpha.as_ref().map(|a| a.shallow_clone())),
    };
    let obs = pipeline::simulate_observation(&spec, &clean, seed)?;
    let alpha = match (&alpha_src, &spec) {
        (Some(a), OperatorSpec::SuperResolution(s)) => {
            let f = s.factor as i64;
            Some(a.avg_pool2d([f, f], [f, f], [0, 0], false, true, None))
        }
        (a, _) => a.as_ref().map(|a| a.shallow_clone()),
    };
    imageio::write(
        output,
        &imageio::Picture {
            color: obs,
            alpha,
            sixteen_bit: pic.sixteen_bit,
        },
    )
}

/// The operator to restore with. `--op` is taken as given; `--task` selects the model's own
/// trained operator when the kinds agree (so `--task deblur` with a model trained on a
/// 9-tap σ=1.5 blur uses that blur); a kind the model was not trained for is an error.
fn resolve_spec(op: &OpArgs, trained: Option<&OperatorSpec>) -> Result<OperatorSpec> {
    let asked = op.spec()?;
    match (asked, trained) {
        (None, Some(t)) => Ok(t.clone()),
        (None, None) => {
            bail!("the model does not say which degradation it restores: pass --task or --op")
        }
        (Some(a), None) => Ok(a),
        (Some(a), Some(t)) if a.kind_name() != t.kind_name() => {
            bail!(
                "the model was trained for {}, not {}",
                t.kind_name(),
                a.kind_name()
            )
        }
        (Some(a), Some(t)) if op.op.is_none() => {
            // --task: keep the trained parameters, honour an explicit --noise-sigma.
            let mut s = t.clone();
            if op.noise_sigma.is_some() {
                s.set_noise_sigma(Some(a.noise_sigma()));
            }
            Ok(s)
        }
        (Some(a), Some(_)) => Ok(a),
    }
}

/// The generator to use (the given file, else the shipped default for the task) and the
/// operator to restore with.
fn load_generator(
    model: Option<&Path>,
    op: &OpArgs,
    device: tch::Device,
) -> Result<(davi_engine::weights::LoadedModel, OperatorSpec)> {
    let model_path = match model {
        Some(m) => m.to_path_buf(),
        None => {
            let spec = op.spec()?.ok_or_else(|| {
                anyhow!("say which degradation to undo: --task T, or --op SPEC, or --model MODEL")
            })?;
            let task = davi_engine::defaults::task_for_spec(&spec)
                .ok_or_else(|| anyhow!("no default model restores {spec}; pass --model"))?;
            davi_engine::defaults::model_path(task)?
        }
    };
    let loaded = model_file::load(&model_path, device)?;
    let spec = resolve_spec(op, loaded.meta.operator.as_ref())?;
    Ok((loaded, spec))
}

/// Restore through the plugin loader: the same path a C host takes.
fn restore_with_plugin(
    input: &Path,
    output: &Path,
    model: Option<&Path>,
    op: &OpArgs,
    device: &str,
    paths: &[PathBuf],
    id: Option<&str>,
) -> Result<()> {
    let spec = match (op.spec()?, model) {
        (Some(s), _) => s,
        (None, Some(m)) => model_file::read_meta(m)?
            .operator
            .ok_or_else(|| anyhow!("pass --task or --op"))?,
        (None, None) => bail!("pass --task or --op"),
    };
    let reg = plugins::registry(paths)?;
    let pic = imageio::read(input)?;
    let options = davi_sdk::PluginOptions {
        model_path: model.map(Path::to_path_buf),
        device: device.to_string(),
    };
    let color = plugins::restore(&reg, id, &options, &spec, &pic.color, &mut |_| true)
        .map_err(|e| anyhow!("{}: {}", e.status.as_str(), e.message))?;
    let alpha = pic.alpha.as_ref().map(|a| {
        let (h, w) = (color.size()[2], color.size()[3]);
        if a.size()[2] == h && a.size()[3] == w {
            a.shallow_clone()
        } else {
            a.upsample_bilinear2d([h, w], false, None, None)
                .clamp(0.0, 1.0)
        }
    });
    imageio::write(
        output,
        &imageio::Picture {
            color,
            alpha,
            sixteen_bit: pic.sixteen_bit,
        },
    )
}

fn montage(inputs: &[PathBuf], output: &Path, height: Option<u32>) -> Result<()> {
    if inputs.is_empty() {
        bail!("give at least one image");
    }
    let pics = inputs
        .iter()
        .map(|p| imageio::read(p))
        .collect::<Result<Vec<_>>>()?;
    let h = height
        .map(i64::from)
        .unwrap_or_else(|| pics.iter().map(|p| p.height()).max().unwrap_or(1));
    let panels: Vec<tch::Tensor> = pics
        .iter()
        .map(|p| {
            let c = if p.channels() == 1 {
                p.color.repeat([1, 3, 1, 1])
            } else {
                p.color.shallow_clone()
            };
            let w = (p.width() * h + p.height() / 2) / p.height();
            c.upsample_nearest2d([h, w.max(1)], None, None)
        })
        .collect();
    let sep = tch::Tensor::ones([1, 3, h, 4], (tch::Kind::Float, tch::Device::Cpu));
    let mut row = Vec::new();
    for (i, p) in panels.into_iter().enumerate() {
        if i > 0 {
            row.push(sep.shallow_clone());
        }
        row.push(p);
    }
    let color = tch::Tensor::cat(&row, 3);
    imageio::write(
        output,
        &imageio::Picture {
            color,
            alpha: None,
            sixteen_bit: false,
        },
    )
}

fn convert_cmd(
    input: &Path,
    output: &Path,
    preset: &str,
    role: Option<&str>,
    op: &OpArgs,
    perturb_h: Option<f64>,
) -> Result<()> {
    use davi_engine::weights::convert::CheckpointLayout;
    let unet = UNetConfig::preset(preset)?;
    let operator = op.spec()?;
    let forced = match role {
        Some("generator") => Some(ModelRole::Generator),
        Some("prior") => Some(ModelRole::Prior),
        Some(other) => bail!("--role must be generator or prior, got `{other}`"),
        None => None,
    };
    let mut resolved = None;
    convert::convert_with(input, output, |layout| {
        let role = forced.unwrap_or(match layout {
            CheckpointLayout::DaviEma => ModelRole::Generator,
            CheckpointLayout::StateDict if operator.is_some() => ModelRole::Generator,
            CheckpointLayout::StateDict => ModelRole::Prior,
        });
        resolved = Some(role);
        ModelMeta {
            role,
            unet,
            schedule: BetaSchedule::I2sb,
            diffusion_steps: 1000,
            operator: operator.clone(),
            perturb_h: perturb_h.or((role == ModelRole::Generator).then_some(0.1)),
            restore_tile: None,
            measurement_denoiser: None,
            restore_window: None,
            provenance: serde_json::json!({
                "converted_from": input.file_name().map(|n| n.to_string_lossy().to_string()),
                "preset": preset,
                "tool": format!("davi {}", env!("CARGO_PKG_VERSION")),
            }),
        }
    })?;
    if resolved == Some(ModelRole::Generator) && operator.is_none() {
        eprintln!("note: no --task/--op given; pass one at restore time or re-convert with --task");
    }
    eprintln!("wrote {}", output.display());
    Ok(())
}

fn train(a: &TrainArgs, prior: bool) -> Result<()> {
    use davi_engine::train::{config::TrainConfig, runner};
    let cfg = match (&a.config, &a.preset) {
        (Some(p), None) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            TrainConfig::from_toml(&text, &a.set).with_context(|| format!("in {}", p.display()))?
        }
        (None, Some(n)) => TrainConfig::preset(n, &a.set)?,
        _ => bail!("give --config FILE.toml or --preset NAME"),
    };
    if prior != cfg.prior.is_some() {
        bail!(
            "config `{}` is a {} run: use `davi {}`",
            cfg.name,
            if prior { "DAVI" } else { "prior" },
            if prior { "train" } else { "train-prior" }
        );
    }
    let opts = runner::RunOptions {
        resume: a.resume,
        quiet: a.quiet,
        max_steps_now: a.steps,
        max_seconds_now: a.minutes.map(|m| m * 60.0),
    };
    let r = runner::run(&cfg, &opts)?;
    eprintln!(
        "{} at step {} in {}{}",
        if r.finished { "finished" } else { "paused" },
        r.step,
        r.out_dir.display(),
        if r.finished {
            " (model.safetensors written)"
        } else {
            " (continue with --resume)"
        }
    );
    Ok(())
}

fn info(model: Option<&Path>, preset: Option<&str>) -> Result<()> {
    // `networks`: a measurement denoiser is a second network of the same architecture.
    let (meta_json, cfg, networks) = match (model, preset) {
        (Some(m), None) => {
            let meta = model_file::read_meta(m)?;
            let networks = 1 + i64::from(meta.measurement_denoiser.is_some());
            (serde_json::to_value(&meta)?, meta.unet, networks)
        }
        (None, Some(p)) => {
            let cfg = UNetConfig::preset(p)?;
            (serde_json::json!({ "preset": p, "unet": cfg }), cfg, 1)
        }
        _ => bail!("give either a model file or --preset NAME"),
    };
    let (tensors, params) = parameter_count(&cfg)?;
    let (tensors, params) = (tensors * networks as usize, params * networks);
    let mut v = meta_json;
    v["tensors"] = serde_json::json!(tensors);
    v["parameters"] = serde_json::json!(params);
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
