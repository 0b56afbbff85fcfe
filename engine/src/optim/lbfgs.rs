//! L-BFGS with the semantics of `torch.optim.LBFGS` (PyTorch 2.11): the same
//! history rule (`y·s > 1e-10`), initial step `min(1, 1/|g|₁)·lr`, two-loop
//! recursion, stopping rules and the optional strong-Wolfe line search (a port of
//! `_strong_wolfe`/`_cubic_interpolate`, itself from minFunc).
//!
//! `start` + N × `iterate` visits the same iterates as one
//! `LBFGS(max_iter=N).step(closure)` on a fresh optimiser. Differences, by design:
//! every iteration ends with an evaluation at the new point (PyTorch skips it on its
//! last iteration; we need it for the trace), and in the fixed-step mode the
//! "not a descent direction" test is applied on the device (the step is masked to
//! zero) so that each iteration needs one host read instead of five.
//!
//! History buffers are allocated once per slot and reused as the ring wraps.

use std::collections::VecDeque;

use tch::{Kind, Tensor};

use super::{to_host, Objective, Report, StopReason};
use crate::error::Result;

#[derive(Debug, Clone, Copy)]
pub struct LbfgsConfig {
    pub lr: f64,
    /// Iterations the caller will run (PyTorch's `max_iter`); sets the default `max_eval`.
    pub max_iter: u32,
    /// Function evaluations allowed (PyTorch default `max_iter * 5 / 4`).
    pub max_eval: u32,
    pub tolerance_grad: f64,
    pub tolerance_change: f64,
    pub history_size: usize,
    pub strong_wolfe: bool,
    /// First step so that no coordinate moves by more than this (x units). `None` =
    /// PyTorch's `min(1, 1/|g|₁)·lr`, which on an image of a million values moves
    /// each by ~1e-6: below the noise of GPU convolutions, so a line search stalls.
    pub first_step: Option<f64>,
    /// The optimised values' share of the whole problem (a tile's of its
    /// image; 1 = whole): PyTorch's first step then takes |g|₁ as the whole's,
    /// |g|₁ / share, so a tile steps as its part of the whole image would.
    pub share: f64,
}

impl LbfgsConfig {
    pub fn new(max_iter: u32) -> LbfgsConfig {
        LbfgsConfig {
            lr: 1.0,
            max_iter,
            max_eval: max_iter.saturating_mul(5) / 4,
            tolerance_grad: 1e-7,
            tolerance_change: 1e-9,
            history_size: 100,
            strong_wolfe: false,
            first_step: None,
            share: 1.0,
        }
    }
}

/// One accepted curvature pair.
struct Pair {
    y: Tensor,
    s: Tensor,
    /// 1 / (y·s), 0-dim on the device.
    ro: Tensor,
}

/// The candidate pair for the next iteration, computed after an evaluation.
struct Candidate {
    y: Tensor,
    s: Tensor,
    ys: Tensor,
    yy: Tensor,
    ys_host: f64,
}

pub struct Lbfgs {
    cfg: LbfgsConfig,
    kind: Kind,
    x: Tensor,
    grad: Option<Tensor>,
    prev_loss: f64,
    direction: Option<Tensor>,
    prev_grad: Option<Tensor>,
    t: f64,
    history: VecDeque<Pair>,
    /// Slots evicted from the ring, reused for new pairs.
    spare: Vec<(Tensor, Tensor)>,
    h_diag: Option<Tensor>,
    candidate: Option<Candidate>,
    n_iter: u32,
    func_evals: u32,
    grad_abs_sum: f64,
    grad_abs_max: f64,
    /// The values reported at the current point (total first; `values[0]` is the loss).
    values: Vec<f64>,
}

/// Rounds a host scalar to the tensor's precision (PyTorch keeps these as 0-dim tensors).
fn round_to(kind: Kind, v: f64) -> f64 {
    match kind {
        Kind::Float => v as f32 as f64,
        _ => v,
    }
}

impl Lbfgs {
    pub fn new(cfg: LbfgsConfig, x0: &Tensor) -> Lbfgs {
        let x = x0.detach().copy();
        Lbfgs {
            cfg,
            kind: x.kind(),
            x,
            grad: None,
            prev_loss: f64::NAN,
            direction: None,
            prev_grad: None,
            t: cfg.lr,
            history: VecDeque::new(),
            spare: Vec::new(),
            h_diag: None,
            candidate: None,
            n_iter: 0,
            func_evals: 0,
            grad_abs_sum: f64::NAN,
            grad_abs_max: f64::NAN,
            values: Vec::new(),
        }
    }

