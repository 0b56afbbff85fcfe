//! Several jobs on one device (`--jobs-per-device K`): the device's runners
//! render through shared evaluators (`stylefarm_engine::batch`), one per
//! model (weights, depth, pooling), so their evaluations go through VGG-16
//! together in one stacked pass.

use std::sync::Mutex;
use std::time::Duration;

use stylefarm_engine::batch::{BatchEvaluator, BatchHandle};
use stylefarm_engine::vgg::Pooling;
use stylefarm_engine::weights::VggWeights;
use tch::Device;

/// Evaluators kept per device at most; beyond it the least recently used is
/// forgotten (its driver ends with its last job).
const MODELS: usize = 4;

/// How long a round waits for the device's other jobs to ask (they normally
/// ask within microseconds; one writing a snapshot holds the rest this long).
const LINGER: Duration = Duration::from_millis(20);

/// The shared evaluators of one device.
pub struct DevicePack {
    device: Device,
    /// Most recently used last.
    evaluators: Mutex<Vec<(String, BatchHandle)>>,
}

impl DevicePack {
    pub fn new(device: Device) -> DevicePack {
        DevicePack { device, evaluators: Mutex::new(Vec::new()) }
    }

    /// A handle on the evaluator for this model, made on first use.
    pub fn handle(&self, key: &str, weights: &VggWeights, depth: usize, pooling: Pooling) -> BatchHandle {
        let key = format!("{key}|{pooling:?}");
        let mut evaluators = self.evaluators.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(i) = evaluators.iter().position(|(k, _)| *k == key) {
            let entry = evaluators.remove(i);
            let handle = entry.1.clone();
            evaluators.push(entry);
            return handle;
        }
        if evaluators.len() >= MODELS {
            evaluators.remove(0);
        }
        tracing::info!(model = %key, device = ?self.device, "shared evaluator started");
        let handle = BatchEvaluator::new(weights, depth, pooling, self.device, LINGER).into_handle();
        evaluators.push((key, handle.clone()));
        handle
    }
}
