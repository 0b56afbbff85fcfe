//! Optimisers over one flat device tensor: L-BFGS with `torch.optim.LBFGS`
//! semantics, and Adam with `torch.optim.Adam` semantics.
//!
//! Both run one iteration per call so the caller can record a trace row, take a
//! snapshot or stop on cancellation between iterations. Vectors never leave the
//! device; each iteration reads one small packet of scalars back to the host (the
//! losses for the trace and the values the stopping rules need).

mod adam;
mod lbfgs;

pub use adam::{Adam, AdamConfig};
pub use lbfgs::{Lbfgs, LbfgsConfig};

use tch::Tensor;

use crate::error::Result;

/// The value and gradient of an objective at one point.
pub struct Evaluation {
    /// 1-D, on the device: the total loss first, then any components to report.
    pub values: Tensor,
    /// Flat gradient, same shape, kind and device as the point.
    pub grad: Tensor,
}

/// A differentiable function of a flat tensor.
pub trait Objective {
    fn evaluate(&mut self, x: &Tensor) -> Result<Evaluation>;
}

/// Why an optimiser stopped before the iterations asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// max |gradient| <= tolerance_grad.
    GradientTolerance,
    /// The search direction is not a descent direction (g·d > -tolerance_change).
    NotDescent,
    /// max |step| <= tolerance_change.
    StepTolerance,
    /// |loss change| < tolerance_change.
    LossTolerance,
    /// The function-evaluation budget is spent.
    MaxEvaluations,
    /// The loss became NaN or infinite.
    NonFinite,
}

/// What one iteration (or the initial evaluation) reports.
#[derive(Debug, Clone)]
pub struct Report {
    /// `values` of the objective at the current point (total first).
    pub values: Vec<f64>,
    /// Function evaluations this call made.
    pub evaluations: u32,
    pub stop: Option<StopReason>,
}

/// One optimiser, either kind (one per render: the variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
pub enum AnyOptimizer {
    Lbfgs(Lbfgs),
    Adam(Adam),
}

impl AnyOptimizer {
    pub fn start(&mut self, f: &mut dyn Objective) -> Result<Report> {
        match self {
            AnyOptimizer::Lbfgs(o) => o.start(f),
            AnyOptimizer::Adam(o) => o.start(f),
        }
    }

    pub fn iterate(&mut self, f: &mut dyn Objective) -> Result<Report> {
        match self {
            AnyOptimizer::Lbfgs(o) => o.iterate(f),
            AnyOptimizer::Adam(o) => o.iterate(f),
        }
    }

    pub fn x(&self) -> &Tensor {
        match self {
            AnyOptimizer::Lbfgs(o) => o.x(),
            AnyOptimizer::Adam(o) => o.x(),
        }
    }
}

/// Copies a 1-D device tensor of scalars to the host in one transfer.
pub(crate) fn to_host(packet: &Tensor) -> Result<Vec<f64>> {
    let host = packet.f_to_kind(tch::Kind::Double)?.f_to_device(tch::Device::Cpu)?;
    Ok(Vec::<f64>::try_from(&host)?)
}
