//! Training configurations as data (TOML), with named presets and command-line overrides.
//!
//! One file describes a run: `[run]` (steps, seed, cadence, device), `[data]` (folders,
//! patch size), and either `[prior]` (DDPM training of the ADM U-Net, with the U-Net config
//! nested in `[prior.unet]`) or `[davi]` (amortised training from a teacher model file, with
//! the operator nested in `[davi.operator]`). Presets live in `plugins/engine/presets/` and
//! are compiled in; `--set davi.t_ikl=400` style overrides edit the TOML tree before it is
//! read, so any value can be changed from the command line. The resolved config is saved
//! beside every run.
use crate::diffusion::BetaSchedule;
use crate::error::{EngineError, Result};
use crate::train::data::Crop;
use crate::unet::UNetConfig;
use davi_sdk::OperatorSpec;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub name: String,
    pub run: RunConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub prior: Option<PriorConfig>,
    #[serde(default)]
    pub davi: Option<DaviConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Where checkpoints, logs, grids and the exported model go.
    pub out_dir: PathBuf,
    pub total_steps: u64,
    #[serde(default = "seed")]
    pub seed: u64,
    #[serde(default = "auto")]
    pub device: String,
    #[serde(default = "hundred")]
    pub log_every: u64,
    #[serde(default = "thousand")]
    pub eval_every: u64,
    #[serde(default = "thousand")]
    pub checkpoint_every: u64,
    /// Torch intra-op threads (0 = libtorch's default).
    #[serde(default)]
    pub threads: i32,
    /// `fp32`, or `fp16`: CUDA autocast with dynamic loss scaling (`train::amp`).
    #[serde(default)]
    pub precision: super::amp::Precision,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub train_dir: PathBuf,
    /// Held-out images for evaluation (never trained on).
    #[serde(default)]
    pub heldout_dir: Option<PathBuf>,
    /// Training image / patch side.
    pub size: i64,
    #[serde(default = "random_crop")]
    pub crop: Crop,
    #[serde(default = "one")]
    pub min_scale: f64,
    #[serde(default)]
    pub hflip: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriorConfig {
    pub unet: UNetConfig,
    #[serde(default)]
    pub schedule: BetaSchedule,
    #[serde(default = "thousand_usize")]
    pub diffusion_steps: usize,
    #[serde(default = "lr")]
    pub lr: f64,
    pub batch: usize,
    #[serde(default)]
    pub micro_batch: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DaviConfig {
    /// Teacher model file (a `prior` model: ε-prediction with learned variance).
    pub teacher: PathBuf,
    pub operator: OperatorSpec,
    /// Upper bound (exclusive) of the integral-KL timesteps.
    pub t_ikl: i64,
    pub weight_con: f64,
    pub reg_coeff: f64,
    pub perturb_h: f64,
    /// h used when evaluating (official ImageNet colorization trains 0.1, evaluates 0.01).
    #[serde(default)]
    pub eval_perturb_h: Option<f64>,
    #[serde(default = "lr")]
    pub lr: f64,
    #[serde(default = "lr")]
    pub s_lr: f64,
    #[serde(default = "lr")]
    pub disc_lr: f64,
    pub batch: usize,
    #[serde(default)]
    pub micro_batch: Option<usize>,
    /// PatchGAN term on (official: always).
    #[serde(default = "yes")]
    pub gan: bool,
    /// Weight of the integral-KL term (official 1). With 0 the fake score is neither trained
    /// nor evaluated and, with `gan = false`, a step costs one generator forward and backward:
    /// the supervised phase of `docs/models.md`.
    #[serde(default = "one")]
    pub ikl_weight: f64,
    /// Factor on the PatchGAN term's adaptive weight (official 1). The adaptive weight gives
    /// the GAN term the ground-truth term's last-layer gradient norm, before `reg_coeff`;
    /// below 1 the GAN pulls less against the clean image.
    #[serde(default = "one")]
    pub adv_scale: f64,
    /// A fixed bridge time for the generator's input instead of the official
    /// `trunc(1000·Beta(3,1) − 0.5)` draw; 999 trains exactly the input restoration sees.
    #[serde(default)]
    pub bridge_t: Option<i64>,
    /// Cosine decay of the generator's learning rate from `lr` to this value over
    /// `run.total_steps` (official: none, a constant rate).
    #[serde(default)]
    pub lr_min: Option<f64>,
    /// Initial generator weights: a generator model file (a supervised phase's export, or a
    /// shipped default). Official: a copy of the teacher.
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// The ground-truth term for inpainting: `official` (0.1 × MSE + MSE on observed pixels)
    /// or `full` (MSE on every pixel, which weights the hole as much as the rest).
    #[serde(default)]
    pub gt: GtLoss,
    /// Weight each pixel's ground-truth error by `1 / (1 − x̂²)` (the generator's `tanh`
    /// output `x̂`, detached; at most 10): the gradient reaching the `tanh` argument is then
    /// the plain error, where the unweighted loss scales it by `1 − x̂²` and so barely moves
    /// pixels near black and white. A weight that depends on the prediction alone leaves
    /// the minimiser (the posterior mean) unchanged; only the optimisation is
    /// preconditioned. Off: the official loss.
    #[serde(default)]
    pub gt_tanh_precondition: bool,
    /// Blur only: the chance, per side of a training window, that the window ends at an
    /// image border (the zero padding of the blur shows there), instead of continuing into
    /// image content as it does for a tile inside a photograph.
    #[serde(default = "quarter")]
    pub border_prob: f64,
    /// Inpainting only: draw one or two boxes of random size and place per sample instead of
    /// the spec's fixed boxes, so holes anywhere in a restore window are learned.
    #[serde(default)]
    pub random_boxes: bool,
    /// Train a window generator: patches are whole downscaled windows of a photograph, and
    /// the exported model restores through low-resolution context windows
    /// ([`crate::windows`]) instead of tiles.
    #[serde(default)]
    pub window: bool,
}

/// See [`DaviConfig::gt`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GtLoss {
    #[default]
    Official,
    Full,
}

