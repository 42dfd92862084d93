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
                    EngineError::Device(format!(
                        "`{s}` is not a device (use auto, cpu, cuda or cuda:N)"
                    ))
                })?
            } else {
                return Err(EngineError::Device(format!(
                    "`{s}` is not a device (use auto, cpu, cuda or cuda:N)"
                )));
            };
            let n = if tch::Cuda::is_available() {
                tch::Cuda::device_count() as usize
            } else {
                0
            };
            if idx >= n {
                return Err(EngineError::Device(format!(
                    "cuda:{idx} requested but {n} CUDA device(s) are usable here"
                )));
            }
            Ok(Device::Cuda(idx))
        }
    }
}

/// Parse the device list of a training run: one device as [`parse_device`] takes it,
/// `cuda:all` for every usable CUDA device, or a comma-separated list (`cuda:0,cuda:1`).
/// Several devices train data-parallel (`train::davi`); the first one holds the weights the
/// optimisers update. A device named twice gets two replicas (how the CPU tests exercise the
/// data-parallel path).
pub fn parse_devices(s: &str) -> Result<Vec<Device>> {
    let s = s.trim().to_ascii_lowercase();
    if s == "cuda:all" {
        let n = if tch::Cuda::is_available() {
            tch::Cuda::device_count() as usize
        } else {
            0
        };
        if n == 0 {
            return Err(EngineError::Device(
                "cuda:all asks for every CUDA device, and none is usable here".into(),
            ));
        }
        return Ok((0..n).map(Device::Cuda).collect());
    }
    s.split(',').map(parse_device).collect()
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
            assert!(parse_devices("cuda:all").is_err());
        }
        assert_eq!(
            parse_devices("cpu, cpu").unwrap(),
            vec![Device::Cpu, Device::Cpu]
        );
        assert_eq!(parse_devices("cpu").unwrap(), vec![Device::Cpu]);
        assert!(parse_devices("cpu,gpu").is_err());
    }
}
