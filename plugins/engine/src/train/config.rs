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

/// Presets compiled into the binary: (name, TOML text).
pub const PRESETS: &[(&str, &str)] = &[
    ("ffhq256-gaussian", include_str!("../../presets/ffhq256-gaussian.toml")),
    ("ffhq256-sr4", include_str!("../../presets/ffhq256-sr4.toml")),
    ("ffhq256-inpainting", include_str!("../../presets/ffhq256-inpainting.toml")),
    ("ffhq256-denoising", include_str!("../../presets/ffhq256-denoising.toml")),
    ("ffhq256-colorization", include_str!("../../presets/ffhq256-colorization.toml")),
    ("imagenet256-gaussian", include_str!("../../presets/imagenet256-gaussian.toml")),
    ("imagenet256-sr4", include_str!("../../presets/imagenet256-sr4.toml")),
    ("imagenet256-inpainting", include_str!("../../presets/imagenet256-inpainting.toml")),
    ("imagenet256-denoising", include_str!("../../presets/imagenet256-denoising.toml")),
    ("imagenet256-colorization", include_str!("../../presets/imagenet256-colorization.toml")),
    ("photo-prior", include_str!("../../presets/photo-prior.toml")),
    ("photo-deblur", include_str!("../../presets/photo-deblur.toml")),
    ("photo-sr4", include_str!("../../presets/photo-sr4.toml")),
    ("photo-inpaint", include_str!("../../presets/photo-inpaint.toml")),
    ("photo-denoise", include_str!("../../presets/photo-denoise.toml")),
    ("photo-colorize", include_str!("../../presets/photo-colorize.toml")),
    ("tiny-prior", include_str!("../../presets/tiny-prior.toml")),
    ("tiny-davi", include_str!("../../presets/tiny-davi.toml")),
];

impl TrainConfig {
    /// Parse TOML text, apply `key.path=value` overrides, validate.
    pub fn from_toml(text: &str, overrides: &[String]) -> Result<Self> {
        let mut tree: toml::Value = toml::from_str(text).map_err(|e| EngineError::InvalidInput(format!("config: {}", e.message())))?;
        for o in overrides {
            apply_override(&mut tree, o)?;
        }
        let cfg: TrainConfig = tree.try_into().map_err(|e: toml::de::Error| EngineError::InvalidInput(format!("config: {}", e.message())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn preset(name: &str, overrides: &[String]) -> Result<Self> {
        let text = PRESETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t).ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            EngineError::InvalidInput(format!("unknown preset `{name}` (known: {})", names.join(", ")))
        })?;
        Self::from_toml(text, overrides)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configs serialise")
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(EngineError::InvalidInput(format!("config: {m}")));
        match (&self.prior, &self.davi) {
            (Some(_), Some(_)) | (None, None) => return bad("exactly one of [prior] or [davi] must be present"),
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
            d.operator.validate_for_size(self.data.size as usize, self.data.size as usize)?;
            if d.t_ikl < 1 || d.t_ikl > 1000 {
                return bad("davi.t_ikl must be in 1..=1000");
            }
            if d.batch == 0 || d.micro_batch.is_some_and(|m| m == 0 || d.batch % m != 0) {
                return bad("davi.micro_batch must divide davi.batch");
            }
        }
        Ok(())
    }
}

/// Set `a.b.c=value` in a TOML tree; the value is parsed as TOML (numbers, booleans,
/// quoted strings) and falls back to a bare string.
pub fn apply_override(tree: &mut toml::Value, o: &str) -> Result<()> {
    let (path, raw) = o.split_once('=').ok_or_else(|| EngineError::InvalidInput(format!("override `{o}` is not key=value")))?;
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut cur = tree;
    let parts: Vec<&str> = path.trim().split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        let table = cur.as_table_mut().ok_or_else(|| EngineError::InvalidInput(format!("override `{o}`: `{p}` is not a table")))?;
        if i + 1 == parts.len() {
            table.insert(p.to_string(), value);
            return Ok(());
        }
        cur = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
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
        let c = TrainConfig::preset("ffhq256-gaussian", &["davi.t_ikl=123".into(), "run.out_dir=\"x\"".into()]).unwrap();
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
        assert_eq!((g.t_ikl, g.weight_con, g.reg_coeff, g.perturb_h, g.batch, g.micro_batch), (400, 0.5, 0.25, 0.1, 32, Some(8)));
        let c = row("imagenet256-colorization");
        assert_eq!((c.perturb_h, c.eval_perturb_h, c.disc_lr, c.batch, c.micro_batch), (0.1, Some(0.01), 1e-3, 48, Some(3)));
        let i = row("imagenet256-inpainting");
        assert_eq!((i.t_ikl, i.weight_con, i.reg_coeff, i.perturb_h), (400, 0.01, 0.1, 0.01));
    }
}