impl DaviConfig {
    /// Pixels of context around each training patch that the measurement is synthesised on
    /// before the patch is cut out: the radius of a zero-padded blur kernel, else 0.
    pub fn context_margin(&self) -> i64 {
        match &self.operator {
            OperatorSpec::GaussianBlur(b) if b.mode == davi_sdk::spec::BlurMode::ZeroPadded => {
                (b.size / 2) as i64
            }
            _ => 0,
        }
    }

    /// The generator's learning rate at `step` of `total` (cosine decay when `lr_min` is set).
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        match self.lr_min {
            None => self.lr,
            Some(lo) => {
                let p = (step as f64 / total.max(1) as f64).clamp(0.0, 1.0);
                lo + (self.lr - lo) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }
}

fn seed() -> u64 {
    777
}
fn auto() -> String {
    "auto".into()
}
fn hundred() -> u64 {
    100
}
fn thousand() -> u64 {
    1000
}
fn thousand_usize() -> usize {
    1000
}
fn random_crop() -> Crop {
    Crop::Random
}
fn one() -> f64 {
    1.0
}
fn lr() -> f64 {
    1e-4
}
fn yes() -> bool {
    true
}
fn quarter() -> f64 {
    0.25
}

/// Presets compiled into the binary: (name, TOML text).
pub const PRESETS: &[(&str, &str)] = &[
    (
        "ffhq256-gaussian",
        include_str!("../../presets/ffhq256-gaussian.toml"),
    ),
    (
        "ffhq256-sr4",
        include_str!("../../presets/ffhq256-sr4.toml"),
    ),
    (
        "ffhq256-inpainting",
        include_str!("../../presets/ffhq256-inpainting.toml"),
    ),
    (
        "ffhq256-denoising",
        include_str!("../../presets/ffhq256-denoising.toml"),
    ),
    (
        "ffhq256-colorization",
        include_str!("../../presets/ffhq256-colorization.toml"),
    ),
    (
        "imagenet256-gaussian",
        include_str!("../../presets/imagenet256-gaussian.toml"),
    ),
    (
        "imagenet256-sr4",
        include_str!("../../presets/imagenet256-sr4.toml"),
    ),
    (
        "imagenet256-inpainting",
        include_str!("../../presets/imagenet256-inpainting.toml"),
    ),
    (
        "imagenet256-denoising",
        include_str!("../../presets/imagenet256-denoising.toml"),
    ),
    (
        "imagenet256-colorization",
        include_str!("../../presets/imagenet256-colorization.toml"),
    ),
    (
        "photo-prior",
        include_str!("../../presets/photo-prior.toml"),
    ),
    (
        "photo-deblur",
        include_str!("../../presets/photo-deblur.toml"),
    ),
    ("photo-sr4", include_str!("../../presets/photo-sr4.toml")),
    (
        "photo-inpaint",
        include_str!("../../presets/photo-inpaint.toml"),
    ),
    (
        "photo-denoise",
        include_str!("../../presets/photo-denoise.toml"),
    ),
    (
        "photo-colorize",
        include_str!("../../presets/photo-colorize.toml"),
    ),
    (
        "photo-deblur-davi",
        include_str!("../../presets/photo-deblur-davi.toml"),
    ),
    (
        "photo-sr4-davi",
        include_str!("../../presets/photo-sr4-davi.toml"),
    ),
    (
        "photo-inpaint-davi",
        include_str!("../../presets/photo-inpaint-davi.toml"),
    ),
    (
        "photo-denoise-davi",
        include_str!("../../presets/photo-denoise-davi.toml"),
    ),
    (
        "photo-colorize-davi",
        include_str!("../../presets/photo-colorize-davi.toml"),
    ),
    (
        "photo-denoise-low",
        include_str!("../../presets/photo-denoise-low.toml"),
    ),
    (
        "photo-denoise-low-davi",
        include_str!("../../presets/photo-denoise-low-davi.toml"),
    ),
    ("tiny-prior", include_str!("../../presets/tiny-prior.toml")),
    ("tiny-davi", include_str!("../../presets/tiny-davi.toml")),
];

impl TrainConfig {
    /// Parse TOML text, apply `key.path=value` overrides, validate.
    pub fn from_toml(text: &str, overrides: &[String]) -> Result<Self> {
        let mut tree: toml::Value = toml::from_str(text)
            .map_err(|e| EngineError::InvalidInput(format!("config: {}", e.message())))?;
        for o in overrides {
            apply_override(&mut tree, o)?;
        }
        let cfg: TrainConfig = tree.try_into().map_err(|e: toml::de::Error| {
            EngineError::InvalidInput(format!("config: {}", e.message()))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn preset(name: &str, overrides: &[String]) -> Result<Self> {
        let text = PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                EngineError::InvalidInput(format!(
                    "unknown preset `{name}` (known: {})",
                    names.join(", ")
                ))
            })?;
        Self::from_toml(text, overrides)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configs serialise")
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(EngineError::InvalidInput(format!("config: {m}")));
        match (&self.prior, &self.davi) {
            (Some(_), Some(_)) | (None, None) => {
                return bad("exactly one of [prior] or [davi] must be present")
            }
            _ => {}
        }
        if self.data.size < 8 {
            return bad("data.size must be at least 8");
        }
        if let Some(p) = &self.prior {
            p.unet.validate()?;
            if p.batch == 0 || p.micro_batch.is_some_and(|m| m == 0 || p.batch % m != 0) {
                return bad("prior.micro_batch must divide prior.batch");
            }
            if self.data.size % p.unet.size_multiple() != 0 {
                return bad("data.size must be a multiple of the U-Net's down-sampling factor");
            }
        }
        if let Some(d) = &self.davi {
            d.operator
                .validate_for_size(self.data.size as usize, self.data.size as usize)?;
            if d.t_ikl < 1 || d.t_ikl > 1000 {
                return bad("davi.t_ikl must be in 1..=1000");
            }
            if d.batch == 0 || d.micro_batch.is_some_and(|m| m == 0 || d.batch % m != 0) {
                return bad("davi.micro_batch must divide davi.batch");
            }
            if !(d.ikl_weight.is_finite() && d.ikl_weight >= 0.0) {
                return bad("davi.ikl_weight must be a finite number >= 0");
            }
            if !(d.adv_scale.is_finite() && d.adv_scale >= 0.0) {
                return bad("davi.adv_scale must be a finite number >= 0");
            }
            if d.bridge_t.is_some_and(|t| !(0..1000).contains(&t)) {
                return bad("davi.bridge_t must be in 0..=999");
            }
            if d.lr_min
                .is_some_and(|l| !(l.is_finite() && l >= 0.0 && l <= d.lr))
            {
                return bad("davi.lr_min must be in [0, davi.lr]");
            }
            if !(0.0..=1.0).contains(&d.border_prob) {
                return bad("davi.border_prob must be in [0, 1]");
            }
            if d.random_boxes && !matches!(d.operator, OperatorSpec::Inpainting(_)) {
                return bad("davi.random_boxes applies to inpainting only");
            }
        }
        Ok(())
    }
}

/// Set `a.b.c=value` in a TOML tree; the value is parsed as TOML (numbers, booleans,
/// quoted strings) and falls back to a bare string.
pub fn apply_override(tree: &mut toml::Value, o: &str) -> Result<()> {
    let (path, raw) = o
        .split_once('=')
        .ok_or_else(|| EngineError::InvalidInput(format!("override `{o}` is not key=value")))?;
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut cur = tree;
    let parts: Vec<&str> = path.trim().split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        let table = cur.as_table_mut().ok_or_else(|| {
            EngineError::InvalidInput(format!("override `{o}`: `{p}` is not a table"))
        })?;
        if i + 1 == parts.len() {
            table.insert(p.to_string(), value);
            return Ok(());
        }
        cur = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses() {
        for (name, _) in PRESETS {
            TrainConfig::preset(name, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn overrides_apply_and_typos_fail() {
        let c = TrainConfig::preset(
            "ffhq256-gaussian",
            &["davi.t_ikl=123".into(), "run.out_dir=\"x\"".into()],
        )
        .unwrap();
        assert_eq!(c.davi.as_ref().unwrap().t_ikl, 123);
        assert_eq!(c.run.out_dir, PathBuf::from("x"));
        assert!(TrainConfig::preset("ffhq256-gaussian", &["davi.t_ikll=1".into()]).is_err());
        assert!(TrainConfig::preset("nope", &[]).is_err());
        let back = TrainConfig::from_toml(&c.to_toml(), &[]).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn official_rows_match_reference_table() {
        let row = |n: &str| TrainConfig::preset(n, &[]).unwrap().davi.unwrap();
        let g = row("ffhq256-gaussian");
        assert_eq!(
            (
                g.t_ikl,
                g.weight_con,
                g.reg_coeff,
                g.perturb_h,
                g.batch,
                g.micro_batch
            ),
            (400, 0.5, 0.25, 0.1, 32, Some(8))
        );
        let c = row("imagenet256-colorization");
        assert_eq!(
            (
                c.perturb_h,
                c.eval_perturb_h,
                c.disc_lr,
                c.batch,
                c.micro_batch
            ),
            (0.1, Some(0.01), 1e-3, 48, Some(3))
        );
        let i = row("imagenet256-inpainting");
        assert_eq!(
            (i.t_ikl, i.weight_con, i.reg_coeff, i.perturb_h),
            (400, 0.01, 0.1, 0.01)
        );
    }
}