    pub fn x(&self) -> &Tensor {
        &self.x
    }

    pub fn func_evals(&self) -> u32 {
        self.func_evals
    }

    /// The first evaluation (iteration 0).
    pub fn start(&mut self, f: &mut dyn Objective) -> Result<Report> {
        let eval = f.evaluate(&self.x)?;
        let packet = Tensor::f_cat(
            &[eval.values.to_kind(Kind::Double), eval.grad.abs().max().to_kind(Kind::Double).view([1]), eval.grad.abs().sum(Kind::Double).view([1])],
            0,
        )?;
        let host = to_host(&packet)?;
        let k = host.len() - 2;
        self.func_evals += 1;
        self.grad_abs_sum = round_to(self.kind, host[k + 1]);
        self.grad_abs_max = host[k];
        self.values = host[..k].to_vec();
        self.grad = Some(eval.grad);
        let stop = if !self.values[0].is_finite() {
            Some(StopReason::NonFinite)
        } else if host[k] <= self.cfg.tolerance_grad {
            Some(StopReason::GradientTolerance)
        } else {
            None
        };
        Ok(Report { values: host[..k].to_vec(), evaluations: 1, stop })
    }

    /// Takes the candidate pair into the history if its curvature is positive.
    fn update_history(&mut self) -> Result<()> {
        let Some(c) = self.candidate.take() else { return Ok(()) };
        if c.ys_host > 1e-10 {
            if self.history.len() == self.cfg.history_size {
                let old = self.history.pop_front().expect("full history");
                self.spare.push((old.y, old.s));
            }
            let ro = c.ys.f_reciprocal()?;
            self.h_diag = Some(c.ys.f_div(&c.yy)?);
            self.history.push_back(Pair { y: c.y, s: c.s, ro });
        } else {
            self.spare.push((c.y, c.s));
        }
        Ok(())
    }

    /// The two-loop recursion: d = -H·g.
    fn direction(&mut self, grad: &Tensor) -> Result<Tensor> {
        if self.n_iter == 1 {
            return Ok(grad.f_neg()?);
        }
        self.update_history()?;
        let mut q = grad.f_neg()?;
        let mut al: Vec<Tensor> = Vec::with_capacity(self.history.len());
        for pair in self.history.iter().rev() {
            let a = pair.s.f_dot(&q)?.f_mul(&pair.ro)?;
            let _ = q.f_addcmul_(&pair.y, &a.f_neg()?)?;
            al.push(a);
        }
        al.reverse();
        let mut r = match &self.h_diag {
            Some(h) => q.f_mul(h)?,
            None => q,
        };
        for (pair, a) in self.history.iter().zip(&al) {
            let be = pair.y.f_dot(&r)?.f_mul(&pair.ro)?;
            let _ = r.f_addcmul_(&pair.s, &a.f_sub(&be)?)?;
        }
        Ok(r)
    }

    fn spare_or_new(&mut self) -> (Tensor, Tensor) {
        match self.spare.pop() {
            Some(pair) => pair,
            None => (self.x.empty_like(), self.x.empty_like()),
        }
    }

    /// One L-BFGS iteration: direction, step (fixed or strong Wolfe), evaluation.
    pub fn iterate(&mut self, f: &mut dyn Objective) -> Result<Report> {
        let grad = match &self.grad {
            Some(g) => g.shallow_clone(),
            None => return self.start(f),
        };
        self.n_iter += 1;
        let d = self.direction(&grad)?;
        match &mut self.prev_grad {
            Some(prev) => {
                prev.f_copy_(&grad)?;
            }
            None => self.prev_grad = Some(grad.copy()),
        }
        self.prev_loss = self.values[0];
        self.t = match (self.n_iter, self.cfg.first_step) {
            // d = -g on the first iteration, so max|t·d| = t·max|g|
            (1, Some(max_change)) if self.grad_abs_max > 0.0 => round_to(self.kind, max_change / self.grad_abs_max),
            (1, _) => round_to(self.kind, (1.0f64).min(round_to(self.kind, self.cfg.share / self.grad_abs_sum)) * self.cfg.lr),
            _ => self.cfg.lr,
        };
        let gtd = grad.f_dot(&d)?;
        let report = if self.cfg.strong_wolfe { self.wolfe_step(f, &d, &gtd)? } else { self.fixed_step(f, &d, &gtd)? };
        self.direction = Some(d);
        Ok(report)
    }

