//! `davi eval`: score DAVI's one-step restoration against DPS, the classical plugin and the
//! trivial lift on a folder of clean photographs.
//!
//! ```text
//! davi eval --images DIR (--task T | --op SPEC) [--model GEN] [--prior PRIOR]
//!           [--dps-nfe N] [--dps-scale S] [--methods davi,dps,classical,lift] [--seed N]
//!           [--max-side N] [--fit crop|resize] [--json OUT.json] [--markdown OUT.md]
//!           [--device D] [--precision P] [--noise-sigma S] [--perturb-h H] [--quiet]
//! ```
//! The evaluation itself lives in the engine (`davi_engine::eval`, DPS in `davi_engine::dps`
//! after Chung et al., ICLR 2023, as described in docs/algorithm.md §8). This file parses the
//! command line, loads the models, adapts the classical plugin (`davi-classical`, loaded through
//! the plugin loader because the engine must not depend on it) to the engine's `ExternalMethod`
//! hook, shows progress, and writes the JSON and Markdown reports atomically. The Markdown table
//! also goes to stdout.
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use davi_engine::eval::{
    self, EvalConfig, EvalProgress, ExternalError, ExternalMethod, Fit, Method, Models,
};
use davi_engine::weights::model_file;
use davi_sdk::{DaviStatus, OperatorSpec};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use tch::Tensor;

#[derive(Args, Clone, Debug)]
pub struct EvalArgs {
    /// Folder of clean images (PNG/JPEG/TIFF, searched recursively, sorted).
    #[arg(long)]
    images: PathBuf,
    /// Task: deblur | sr4 | sr2 | sr8 | inpaint | denoise | colorize. With a generator trained
    /// for the same kind of operator, its trained parameters are used.
    #[arg(long, conflicts_with = "op")]
    task: Option<String>,
    /// Operator spec file (TOML or JSON), used exactly as given.
    #[arg(long)]
    op: Option<PathBuf>,
    /// Override the measurement noise sigma (in [-1, 1] units).
    #[arg(long)]
    noise_sigma: Option<f64>,
    /// DAVI one-step generator (model file); without it `davi` is skipped.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Diffusion prior for DPS (model file with role `prior`); without it `dps` is skipped.
    #[arg(long)]
    prior: Option<PathBuf>,
    /// DPS network evaluations (steps); fewer than the prior's steps respaces the chain.
    #[arg(long, default_value_t = davi_engine::dps::DEFAULT_NFE)]
    dps_nfe: usize,
    /// DPS step size `scale` (step = scale · ∇‖y − A(x̂0)‖); default: the official per-task value.
    #[arg(long)]
    dps_scale: Option<f64>,
    /// Methods to run, comma-separated, in table order.
    #[arg(long, default_value = "davi,dps,classical,lift")]
    methods: String,
    /// Seed of the measurements and of the methods' noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Limit each image side to this many pixels (see --fit).
    #[arg(long)]
    max_side: Option<i64>,
    /// How --max-side applies: `crop` (centre crop, keeps the pixel scale) or `resize`.
    #[arg(long, default_value = "crop")]
    fit: String,
    /// Write the full report (every number) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the Markdown table.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
    /// Precision of the DAVI generator's network: fp32, bf16 or fp16 (as `davi restore
    /// --precision`; DPS always runs fp32).
    #[arg(long, default_value = "fp32", value_parser = crate::restore_cmd::PRECISIONS)]
    precision: String,
    /// DAVI perturbation h (default: the model's).
    #[arg(long)]
    perturb_h: Option<f64>,
    /// No progress display.
    #[arg(long)]
    quiet: bool,
}

