//! Typed errors of the engine, grouped by who is at fault: the caller's input, a model file,
//! or the runtime (libtorch, I/O).
use std::path::PathBuf;

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The caller passed something unusable (shape, spec, device string, option).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An operator spec failed validation.
    #[error(transparent)]
    Spec(#[from] davi_sdk::SpecError),
    /// A model or checkpoint file is malformed, truncated or does not fit the architecture.
    #[error("model file {path}: {msg}")]
    Model { path: PathBuf, msg: String },
    /// A tensor is missing, unexpected or mis-shaped when loading by name.
    #[error("weights: {0}")]
    Weights(String),
    /// The requested device cannot be used.
    #[error("device: {0}")]
    Device(String),
    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// libtorch raised an error (out of memory, unsupported op on a device, ...).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The operation was cancelled by the caller's progress callback.
    #[error("cancelled")]
    Cancelled,
}

impl EngineError {
    pub fn model(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        EngineError::Model {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io {
            path: path.into(),
            source,
        }
    }
}