    /// Fixed step t·d, one evaluation, one host read.
    fn fixed_step(&mut self, f: &mut dyn Objective, d: &Tensor, gtd: &Tensor) -> Result<Report> {
        // PyTorch stops before stepping when g·d > -tolerance_change; masking the
        // step keeps x unchanged in that case without a host read here.
        let descent = gtd.f_le(-self.cfg.tolerance_change)?.f_to_kind(self.kind)?;
        let _ = self.x.f_addcmul_(d, &descent.f_mul_scalar(self.t)?)?;
        let eval = f.evaluate(&self.x)?;
        self.func_evals += 1;
        let (host, k) = self.after_step(Some(&eval.values), &eval.grad, d, gtd)?;
        self.grad = Some(eval.grad);
        let values = host[..k].to_vec();
        let stop = self.stopping(&host[k..], values[0]);
        self.values = values.clone();
        Ok(Report { values, evaluations: 1, stop })
    }

    /// Builds the next candidate pair and reads the packet
    /// [values.., max|g|, max|t·d|, y·s, y·y, g·d] to the host.
    /// `values` is left out when the host has them already (after a line search).
    fn after_step(&mut self, values: Option<&Tensor>, grad: &Tensor, d: &Tensor, gtd: &Tensor) -> Result<(Vec<f64>, usize)> {
        let (mut y, mut s) = self.spare_or_new();
        let prev = self.prev_grad.as_ref().expect("set before stepping");
        y.f_copy_(&grad.f_sub(prev)?)?;
        s.f_copy_(&d.f_mul_scalar(self.t)?)?;
        let ys = y.f_dot(&s)?;
        let yy = y.f_dot(&y)?;
        let tail = [grad.abs().max(), s.abs().max(), ys.shallow_clone(), yy.shallow_clone(), gtd.shallow_clone()];
        let parts: Vec<Tensor> = values.into_iter().map(Tensor::shallow_clone).chain(tail).map(|t| t.to_kind(Kind::Double).view([-1])).collect();
        let packet = Tensor::f_cat(&parts, 0)?;
        let host = to_host(&packet)?;
        let k = host.len() - 5;
        self.candidate = Some(Candidate { y, s, ys, yy, ys_host: host[k + 2] });
        Ok((host, k))
    }

    /// PyTorch's stopping rules, in its order. `tail` = [max|g|, max|t·d|, y·s, y·y, g·d].
    fn stopping(&self, tail: &[f64], loss: f64) -> Option<StopReason> {
        let (grad_max, step_max, gtd) = (tail[0], tail[1], tail[4]);
        if !loss.is_finite() {
            return Some(StopReason::NonFinite);
        }
        if gtd > -self.cfg.tolerance_change {
            return Some(StopReason::NotDescent);
        }
        // PyTorch counts the evaluation at the start of step() as its first, as
        // `func_evals` counts `start`.
        if self.func_evals >= self.cfg.max_eval {
            return Some(StopReason::MaxEvaluations);
        }
        if grad_max <= self.cfg.tolerance_grad {
            return Some(StopReason::GradientTolerance);
        }
        if step_max <= self.cfg.tolerance_change {
            return Some(StopReason::StepTolerance);
        }
        if (loss - self.prev_loss).abs() < self.cfg.tolerance_change {
            return Some(StopReason::LossTolerance);
        }
        None
    }

    /// Evaluates at x + t·d without moving x; returns (f, g·d, values, grad).
    fn probe(&mut self, f: &mut dyn Objective, t: f64, d: &Tensor) -> Result<(f64, f64, Vec<f64>, Tensor)> {
        let point = self.x.f_add(&d.f_mul_scalar(t)?)?;
        let eval = f.evaluate(&point)?;
        self.func_evals += 1;
        let packet = Tensor::f_cat(&[eval.values.to_kind(Kind::Double), eval.grad.f_dot(d)?.to_kind(Kind::Double).view([1])], 0)?;
        let host = to_host(&packet)?;
        let k = host.len() - 1;
        Ok((host[0], host[k], host[..k].to_vec(), eval.grad))
    }

