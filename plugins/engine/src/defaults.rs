//! The default models, found without configuration.
//!
//! The project ships one DAVI generator per task, trained by its own trainer on real
//! photographs (`models/photo-<task>.safetensors`, see docs/models.md). They are looked up,
//! first match wins, in:
//! 1. `$DAVI_MODEL_DIR`;
//! 2. `<dir of the running executable or library>/models` and `…/../share/libdavi/models`
//!    (an installed layout);
//! 3. the `models/` folder of the source checkout this library was built from.
use crate::error::{EngineError, Result};
use std::path::{Path, PathBuf};

/// File name of the default model for a short task name (`sr4`, `deblur`, …).
pub fn file_name(task: &str) -> Result<String> {
    let canonical = match task {
        "deblur" | "gaussian" | "gaussian_blur" => "deblur",
        "sr4" | "sr_averagepooling" | "super_resolution" => "sr4",
        "inpaint" | "inpainting" => "inpaint",
        "denoise" | "deno" | "denoising" => "denoise",
        "colorize" | "colorization" => "colorize",
        other => {
            return Err(EngineError::InvalidInput(format!(
                "no default model for task `{other}` (defaults exist for deblur, sr4, inpaint, \
                    denoise, colorize)"
            )))
        }
    };
    Ok(format!("photo-{canonical}.safetensors"))
}

/// The task whose default model serves an operator spec.
pub fn task_for_spec(spec: &davi_sdk::OperatorSpec) -> Option<&'static str> {
    use davi_sdk::OperatorSpec as S;
    Some(match spec {
        S::GaussianBlur(_) => "deblur",
        S::SuperResolution(s) if s.factor == 4 => "sr4",
        S::SuperResolution(_) => return None,
        S::Inpainting(_) => "inpaint",
        S::Denoising(_) => "denoise",
        S::Colorization(_) => "colorize",
    })
}

/// Folders searched for default models, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("DAVI_MODEL_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe.parent() {
            dirs.push(d.join("models"));
            dirs.push(d.join("../share/libdavi/models"));
        }
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    dirs
}

/// Path of the default model for a task.
pub fn model_path(task: &str) -> Result<PathBuf> {
    let name = file_name(task)?;
    let dirs = search_dirs();
    dirs.iter()
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            EngineError::InvalidInput(format!(
            "default model {name} not found (looked in {}); set DAVI_MODEL_DIR or pass a model \
                file",
            dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        ))
        })
}
