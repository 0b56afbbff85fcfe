//! GPU memory, polled from nvidia-smi every few seconds while the worker has a
//! CUDA device (never on a CPU-only worker): the worker's metrics show it
//! (`stylefarm_device_memory_{used,total}_bytes`) and its heartbeats carry it
//! to the coordinator, whose Workers page and ListWorkers show it.
//!
//! nvidia-smi numbers the machine's GPUs by PCI bus; CUDA numbers the ones
//! `CUDA_VISIBLE_DEVICES` lets it see, in that list's order (indices or
//! `GPU-…` UUID prefixes). So `cuda:N` is matched to nvidia-smi's row through
//! that list, and where the match is not certain (CUDA's default
//! fastest-first order on a machine with different GPU models, unless
//! `CUDA_DEVICE_ORDER=PCI_BUS_ID`; a MIG instance) the memory is absent, never
//! another GPU's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stylefarm_core::tasks::Stopping;
use stylefarm_proto as pb;

/// Where each poll's readings of this worker's devices go (by device name).
pub type ReadingsSink = Box<dyn Fn(&[(String, GpuMemory)]) + Send + Sync>;

/// One row of nvidia-smi: a physical GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuMemory {
    pub index: usize,
    pub uuid: String,
    pub model: String,
    pub used_bytes: u64,
    pub total_bytes: u64,
}

/// What nvidia-smi is asked for (figures in MiB).
const QUERY: [&str; 2] = ["--query-gpu=index,uuid,name,memory.used,memory.total", "--format=csv,noheader,nounits"];

/// `nvidia-smi` with [`QUERY`]; lines that are not a GPU's row are skipped.
pub fn parse_gpu_memory(text: &str) -> Vec<GpuMemory> {
    text.lines()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split(',').map(str::trim).collect();
            if parts.len() < 5 {
                return None;
            }
            let n = parts.len();
            let used: u64 = parts[n - 2].parse().ok()?;
            let total: u64 = parts[n - 1].parse().ok()?;
            Some(GpuMemory {
                index: parts[0].parse().ok()?,
                uuid: parts[1].to_string(),
                model: parts[2..n - 2].join(","),
                used_bytes: used << 20,
                total_bytes: total << 20,
            })
        })
        .collect()
}

/// How CUDA numbers the GPUs: the environment this worker (and libtorch) started with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CudaOrder {
    /// `CUDA_VISIBLE_DEVICES`, when set.
    pub visible: Option<String>,
    /// `CUDA_DEVICE_ORDER=PCI_BUS_ID` (nvidia-smi's order).
    pub pci_bus_order: bool,
}

impl CudaOrder {
    pub fn from_env() -> CudaOrder {
        CudaOrder {
            visible: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
            pci_bus_order: std::env::var("CUDA_DEVICE_ORDER").is_ok_and(|v| v.trim() == "PCI_BUS_ID"),
        }
    }

    /// nvidia-smi's row for `cuda:ordinal`, or None where it is not certain.
    pub fn row<'a>(&self, rows: &'a [GpuMemory], ordinal: usize) -> Option<&'a GpuMemory> {
        // CUDA's own numbering is fastest first unless told PCI_BUS_ID: the bus
        // order (nvidia-smi's) only when every GPU is the same model
        let bus_order = self.pci_bus_order || rows.windows(2).all(|w| w[0].model == w[1].model);
        let by_number = |i: usize| if bus_order { rows.iter().find(|r| r.index == i) } else { None };
        let Some(list) = self.visible.as_deref() else { return by_number(ordinal) };
        // cuda:N is the list's Nth entry; CUDA stops at the first entry it cannot use
        let mut picked: Vec<&GpuMemory> = Vec::new();
        for entry in list.split(',').map(str::trim) {
            let row = match entry.parse::<usize>() {
                Ok(i) => by_number(i),
                Err(_) if entry.starts_with("GPU-") => {
                    let mut matches = rows.iter().filter(|r| r.uuid.starts_with(entry));
                    matches.next().filter(|_| matches.next().is_none())
                }
                Err(_) => None, // MIG instances and anything else: not certain
            };
            match row {
                Some(r) if !picked.iter().any(|p| p.index == r.index) => picked.push(r),
                _ => break,
            }
        }
        picked.get(ordinal).copied()
    }
}