    /// Strong-Wolfe line search from x along d, then the step.
    fn wolfe_step(&mut self, f: &mut dyn Objective, d: &Tensor, gtd: &Tensor) -> Result<Report> {
        let gtd0 = to_host(&gtd.to_kind(Kind::Double).view([1]))?[0];
        if gtd0 > -self.cfg.tolerance_change {
            return Ok(Report { values: self.values.clone(), evaluations: 0, stop: Some(StopReason::NotDescent) });
        }
        let evals_before = self.func_evals;
        // PyTorch: max_ls = max_eval - current_evals, current_evals counting from 1.
        let max_ls = (self.cfg.max_eval as i64) - (self.func_evals as i64);
        let grad = self.grad.as_ref().expect("evaluated").shallow_clone();
        let d_norm = to_host(&d.abs().max().to_kind(Kind::Double).view([1]))?[0];
        let search = StrongWolfe { c1: 1e-4, c2: 0.9, tolerance_change: self.cfg.tolerance_change, max_ls };
        let start_values = self.values.clone();
        let (t, f_new, values, g_new) = search.run(self, f, d, self.t, start_values, grad, gtd0, d_norm)?;
        self.t = t;
        let _ = self.x.f_add_(&d.f_mul_scalar(t)?)?;
        let (host, k) = self.after_step(None, &g_new, d, gtd)?;
        self.grad = Some(g_new);
        let stop = self.stopping(&host[k..], f_new);
        self.values = values.clone();
        Ok(Report { values, evaluations: self.func_evals - evals_before, stop })
    }
}

/// PyTorch's `_cubic_interpolate`.
fn cubic_interpolate(x1: f64, f1: f64, g1: f64, x2: f64, f2: f64, g2: f64, bounds: Option<(f64, f64)>) -> f64 {
    let (xmin_bound, xmax_bound) = bounds.unwrap_or(if x1 <= x2 { (x1, x2) } else { (x2, x1) });
    let d1 = g1 + g2 - 3.0 * (f1 - f2) / (x1 - x2);
    let d2_square = d1 * d1 - g1 * g2;
    if d2_square >= 0.0 {
        let d2 = d2_square.sqrt();
        let min_pos =
            if x1 <= x2 { x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2.0 * d2)) } else { x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2.0 * d2)) };
        min_pos.max(xmin_bound).min(xmax_bound)
    } else {
        (xmin_bound + xmax_bound) / 2.0
    }
}

struct StrongWolfe {
    c1: f64,
    c2: f64,
    tolerance_change: f64,
    max_ls: i64,
}

/// A point on the search line: step, value, g·d, reported values, gradient.
struct LinePoint {
    t: f64,
    f: f64,
    gtd: f64,
    values: Vec<f64>,
    grad: Tensor,
}

impl Clone for LinePoint {
    /// Shares the gradient tensor (no device copy): points are never mutated in place.
    fn clone(&self) -> LinePoint {
        LinePoint { t: self.t, f: self.f, gtd: self.gtd, values: self.values.clone(), grad: self.grad.shallow_clone() }
    }
}

