//! GPU memory, polled from nvidia-smi every few seconds while the worker has a
//! CUDA device (never on a CPU-only worker): the worker's metrics show it
//! (`stylefarm_device_memory_{used,total}_bytes`) and its heartbeats carry it
//! to the coordinator, whose Workers page and ListWorkers show it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stylefarm_proto as pb;

use super::metrics::WorkerMetrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuMemory {
    pub index: usize,
    pub used_bytes: u64,
    pub total_bytes: u64,
}

/// `nvidia-smi --query-gpu=index,memory.used,memory.total --format=csv,noheader,nounits` (MiB).
pub fn parse_gpu_memory(text: &str) -> Vec<GpuMemory> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split(',').map(str::trim);
            let index = parts.next()?.parse().ok()?;
            let used: u64 = parts.next()?.parse().ok()?;
            let total: u64 = parts.next()?.parse().ok()?;
            Some(GpuMemory { index, used_bytes: used << 20, total_bytes: total << 20 })
        })
        .collect()
}

async fn query_gpu_memory() -> Result<Vec<GpuMemory>, String> {
    let command = tokio::process::Command::new("nvidia-smi")
        .args(["--query-gpu=index,memory.used,memory.total", "--format=csv,noheader,nounits"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(5), command).await.map_err(|_| "nvidia-smi took over 5 s".to_string())?.map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!("nvidia-smi exited with {}", output.status));
    }
    let readings = parse_gpu_memory(&String::from_utf8_lossy(&output.stdout));
    if readings.is_empty() {
        return Err("nvidia-smi printed no memory figures".into());
    }
    Ok(readings)
}

/// The latest readings of this worker's own devices (`cuda:N` names).
#[derive(Debug, Default)]
pub struct GpuWatch {
    devices: Vec<String>,
    latest: Mutex<Vec<GpuMemory>>,
}

impl GpuWatch {
    pub fn new(devices: &[String]) -> GpuWatch {
        GpuWatch { devices: devices.to_vec(), latest: Mutex::new(Vec::new()) }
    }

    fn set(&self, readings: Vec<GpuMemory>) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = readings;
    }

    /// What a heartbeat carries: the readings of the devices this worker uses.
    pub fn heartbeat(&self) -> Vec<pb::DeviceMemory> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest
            .iter()
            .map(|r| (format!("cuda:{}", r.index), r))
            .filter(|(name, _)| self.devices.contains(name))
            .map(|(device, r)| pb::DeviceMemory { device, used_bytes: r.used_bytes, total_bytes: r.total_bytes })
            .collect()
    }

    /// Polls every `period` while any device is a GPU; feeds `metrics` too.
    pub fn spawn_poller(self: &Arc<Self>, period: Duration, metrics: Option<Arc<WorkerMetrics>>) -> Option<tokio::task::JoinHandle<()>> {
        if !self.devices.iter().any(|d| d.starts_with("cuda:")) {
            return None;
        }
        let watch = Arc::clone(self);
        Some(tokio::spawn(async move {
            let mut warned = false;
            loop {
                match query_gpu_memory().await {
                    Ok(readings) => {
                        if let Some(m) = &metrics {
                            m.set_gpu_memory(&readings);
                        }
                        watch.set(readings);
                    }
                    Err(e) if !warned => {
                        tracing::warn!(error = %e, "nvidia-smi gave no memory figures; GPU memory stays unknown");
                        warned = true;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(period).await;
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readings_of_this_workers_gpus_go_in_its_heartbeats() {
        let readings = parse_gpu_memory("0, 1024, 81559\n1, 0, 81559\nNo devices were found\n");
        assert_eq!(
            readings,
            vec![GpuMemory { index: 0, used_bytes: 1 << 30, total_bytes: 81559 << 20 }, GpuMemory { index: 1, used_bytes: 0, total_bytes: 81559 << 20 }]
        );
        // a worker given cuda:1 only reports cuda:1
        let watch = Arc::new(GpuWatch::new(&["cuda:1".to_string()]));
        assert!(watch.heartbeat().is_empty(), "nothing before the first reading");
        watch.set(readings);
        assert_eq!(watch.heartbeat(), vec![pb::DeviceMemory { device: "cuda:1".into(), used_bytes: 0, total_bytes: 81559 << 20 }]);
        assert!(Arc::new(GpuWatch::new(&["cpu".to_string()])).spawn_poller(Duration::from_secs(5), None).is_none(), "no poller without a GPU");
    }
}
