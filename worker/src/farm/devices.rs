//! Which devices this worker runs jobs on, and how much memory each has.

use anyhow::{bail, Result};
use stylefarm_engine::device::{describe, parse_device};
use tch::Device;

#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub name: String,
    pub device: Device,
    /// 0 = unknown (the coordinator then does not match on memory).
    pub memory_bytes: u64,
    pub description: String,
}

fn cpu_memory() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else { return 0 };
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// `auto` (every CUDA device, else the CPU), `cpu`, or a list like `cuda:0,cuda:1`.
pub fn detect(spec: &str) -> Result<Vec<DeviceInfo>> {
    let names: Vec<String> = match spec {
        "auto" => {
            let n = tch::Cuda::device_count();
            if n > 0 {
                (0..n).map(|i| format!("cuda:{i}")).collect()
            } else {
                vec!["cpu".into()]
            }
        }
        list => list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
    };
    if names.is_empty() {
        bail!("invalid `--devices`: `{spec}` names no device (auto, cpu, cuda:0,...)");
    }
    // total memory per GPU from nvidia-smi, matched to CUDA's numbering (unknown: 0)
    let (rows, order) = (super::gpu_memory::query_now(), super::gpu_memory::CudaOrder::from_env());
    let mut devices = Vec::new();
    for name in names {
        let device = parse_device(&name)?;
        let memory_bytes = match device {
            Device::Cuda(i) => order.row(&rows, i).map_or(0, |r| r.total_bytes),
            _ => cpu_memory(),
        };
        let name = match device {
            Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".to_string(),
        };
        if devices.iter().any(|d: &DeviceInfo| d.name == name) {
            bail!("invalid `--devices`: {name} is listed twice");
        }
        devices.push(DeviceInfo { description: describe(device), name, device, memory_bytes });
    }
    Ok(devices)
}
