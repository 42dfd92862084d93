//! Device selection: `auto` (the first CUDA device if one is usable, else CPU), `cpu`,
//! `cuda` (= `cuda:0`) or `cuda:N`. Asking for a CUDA device that does not exist is an
//! error rather than a silent CPU fallback, so a user never benchmarks the wrong thing.
use crate::error::{EngineError, Result};
use tch::Device;

/// Parse a device string and check that the device is usable here.
pub fn parse_device(s: &str) -> Result<Device> {
    let s = s.trim().to_ascii_lowercase();
    match s.as_str() {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        _ => {
            let idx = if s == "cuda" {
                0
            } else if let Some(n) = s.strip_prefix("cuda:") {
                n.parse::<usize>().map_err(|_| {
                    EngineError::Device(format!("`{s}` is not a device (use auto, cpu, cuda or cuda:N)"))
                })?
            } else {
                return Err(EngineError::Device(format!(
                    "`{s}` is not a device (use auto, cpu, cuda or cuda:N)"
                )));
            };
            let n = if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
            if idx >= n {
                return Err(EngineError::Device(format!(
                    "cuda:{idx} requested but {n} CUDA device(s) are usable here"
                )));
            }
            Ok(Device::Cuda(idx))
        }
    }
}

/// The canonical name of a device (`cpu`, `cuda:0`).
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_devices() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("auto").is_ok());
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        if !tch::Cuda::is_available() {
            assert!(parse_device("cuda:0").is_err());
        }
    }
}
