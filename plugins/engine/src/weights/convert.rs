//! Official checkpoints to self-describing model files (`davi convert`).
//!
//! Accepts (docs/algorithm.md §2.3): plain state dicts (`ffhq_10m.pt`,
//! `256x256_diffusion_uncond.pt`, OrderedDict pickles in zip or legacy format), DAVI
//! evaluation checkpoints (`{deg}_ema.pt`: `implicit_func_ema` → `ema_model.<key>` are the
//! inference weights), and DAVI training checkpoints (`model-ema-<step>.pt`, same entry).
//! Every tensor is cast to f32 (the official weights are f32; fp16 copies of convolutions are
//! safe to widen).
use super::model_file::{self, ModelMeta};
use super::torch_pickle::{self, RawTensor};
use crate::error::{EngineError, Result};
use std::path::Path;
use tch::{Kind, Tensor};

/// Which tensors of a `.pt` file hold the U-Net.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointLayout {
    /// Keys are the U-Net names themselves.
    StateDict,
    /// DAVI checkpoint: `implicit_func_ema.ema_model.<key>`.
    DaviEma,
}

/// Decide the layout from the names present.
pub fn detect_layout(names: &[&str]) -> CheckpointLayout {
    if names
        .iter()
        .any(|n| n.starts_with("implicit_func_ema.ema_model."))
    {
        CheckpointLayout::DaviEma
    } else {
        CheckpointLayout::StateDict
    }
}

fn raw_to_tensor(name: &str, raw: &RawTensor) -> Result<Tensor> {
    let shape: Vec<i64> = raw.shape.iter().map(|&d| d as i64).collect();
    let data = raw.to_f32_vec();
    if data.len() != raw.numel() {
        return Err(EngineError::Weights(format!(
            "{name}: data length does not match its shape"
        )));
    }
    Ok(Tensor::from_slice(&data)
        .reshape(shape.as_slice())
        .to_kind(Kind::Float))
}

/// The U-Net tensors of an official checkpoint, with prefixes stripped.
pub fn unet_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Ok(unet_tensors_and_layout(path)?.0)
}

/// [`unet_tensors`] plus the layout the file had.
pub fn unet_tensors_and_layout(path: &Path) -> Result<(Vec<(String, Tensor)>, CheckpointLayout)> {
    let all =
        torch_pickle::read_pt_tensors(path).map_err(|e| EngineError::model(path, e.to_string()))?;
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    let layout = detect_layout(&names);
    let prefix = match layout {
        CheckpointLayout::StateDict => "",
        CheckpointLayout::DaviEma => "implicit_func_ema.ema_model.",
    };
    let mut out = Vec::new();
    for (name, raw) in &all {
        // DataParallel/DDP wrappers prefix `module.`.
        let Some(key) = name.strip_prefix(prefix) else {
            continue;
        };
        let key = key.strip_prefix("module.").unwrap_or(key);
        out.push((key.to_string(), raw_to_tensor(name, raw)?));
    }
    if out.is_empty() {
        return Err(EngineError::model(path, "no tensors found"));
    }
    Ok((out, layout))
}

/// Convert an official checkpoint into a model file at `out`, checking every tensor
/// against the architecture in `meta`.
pub fn convert(input: &Path, out: &Path, meta: &ModelMeta) -> Result<()> {
    convert_with(input, out, |_| meta.clone())
}

/// Like [`convert`], with the metadata decided once the file's layout is known (a DAVI
/// checkpoint holds a generator, a plain state dict usually a prior).
pub fn convert_with(
    input: &Path,
    out: &Path,
    make_meta: impl FnOnce(CheckpointLayout) -> ModelMeta,
) -> Result<()> {
    let (tensors, layout) = unet_tensors_and_layout(input)?;
    let meta = &make_meta(layout);
    let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
    tch::no_grad(|| crate::unet::UNetModel::new(&vs.root(), &meta.unet))?;
    model_file::copy_by_name(&mut vs, tensors).map_err(|e| match e {
        EngineError::Weights(m) => EngineError::model(input, m),
        other => other,
    })?;
    model_file::save(out, meta, &vs)
}