impl StrongWolfe {
    /// PyTorch's `_strong_wolfe`; returns (t, f, values, grad) of the accepted point.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        opt: &mut Lbfgs,
        f: &mut dyn Objective,
        d: &Tensor,
        t0: f64,
        start_values: Vec<f64>,
        g0: Tensor,
        gtd0: f64,
        d_norm: f64,
    ) -> Result<(f64, f64, Vec<f64>, Tensor)> {
        let f0 = start_values[0];
        let mut t = t0;
        let (mut f_new, mut gtd_new, mut values_new, mut g_new) = opt.probe(f, t, d)?;
        let origin = LinePoint { t: 0.0, f: f0, gtd: gtd0, values: start_values, grad: g0 };
        let mut prev = origin.clone();
        let mut done = false;
        let mut ls_iter: i64 = 0;
        let mut bracket: Vec<LinePoint> = Vec::new();
        while ls_iter < self.max_ls {
            let here = LinePoint { t, f: f_new, gtd: gtd_new, values: values_new.clone(), grad: g_new.shallow_clone() };
            if f_new > f0 + self.c1 * t * gtd0 || (ls_iter > 1 && f_new >= prev.f) {
                bracket = vec![prev.clone(), here];
                break;
            }
            if gtd_new.abs() <= -self.c2 * gtd0 {
                bracket = vec![here];
                done = true;
                break;
            }
            if gtd_new >= 0.0 {
                bracket = vec![prev.clone(), here];
                break;
            }
            let min_step = t + 0.01 * (t - prev.t);
            let max_step = t * 10.0;
            let next = cubic_interpolate(prev.t, prev.f, prev.gtd, t, f_new, gtd_new, Some((min_step, max_step)));
            prev = here;
            t = next;
            (f_new, gtd_new, values_new, g_new) = opt.probe(f, t, d)?;
            ls_iter += 1;
        }
        if ls_iter == self.max_ls {
            bracket = vec![origin.clone(), LinePoint { t, f: f_new, gtd: gtd_new, values: values_new.clone(), grad: g_new.shallow_clone() }];
        }

        let mut insuf_progress = false;
        let (mut low, mut high) = if bracket[0].f <= bracket[bracket.len() - 1].f { (0, 1) } else { (1, 0) };
        while !done && ls_iter < self.max_ls {
            if (bracket[1].t - bracket[0].t).abs() * d_norm < self.tolerance_change {
                break;
            }
            t = cubic_interpolate(bracket[0].t, bracket[0].f, bracket[0].gtd, bracket[1].t, bracket[1].f, bracket[1].gtd, None);
            let (bmax, bmin) = (bracket[0].t.max(bracket[1].t), bracket[0].t.min(bracket[1].t));
            let eps = 0.1 * (bmax - bmin);
            if (bmax - t).min(t - bmin) < eps {
                if insuf_progress || t >= bmax || t <= bmin {
                    t = if (t - bmax).abs() < (t - bmin).abs() { bmax - eps } else { bmin + eps };
                    insuf_progress = false;
                } else {
                    insuf_progress = true;
                }
            } else {
                insuf_progress = false;
            }
            (f_new, gtd_new, values_new, g_new) = opt.probe(f, t, d)?;
            ls_iter += 1;
            let here = LinePoint { t, f: f_new, gtd: gtd_new, values: values_new.clone(), grad: g_new.shallow_clone() };
            if f_new > f0 + self.c1 * t * gtd0 || f_new >= bracket[low].f {
                bracket[high] = here;
                (low, high) = if bracket[0].f <= bracket[1].f { (0, 1) } else { (1, 0) };
            } else {
                if gtd_new.abs() <= -self.c2 * gtd0 {
                    done = true;
                } else if gtd_new * (bracket[high].t - bracket[low].t) >= 0.0 {
                    bracket[high] = bracket[low].clone();
                }
                bracket[low] = here;
            }
        }
        let best = bracket.swap_remove(low.min(bracket.len() - 1));
        Ok((best.t, best.f, best.values, best.grad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::Evaluation;

    /// f(x) = Σ (x_i - i)², gradient 2(x - i).
    struct Quadratic;
    impl Objective for Quadratic {
        fn evaluate(&mut self, x: &Tensor) -> Result<Evaluation> {
            let target = Tensor::arange(x.size()[0], (Kind::Double, x.device()));
            let diff = x - &target;
            Ok(Evaluation { values: diff.square().sum(Kind::Double).view([1]), grad: diff * 2.0 })
        }
    }

    #[test]
    fn solves_a_quadratic() {
        for wolfe in [false, true] {
            let mut cfg = LbfgsConfig::new(50);
            cfg.strong_wolfe = wolfe;
            let mut opt = Lbfgs::new(cfg, &Tensor::zeros([5], (Kind::Double, tch::Device::Cpu)));
            let mut f = Quadratic;
            opt.start(&mut f).unwrap();
            let mut last = f64::INFINITY;
            for _ in 0..50 {
                let r = opt.iterate(&mut f).unwrap();
                last = r.values[0];
                if r.stop.is_some() {
                    break;
                }
            }
            assert!(last < 1e-12, "wolfe={wolfe} loss {last}");
        }
    }

    #[test]
    fn cubic_interpolation_finds_the_minimum_of_a_cubic() {
        // f(x) = (x-1)^2 sampled at 0 and 3: the minimiser is 1.
        let t = cubic_interpolate(0.0, 1.0, -2.0, 3.0, 4.0, 4.0, None);
        assert!((t - 1.0).abs() < 1e-12, "{t}");
    }
}
