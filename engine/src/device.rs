//! Choosing the device a job runs on.

use tch::Device;

use crate::error::{EngineError, Result};

/// Parses `auto`, `cpu`, `cuda`, `cuda:N`. `auto` takes the first GPU when CUDA is usable.
pub fn parse_device(text: &str) -> Result<Device> {
    let unavailable = |reason: String| EngineError::Device { requested: text.into(), reason };
    match text {
        "auto" => Ok(if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Ok(Device::Cpu),
        _ => {
            let index = match text.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| EngineError::param("device", format!("`{text}` is not one of auto, cpu, cuda, cuda:N")))?,
                None => return Err(EngineError::param("device", format!("`{text}` is not one of auto, cpu, cuda, cuda:N"))),
            };
            if !tch::Cuda::is_available() {
                return Err(unavailable("CUDA is not available (no driver or no GPU on this machine)".into()));
            }
            let count = tch::Cuda::device_count() as usize;
            if index >= count {
                return Err(unavailable(format!("this machine has {count} CUDA device(s)")));
            }
            Ok(Device::Cuda(index))
        }
    }
}

/// A short human name for metadata.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("tpu").unwrap_err().to_string().contains("`device`"));
        assert!(parse_device("cuda:x").is_err());
        if !tch::Cuda::is_available() {
            assert!(parse_device("cuda:0").unwrap_err().to_string().contains("not available"));
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
        }
    }
}
