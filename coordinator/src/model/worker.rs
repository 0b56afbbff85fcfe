//! A worker's record: its devices, counters and the memory it last reported.

use serde::{Deserialize, Serialize};
use stylefarm_core::labels::Labels;

use super::Millis;
use crate::ids::WorkerId;
use crate::secrets::SecretHash;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub name: String,
    pub memory_bytes: u64,
    pub description: String,
}

/// What a worker says about itself when it registers.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerProfile {
    pub name: String,
    pub devices: Vec<DeviceRecord>,
    pub version: String,
    /// Worker pools: what batches' requirements match.
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRecord {
    pub id: WorkerId,
    pub name: String,
    pub devices: Vec<DeviceRecord>,
    pub version: String,
    pub registered_ms: Millis,
    pub last_seen_ms: Millis,
    pub succeeded: u64,
    pub failed: u64,
    /// The principal that registered it; only it (or an admin) may act as it.
    pub owner: String,
    /// Needed (with the id) to register again as this worker.
    pub secret: SecretHash,
    /// GPU memory and busy fractions from its latest heartbeat; kept in memory only.
    pub readings: DeviceReadings,
    /// Whether it takes new jobs (an admin's choice, kept across restarts).
    pub availability: Availability,
    /// What batches' requirements match (worker pools), as it registered.
    pub labels: Labels,
}

/// Whether a worker takes new jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Availability {
    #[default]
    Enabled,
    /// An admin took it out of rotation: it leases nothing until enabled;
    /// what it runs goes on (a drain hands that back too).
    Disabled,
}

impl Availability {
    pub fn takes_work(self) -> bool {
        self == Availability::Enabled
    }
}

/// What a worker's heartbeat says about its devices.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceReadings {
    /// GPU memory (empty on CPU).
    pub memory: Vec<MemoryReading>,
    /// Engine time over wall time.
    pub busy: Vec<BusyReading>,
}

/// How busy one device was, as its worker last read it.
#[derive(Debug, Clone, PartialEq)]
pub struct BusyReading {
    pub device: String,
    /// 0..1.
    pub fraction: f64,
    pub window_s: u32,
}

/// One device's memory as its worker last read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryReading {
    pub device: String,
    pub used_bytes: u64,
    pub total_bytes: u64,
}
