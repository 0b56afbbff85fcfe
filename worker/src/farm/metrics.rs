//! The worker's Prometheus metrics (`--metrics-listen`): per device whether it
//! is busy, the running job's iteration rate, the engine's seconds per
//! evaluation, GPU memory (from nvidia-smi; absent on CPU, never 0); per
//! worker jobs by outcome, time per stage and bytes moved.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use stylefarm_core::telemetry::{Registry, Scrape};
use stylefarm_engine::trace::TraceRow;

use super::busy::BusyClock;
use super::gpu_memory::GpuMemory;

/// How a job ended on this worker (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnd {
    Succeeded,
    Failed,
    Cancelled,
    LeaseLost,
    HandedBack,
}

impl JobEnd {
    const ALL: [JobEnd; 5] = [JobEnd::Succeeded, JobEnd::Failed, JobEnd::Cancelled, JobEnd::LeaseLost, JobEnd::HandedBack];

    fn label(self) -> &'static str {
        match self {
            JobEnd::Succeeded => "succeeded",
            JobEnd::Failed => "failed",
            JobEnd::Cancelled => "cancelled",
            JobEnd::LeaseLost => "lease_lost",
            JobEnd::HandedBack => "handed_back",
        }
    }
}

/// A step of a job on the worker (the `stage` label), in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Inputs from the store (or the local cache).
    FetchInputs,
    /// Inputs decoded into images (off the device's thread).
    Decode,
    /// Ready, waiting for the device to finish the job before it.
    WaitDevice,
    /// VGG-16 weights onto the device (the first job of a model only).
    LoadWeights,
    /// The optimiser on the device: the busy part.
    Engine,
    /// PNG, snapshots, animation, trace and metadata written.
    Encode,
    Upload,
    /// The result (or failure) told to the coordinator.
    Report,
}

impl Stage {
    pub const ALL: [Stage; 8] =
        [Stage::FetchInputs, Stage::Decode, Stage::WaitDevice, Stage::LoadWeights, Stage::Engine, Stage::Encode, Stage::Upload, Stage::Report];

    pub fn label(self) -> &'static str {
        match self {
            Stage::FetchInputs => "fetch_inputs",
            Stage::Decode => "decode",
            Stage::WaitDevice => "wait_device",
            Stage::LoadWeights => "load_weights",
            Stage::Engine => "engine",
            Stage::Encode => "encode",
            Stage::Upload => "upload",
            Stage::Report => "report",
        }
    }
}

/// One device's series.
pub struct DeviceMetrics {
    running: AtomicI64,
    busy: Gauge,
    /// Engine time over wall time in the last minute, set from the clock at each scrape.
    busy_fraction: Gauge,
    clock: Arc<BusyClock>,
    jobs: Gauge,
    rate: Gauge,
    evaluation: Histogram,
}

impl DeviceMetrics {
    /// A job started (+1) or ended (-1) on this device.
    pub fn job_delta(&self, delta: i64) {
        let running = (self.running.fetch_add(delta, Ordering::Relaxed) + delta).max(0);
        self.jobs.set(running as f64);
        self.busy.set(if running > 0 { 1.0 } else { 0.0 });
        if running == 0 {
            self.rate.set(0.0);
        }
    }

    /// A trace row after `previous` (same scale): the iteration rate and the
    /// engine's time per evaluation since then.
    pub fn row(&self, previous: Option<&TraceRow>, row: &TraceRow) {
        let Some(prev) = previous.filter(|p| p.scale == row.scale && row.iteration > p.iteration) else { return };
        let ms = row.elapsed_ms - prev.elapsed_ms;
        if !(ms.is_finite() && ms > 0.0) {
            return;
        }
        self.rate.set((row.iteration - prev.iteration) as f64 * 1000.0 / ms);
        let evaluations = row.evaluations.saturating_sub(prev.evaluations);
        if evaluations > 0 {
            self.evaluation.record(ms / 1000.0 / evaluations as f64);
        }
    }
}

pub struct WorkerMetrics {
    registry: Registry,
    devices: HashMap<String, Arc<DeviceMetrics>>,
    jobs: [Counter; 5],
    stages: [Histogram; 8],
    pub downloaded_bytes: Counter,
    pub uploaded_bytes: Counter,
    /// GPU memory gauges by device name, made on nvidia-smi's first answer.
    gpu_memory: Mutex<HashMap<String, (Gauge, Gauge)>>,
}

