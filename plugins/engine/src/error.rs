//! Typed errors of the engine, grouped by who is at fault: the caller's input, a model file,
//! or the runtime (libtorch, I/O), and the status a host sees for each ([`DaviError`], the
//! SDK's status with a message, which both the plugin and libdavi's C API return).
use davi_sdk::{DaviError, DaviStatus};
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

impl From<EngineError> for DaviError {
    /// The status a host sees for an engine error, grouped by who is at fault.
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::InvalidInput(_) => DaviStatus::InvalidArgument,
            EngineError::Spec(_) => DaviStatus::InvalidSpec,
            EngineError::Model { .. } | EngineError::Weights(_) => DaviStatus::ModelError,
            EngineError::Device(_) => DaviStatus::DeviceError,
            EngineError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                DaviStatus::NotFound
            }
            EngineError::Io { .. } => DaviStatus::ModelError,
            EngineError::Torch(t) if is_out_of_memory(&t.to_string()) => DaviStatus::OutOfMemory,
            EngineError::Torch(_) => DaviStatus::Internal,
            EngineError::Cancelled => DaviStatus::Cancelled,
        };
        DaviError::new(status, e.to_string())
    }
}

/// libtorch reports allocation failures only as text ("CUDA out of memory", "DefaultCPUAllocator:
/// can't allocate memory", "not enough memory").
fn is_out_of_memory(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("out of memory")
        || m.contains("can't allocate memory")
        || m.contains("not enough memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_statuses() {
        let s = |e: EngineError| DaviError::from(e).status;
        assert_eq!(s(EngineError::Cancelled), DaviStatus::Cancelled);
        assert_eq!(s(EngineError::Device("x".into())), DaviStatus::DeviceError);
        assert_eq!(s(EngineError::Weights("x".into())), DaviStatus::ModelError);
        assert_eq!(
            s(EngineError::InvalidInput("x".into())),
            DaviStatus::InvalidArgument
        );
        let nf = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(s(EngineError::io("/nope", nf)), DaviStatus::NotFound);
        assert!(is_out_of_memory("CUDA out of memory. Tried to allocate"));
        assert!(is_out_of_memory(
            "DefaultCPUAllocator: can't allocate memory: you tried"
        ));
    }
}