/// Run `davi eval`.
pub fn run(a: &EvalArgs) -> Result<()> {
    let methods = Method::parse_list(&a.methods)?;
    let fit: Fit = a.fit.parse()?;
    if a.dps_nfe == 0 {
        bail!("--dps-nfe must be at least 1");
    }
    if !a.images.is_dir() {
        bail!("--images {} is not a folder", a.images.display());
    }
    let device = davi_engine::parse_device(&a.device)?;
    let precision = davi_engine::precision::Precision::parse(&a.precision)?;
    precision.check_device(device)?;
    let wants = |m: Method| methods.contains(&m);
    let generator = a.model.as_deref().filter(|_| wants(Method::Davi));
    let prior = a.prior.as_deref().filter(|_| wants(Method::Dps));
    let trained = match generator {
        Some(p) => model_file::read_meta(p)?.operator,
        None => None,
    };
    let (task, spec) = resolve_spec(a, trained.as_ref())?;
    let models = Models::load(generator, prior, device)?;

    let mut cfg = EvalConfig::new(task, spec);
    cfg.seed = a.seed;
    cfg.methods = methods;
    cfg.max_side = a.max_side;
    cfg.fit = fit;
    cfg.dps_nfe = a.dps_nfe;
    cfg.dps_scale = a.dps_scale;
    cfg.perturb_h = a.perturb_h;
    cfg.device = device;
    cfg.precision = precision;

    let show = !a.quiet && std::io::stderr().is_terminal();
    let mut last = String::new();
    let mut progress = |p: &EvalProgress| {
        if show {
            let line = format!(
                "[{}/{}] {} {} {:3.0}%",
                p.image + 1,
                p.images,
                p.name,
                p.method,
                p.fraction * 100.0
            );
            if line != last {
                eprint!("\r{line}\x1b[K");
                last = line;
            }
        }
        true
    };
    let mut classical = ClassicalPlugin {
        registry: crate::plugins::registry(&[])
            .ok()
            .filter(|r| r.get("classical").is_some()),
    };
    let report = eval::evaluate(&a.images, &cfg, models, Some(&mut classical), &mut progress)?;
    if show {
        eprintln!();
    }

    let markdown = report.to_markdown();
    if let Some(p) = &a.json {
        write(p, report.to_json().as_bytes())?;
    }
    if let Some(p) = &a.markdown {
        write(p, markdown.as_bytes())?;
    }
    print!("{markdown}");
    Ok(())
}

/// The operator to evaluate and its label. `--op` is used as given; `--task` takes the
/// generator's trained operator when it is of the same kind (so a generator trained on a
/// 9-tap blur is scored on that blur), except for a super-resolution factor the task names
/// differently; without either, the generator's operator.
fn resolve_spec(a: &EvalArgs, trained: Option<&OperatorSpec>) -> Result<(String, OperatorSpec)> {
    let (label, mut spec) = match (&a.task, &a.op, trained) {
        (Some(t), None, _) => {
            let asked = OperatorSpec::for_task(t)?;
            match (trained, &asked) {
                // The task name pins the factor of super-resolution, nothing else.
                (Some(OperatorSpec::SuperResolution(tr)), OperatorSpec::SuperResolution(a))
                    if tr.factor != a.factor =>
                {
                    (t.clone(), asked)
                }
                (Some(tr), _) if tr.kind_name() == asked.kind_name() => (t.clone(), tr.clone()),
                _ => (t.clone(), asked),
            }
        }
        (None, Some(p), _) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            let spec = OperatorSpec::parse(&text).with_context(|| format!("in {}", p.display()))?;
            let label = p
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| spec.kind_name().into());
            (label, spec)
        }
        (None, None, Some(tr)) => (tr.kind_name().to_string(), tr.clone()),
        (None, None, None) => bail!("say which degradation to evaluate: --task or --op"),
        (Some(_), Some(_), _) => bail!("give --task or --op, not both"),
    };
    if let Some(n) = a.noise_sigma {
        spec.set_noise_sigma(Some(n));
    }
    spec.validate()?;
    Ok((label, spec))
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    model_file::write_atomic(path, bytes).map_err(|e| anyhow!(e))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The classical baseline plugin (id `classical`), loaded through the plugin loader exactly as
/// any host would load it (see `plugins.rs` for where it is searched).
struct ClassicalPlugin {
    registry: Option<davi_sdk::loader::PluginRegistry>,
}

impl ExternalMethod for ClassicalPlugin {
    fn restore(
        &mut self,
        spec: &OperatorSpec,
        observation: &Tensor,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> std::result::Result<Tensor, ExternalError> {
        let Some(reg) = &self.registry else {
            return Err(ExternalError::Unsupported(
                "the classical plugin was not found (build it: cargo build -p davi-classical)"
                    .into(),
            ));
        };
        let options = davi_sdk::PluginOptions {
            model_path: None,
            device: "cpu".into(),
        };
        match crate::plugins::restore(
            reg,
            Some("classical"),
            &options,
            spec,
            observation,
            progress,
        ) {
            Ok(t) => Ok(t),
            Err(e) if crate::plugins::is_unsupported(&e) => {
                Err(ExternalError::Unsupported(e.message))
            }
            Err(e) if e.status == DaviStatus::Cancelled => Err(ExternalError::Cancelled),
            Err(e) => Err(ExternalError::Failed(format!(
                "{}: {}",
                e.status.as_str(),
                e.message
            ))),
        }
    }
}