impl WorkerMetrics {
    /// The series of `devices`, each with its busy clock.
    pub fn new(registry: Registry, devices: &[(String, Arc<BusyClock>)]) -> Arc<WorkerMetrics> {
        let r = &registry;
        let devices = devices
            .iter()
            .map(|(name, clock)| {
                let d = &[("device", name.as_str())];
                let metrics = DeviceMetrics {
                    running: AtomicI64::new(0),
                    busy: r.gauge("stylefarm_device_busy", "1 while the device runs a job, else 0.", d),
                    busy_fraction: r.gauge("stylefarm_device_busy_fraction", "Time the device spent in engine work over wall time, the last 60 s (0..1).", d),
                    clock: Arc::clone(clock),
                    jobs: r.gauge("stylefarm_device_jobs_running", "Jobs the device runs now (more than 1 with --jobs-per-device).", d),
                    rate: r.gauge("stylefarm_device_iterations_per_second", "The running job's optimiser iterations per second (0 when idle).", d),
                    evaluation: r.histogram("stylefarm_engine_evaluation_seconds", "Engine time per loss-and-gradient evaluation.", d),
                };
                metrics.job_delta(0);
                (name.clone(), Arc::new(metrics))
            })
            .collect();
        Arc::new(WorkerMetrics {
            devices,
            jobs: JobEnd::ALL.map(|e| r.counter("stylefarm_worker_jobs_total", "Jobs this worker finished, by how they ended.", &[("outcome", e.label())])),
            stages: Stage::ALL.map(|s| r.histogram("stylefarm_worker_stage_seconds", "Time per job stage on this worker.", &[("stage", s.label())])),
            downloaded_bytes: r.counter("stylefarm_worker_download_bytes_total", "Input bytes downloaded from storage (cache misses).", &[]),
            uploaded_bytes: r.counter("stylefarm_worker_upload_bytes_total", "Output bytes uploaded to storage.", &[]),
            gpu_memory: Mutex::new(HashMap::new()),
            registry,
        })
    }

    pub fn device(&self, name: &str) -> Option<Arc<DeviceMetrics>> {
        self.devices.get(name).cloned()
    }

    pub fn job_ended(&self, end: JobEnd) {
        let i = JobEnd::ALL.iter().position(|e| *e == end).unwrap_or(0);
        self.jobs[i].increment(1);
    }

    pub fn stage(&self, stage: Stage, elapsed: Duration) {
        let i = Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0);
        self.stages[i].record(elapsed.as_secs_f64());
    }

    /// This worker's devices' readings, by device name (see `gpu_memory::own_devices`).
    pub fn set_gpu_memory(&self, readings: &[(String, GpuMemory)]) {
        let mut gauges = self.gpu_memory.lock().unwrap_or_else(|p| p.into_inner());
        for (name, reading) in readings {
            if !self.devices.contains_key(name) {
                continue;
            }
            let (used, total) = gauges.entry(name.clone()).or_insert_with(|| {
                let d = &[("device", name.as_str())];
                (
                    self.registry.gauge("stylefarm_device_memory_used_bytes", "GPU memory in use (nvidia-smi; absent on CPU).", d),
                    self.registry.gauge("stylefarm_device_memory_total_bytes", "GPU memory in all (nvidia-smi; absent on CPU).", d),
                )
            });
            used.set(reading.used_bytes as f64);
            total.set(reading.total_bytes as f64);
        }
    }
}

