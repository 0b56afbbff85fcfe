//! Adam with `torch.optim.Adam` semantics (no weight decay, no AMSGrad).

use tch::Tensor;

use super::{to_host, Objective, Report, StopReason};
use crate::error::Result;

#[derive(Debug, Clone, Copy)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

pub struct Adam {
    cfg: AdamConfig,
    x: Tensor,
    grad: Option<Tensor>,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: i32,
}

impl Adam {
    pub fn new(cfg: AdamConfig, x0: &Tensor) -> Adam {
        let x = x0.detach().copy();
        Adam { cfg, exp_avg: x.zeros_like(), exp_avg_sq: x.zeros_like(), x, grad: None, step: 0 }
    }

    pub fn x(&self) -> &Tensor {
        &self.x
    }

    fn evaluate(&mut self, f: &mut dyn Objective) -> Result<Report> {
        let eval = f.evaluate(&self.x)?;
        let values = to_host(&eval.values)?;
        self.grad = Some(eval.grad);
        let stop = (!values[0].is_finite()).then_some(StopReason::NonFinite);
        Ok(Report { values, evaluations: 1, stop })
    }

    pub fn start(&mut self, f: &mut dyn Objective) -> Result<Report> {
        self.evaluate(f)
    }

    /// One Adam step from the last gradient, then an evaluation at the new point.
    pub fn iterate(&mut self, f: &mut dyn Objective) -> Result<Report> {
        let Some(grad) = self.grad.take() else {
            return self.start(f);
        };
        let AdamConfig { lr, beta1, beta2, eps } = self.cfg;
        self.step += 1;
        let _ = self.exp_avg.f_lerp_(&grad, 1.0 - beta1)?;
        let _ = self.exp_avg_sq.f_mul_scalar_(beta2)?;
        let _ = self.exp_avg_sq.f_add_(&grad.f_square()?.f_mul_scalar(1.0 - beta2)?)?;
        let bias_correction1 = 1.0 - beta1.powi(self.step);
        let bias_correction2 = 1.0 - beta2.powi(self.step);
        let step_size = lr / bias_correction1;
        let denom = (self.exp_avg_sq.f_sqrt()? / bias_correction2.sqrt()).f_add_scalar(eps)?;
        let _ = self.x.f_sub_(&self.exp_avg.f_div(&denom)?.f_mul_scalar(step_size)?)?;
        self.evaluate(f)
    }
}