/// This worker's devices (`cuda:N` names) with their rows; used ≤ total, or the row is left out.
pub fn own_devices(rows: &[GpuMemory], devices: &[String], order: &CudaOrder) -> Vec<(String, GpuMemory)> {
    devices
        .iter()
        .filter_map(|name| {
            let ordinal: usize = name.strip_prefix("cuda:")?.parse().ok()?;
            let row = order.row(rows, ordinal)?;
            (row.used_bytes <= row.total_bytes).then(|| (name.clone(), row.clone()))
        })
        .collect()
}

/// nvidia-smi's rows, at once (for registration).
pub fn query_now() -> Vec<GpuMemory> {
    match std::process::Command::new("nvidia-smi").args(QUERY).output() {
        Ok(out) if out.status.success() => parse_gpu_memory(&String::from_utf8_lossy(&out.stdout)),
        _ => Vec::new(),
    }
}

async fn query_gpu_memory() -> Result<Vec<GpuMemory>, String> {
    let command = tokio::process::Command::new("nvidia-smi").args(QUERY).kill_on_drop(true).output();
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

/// The latest readings of this worker's own devices.
#[derive(Debug, Default)]
pub struct GpuWatch {
    devices: Vec<String>,
    order: CudaOrder,
    latest: Mutex<Vec<(String, GpuMemory)>>,
}

impl GpuWatch {
    pub fn new(devices: &[String], order: CudaOrder) -> GpuWatch {
        GpuWatch { devices: devices.to_vec(), order, latest: Mutex::new(Vec::new()) }
    }

    /// Keeps nvidia-smi's `rows` for this worker's devices; returns them.
    fn set(&self, rows: &[GpuMemory]) -> Vec<(String, GpuMemory)> {
        let own = own_devices(rows, &self.devices, &self.order);
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = own.clone();
        own
    }

    /// What a heartbeat carries: the readings of the devices this worker uses.
    pub fn heartbeat(&self) -> Vec<pb::DeviceMemory> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest.iter().map(|(device, r)| pb::DeviceMemory { device: device.clone(), used_bytes: r.used_bytes, total_bytes: r.total_bytes }).collect()
    }

    /// Polls every `period` while any device is a GPU (None otherwise), until
    /// `stopping`; hands each poll's readings of this worker's devices to
    /// `sink` too (the metrics).
    pub fn poller(
        self: &Arc<Self>,
        period: Duration,
        sink: Option<ReadingsSink>,
        stopping: Stopping,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        if !self.devices.iter().any(|d| d.starts_with("cuda:")) {
            return None;
        }
        let watch = Arc::clone(self);
        Some(async move {
            let mut warned = false;
            loop {
                let polled = tokio::select! {
                    polled = query_gpu_memory() => polled,
                    _ = stopping.clone().wait() => return,
                };
                match polled {
                    Ok(rows) => {
                        let own = watch.set(&rows);
                        if own.is_empty() && !warned {
                            tracing::warn!(
                                cuda_visible_devices = ?watch.order.visible,
                                "nvidia-smi's GPUs cannot be matched to this worker's CUDA devices for certain (set CUDA_DEVICE_ORDER=PCI_BUS_ID); GPU memory stays unknown"
                            );
                            warned = true;
                        }
                        if let Some(sink) = &sink {
                            sink(&own);
                        }
                    }
                    Err(e) if !warned => {
                        tracing::warn!(error = %e, "nvidia-smi gave no memory figures; GPU memory stays unknown");
                        warned = true;
                    }
                    Err(_) => {}
                }
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stopping.clone().wait() => return,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four GPUs as nvidia-smi prints them (index, uuid, name, used MiB, total MiB).
    const FOUR: &str = "0, GPU-aaaa1111, NVIDIA H100 80GB HBM3, 1024, 81559\n\
                        1, GPU-bbbb2222, NVIDIA H100 80GB HBM3, 0, 81559\n\
                        2, GPU-cccc3333, NVIDIA H100 80GB HBM3, 2048, 81559\n\
                        3, GPU-dddd4444, NVIDIA H100 80GB HBM3, 4096, 81559\n\
                        No devices were found\n";

    fn order(visible: Option<&str>, pci_bus_order: bool) -> CudaOrder {
        CudaOrder { visible: visible.map(String::from), pci_bus_order }
    }

    fn used_gib(rows: &[GpuMemory], o: &CudaOrder, ordinal: usize) -> Option<u64> {
        o.row(rows, ordinal).map(|r| r.used_bytes >> 30)
    }

    #[test]
    fn cuda_numbers_follow_cuda_visible_devices() {
        let rows = parse_gpu_memory(FOUR);
        assert_eq!(rows.len(), 4);
        assert_eq!(
            rows[2],
            GpuMemory { index: 2, uuid: "GPU-cccc3333".into(), model: "NVIDIA H100 80GB HBM3".into(), used_bytes: 2 << 30, total_bytes: 81559 << 20 }
        );
        // no list: cuda:N is nvidia-smi's N
        assert_eq!(used_gib(&rows, &order(None, false), 3), Some(4));
        // a list: cuda:0 is its first entry, by index or by UUID prefix, in the list's order
        assert_eq!(used_gib(&rows, &order(Some("3,2"), false), 0), Some(4));
        assert_eq!(used_gib(&rows, &order(Some("3,2"), false), 1), Some(2));
        assert_eq!(used_gib(&rows, &order(Some("3,2"), false), 2), None, "only two are visible");
        assert_eq!(used_gib(&rows, &order(Some("GPU-cccc,0"), false), 0), Some(2));
        assert_eq!(used_gib(&rows, &order(Some("GPU-cccc,0"), false), 1), Some(1));
        // CUDA stops at the first entry it cannot use; a MIG instance is not matched
        assert_eq!(used_gib(&rows, &order(Some("2,9,1"), false), 1), None);
        assert_eq!(used_gib(&rows, &order(Some("MIG-1234"), false), 0), None);
        assert_eq!(used_gib(&rows, &order(Some("GPU-"), false), 0), None, "an ambiguous prefix");
        assert_eq!(used_gib(&rows, &order(Some(""), false), 0), None, "nothing visible");
    }

    #[test]
    fn mixed_models_need_the_bus_order_to_be_certain() {
        let mixed = parse_gpu_memory("0, GPU-aaaa, NVIDIA A10, 1024, 24564\n1, GPU-bbbb, NVIDIA H100 80GB HBM3, 2048, 81559\n");
        // CUDA's default fastest-first order may put the H100 first: not certain, so absent
        assert_eq!(used_gib(&mixed, &order(None, false), 0), None);
        assert_eq!(used_gib(&mixed, &order(Some("1"), false), 0), None);
        // ... unless told the bus order, or named by UUID
        assert_eq!(used_gib(&mixed, &order(None, true), 1), Some(2));
        assert_eq!(used_gib(&mixed, &order(Some("GPU-bbbb"), false), 0), Some(2));
    }

    #[tokio::test]
    async fn readings_of_this_workers_gpus_go_in_its_heartbeats() {
        let rows = parse_gpu_memory(FOUR);
        // a worker given cuda:1 only reports cuda:1; under CUDA_VISIBLE_DEVICES=2,3 that is GPU 3
        let watch = Arc::new(GpuWatch::new(&["cuda:1".to_string()], order(Some("2,3"), false)));
        assert!(watch.heartbeat().is_empty(), "nothing before the first reading");
        watch.set(&rows);
        assert_eq!(watch.heartbeat(), vec![pb::DeviceMemory { device: "cuda:1".into(), used_bytes: 4 << 30, total_bytes: 81559 << 20 }]);
        // a reading the coordinator would refuse (used above total) is left out, not sent
        let glitch = parse_gpu_memory("0, GPU-aaaa, X, 90000, 81559\n1, GPU-bbbb, X, 10, 81559\n");
        let both = GpuWatch::new(&["cuda:0".to_string(), "cuda:1".to_string()], CudaOrder::default());
        both.set(&glitch);
        assert_eq!(both.heartbeat().iter().map(|m| m.device.as_str()).collect::<Vec<_>>(), vec!["cuda:1"]);
        assert!(
            Arc::new(GpuWatch::new(&["cpu".to_string()], CudaOrder::default()))
                .poller(Duration::from_secs(5), None, stylefarm_core::tasks::Tasks::new().stopping())
                .is_none(),
            "no poller without a GPU"
        );
    }
}