impl Scrape for WorkerMetrics {
    fn scrape(&self) -> String {
        let now = std::time::Instant::now();
        for device in self.devices.values() {
            device.busy_fraction.set(device.clock.fraction(now));
        }
        self.registry.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::farm::gpu_memory::{parse_gpu_memory, GpuMemory};
    use stylefarm_core::telemetry::sample;

    fn row(scale: u32, iteration: u32, elapsed_ms: f64, evaluations: u32) -> TraceRow {
        TraceRow { scale, size: 64, iteration, total: 1.0, content: 0.5, style: 0.5, tv: 0.0, evaluations, elapsed_ms }
    }

    #[test]
    fn rows_give_the_iteration_rate_and_seconds_per_evaluation() {
        let metrics = WorkerMetrics::new(Registry::new(), &[("cpu".into(), BusyClock::new(std::time::Instant::now()))]);
        let device = metrics.device("cpu").unwrap();
        device.job_delta(1);
        device.row(None, &row(0, 1, 100.0, 2));
        device.row(Some(&row(0, 1, 100.0, 2)), &row(0, 3, 600.0, 7));
        let text = metrics.scrape();
        assert_eq!(sample(&text, r#"stylefarm_device_iterations_per_second{device="cpu"}"#), Some(4.0), "{text}");
        assert_eq!(sample(&text, r#"stylefarm_engine_evaluation_seconds_sum{device="cpu"}"#), Some(0.1), "{text}");
        assert_eq!(sample(&text, r#"stylefarm_device_busy{device="cpu"}"#), Some(1.0));
        // a new scale restarts the clock: no bogus rate across it
        device.row(Some(&row(0, 3, 600.0, 7)), &row(1, 1, 50.0, 1));
        assert_eq!(sample(&metrics.scrape(), r#"stylefarm_engine_evaluation_seconds_count{device="cpu"}"#), Some(1.0));
        device.job_delta(-1);
        let text = metrics.scrape();
        assert_eq!(sample(&text, r#"stylefarm_device_busy{device="cpu"}"#), Some(0.0));
        assert_eq!(sample(&text, r#"stylefarm_device_iterations_per_second{device="cpu"}"#), Some(0.0));
    }

    #[test]
    fn gpu_memory_is_absent_on_cpu_and_set_from_nvidia_smi() {
        let metrics = WorkerMetrics::new(Registry::new(), &[("cpu".into(), BusyClock::new(std::time::Instant::now()))]);
        assert!(!metrics.scrape().contains("stylefarm_device_memory"), "absent, not 0");
        let rows = parse_gpu_memory("0, GPU-a, H100, 1024, 81559\n1, GPU-b, H100, 0, 81559\nNo devices were found\n");
        let gpu = WorkerMetrics::new(Registry::new(), &[("cuda:1".into(), BusyClock::new(std::time::Instant::now()))]);
        // what the poller hands over: every device name, the worker's own kept
        let named: Vec<(String, GpuMemory)> = rows.iter().map(|r| (format!("cuda:{}", r.index), r.clone())).collect();
        gpu.set_gpu_memory(&named);
        let text = gpu.scrape();
        assert_eq!(sample(&text, r#"stylefarm_device_memory_total_bytes{device="cuda:1"}"#), Some((81559u64 << 20) as f64), "{text}");
        assert_eq!(sample(&text, r#"stylefarm_device_memory_used_bytes{device="cuda:0"}"#), None, "only this worker's devices");
    }

    #[test]
    fn outcomes_and_stages_count() {
        let metrics = WorkerMetrics::new(Registry::new(), &[("cpu".into(), BusyClock::new(std::time::Instant::now()))]);
        metrics.job_ended(JobEnd::Succeeded);
        metrics.job_ended(JobEnd::HandedBack);
        metrics.stage(Stage::Upload, Duration::from_millis(250));
        let text = metrics.scrape();
        assert_eq!(sample(&text, r#"stylefarm_worker_jobs_total{outcome="succeeded"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"stylefarm_worker_jobs_total{outcome="handed_back"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"stylefarm_worker_jobs_total{outcome="failed"}"#), Some(0.0));
        assert_eq!(sample(&text, r#"stylefarm_worker_stage_seconds_sum{stage="upload"}"#), Some(0.25));
        for stage in Stage::ALL {
            assert!(text.contains(&format!(r#"stylefarm_worker_stage_seconds_count{{stage="{}"}}"#, stage.label())), "{stage:?} is exported");
        }
    }

    #[test]
    fn the_busy_fraction_is_read_from_the_devices_clock() {
        let began = std::time::Instant::now() - Duration::from_secs(10);
        let clock = BusyClock::new(began);
        let metrics = WorkerMetrics::new(Registry::new(), &[("cpu".into(), Arc::clone(&clock))]);
        assert_eq!(sample(&metrics.scrape(), r#"stylefarm_device_busy_fraction{device="cpu"}"#), Some(0.0));
        let busy = clock.enter();
        std::thread::sleep(Duration::from_millis(50));
        drop(busy);
        let fraction = sample(&metrics.scrape(), r#"stylefarm_device_busy_fraction{device="cpu"}"#).unwrap();
        assert!(fraction > 0.004 && fraction < 0.1, "about 50 ms of 10 s: {fraction}");
    }
}
