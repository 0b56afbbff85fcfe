//! Several jobs' evaluations in one pass through VGG-16.
//!
//! A [`BatchEvaluator`] owns one model on one device and a driver thread. Each
//! job joins with its [`LossSpec`] (targets and weights) and gets a [`Member`],
//! an [`Objective`] that its own optimiser calls from the job's own thread, as
//! it would a [`crate::loss::StyleObjective`]. The driver gathers the pending
//! evaluations into rounds: a round runs when every member is waiting, or when
//! `linger` has passed since the first request (so a member busy writing a
//! snapshot holds nobody up for long). Within a round the images of the same
//! size are stacked along the batch dimension and go through the network once;
//! each job's losses come from its own slice of the activations with its own
//! targets, the sum of the jobs' totals is differentiated once, and each job
//! gets its own slice of the gradient. Nothing in VGG-16 mixes samples
//! (convolutions, ReLU, pooling), so a job's loss and gradient are what it
//! would get alone, up to floating-point reduction order.
//!
//! **Compatible** jobs share the evaluator's model: the same weights, pooling,
//! device and dtype, and layers no deeper than the model. Jobs of different
//! sizes may share an evaluator: each size is its own pass in a round.
//!
//! Jobs come and go freely: a member that finishes, fails or is cancelled is
//! dropped and leaves; a new one joins the next round. No job waits for another
//! to finish: a strong-Wolfe line search that needs extra evaluations simply
//! takes part in more rounds. If a stacked pass fails, its members are
//! evaluated one by one, so an error reaches only the job that causes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use crate::error::{EngineError, Result};
use crate::loss::LossSpec;
use crate::optim::{Evaluation, Objective};
use crate::vgg::{LayerId, Pooling, Vgg16};
use crate::weights::VggWeights;

/// Requests queued to the driver at most (members block beyond it).
const QUEUE: usize = 256;

/// An evaluation and how many jobs' evaluations its pass stacked.
type Answer = Result<(Evaluation, u32)>;

enum Msg {
    Join { id: u64, spec: LossSpec, reply: SyncSender<Answer> },
    Eval { id: u64, x: Tensor },
    Leave { id: u64 },
}

/// What a round did, for tests and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Rounds run.
    pub rounds: u64,
    /// Stacked passes through the network (one per image size per round).
    pub passes: u64,
    /// Evaluations answered.
    pub evaluations: u64,
    /// The most evaluations stacked in one pass.
    pub widest: u64,
    /// Passes that failed and were evaluated one job at a time instead.
    pub fallbacks: u64,
}

/// One model on one device and the driver thread that evaluates its members.
/// Jobs reach it through [`BatchHandle`]s (one per job thread).
pub struct BatchEvaluator {
    driver: Option<JoinHandle<BatchStats>>,
    handle: Option<BatchHandle>,
}

impl BatchEvaluator {
    /// Uploads `weights` (the first `depth` convolutions) to `device` once and
    /// starts the driver thread; renders compute in `Float`.
    pub fn new(weights: &VggWeights, depth: usize, pooling: Pooling, device: Device, linger: Duration) -> BatchEvaluator {
        BatchEvaluator::new_in(Kind::Float, weights, depth, pooling, device, linger)
    }

    /// [`BatchEvaluator::new`] in another floating-point kind (see
    /// [`crate::render::Evaluator::Own`]).
    pub fn new_in(kind: Kind, weights: &VggWeights, depth: usize, pooling: Pooling, device: Device, linger: Duration) -> BatchEvaluator {
        let model = Vgg16::new(weights.tensors(depth), pooling, device, kind);
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let driver_model = model.shallow_clone();
        let driver = std::thread::Builder::new()
            .name("stylefarm-batch".into())
            .spawn(move || Driver { model: driver_model, members: HashMap::new(), pending: Vec::new(), stats: BatchStats::default() }.run(rx, linger))
            .expect("spawning the batch driver thread");
        let handle = BatchHandle { tx, model, pooling, weights_sha256: weights.sha256.clone(), device, kind, next_id: Arc::new(AtomicU64::new(1)) };
        BatchEvaluator { driver: Some(driver), handle: Some(handle) }
    }

    /// A handle for one more job thread.
    pub fn handle(&self) -> BatchHandle {
        self.handle.as_ref().expect("kept until finish").clone()
    }

    /// Lets the driver run on its own: it stops when the last handle and
    /// member are gone (a cache of evaluators can forget one in use).
    pub fn into_handle(mut self) -> BatchHandle {
        self.driver.take();
        self.handle.take().expect("kept until finish")
    }

    /// Waits until every handle and member is gone, stops the driver and says what it did.
    pub fn finish(mut self) -> BatchStats {
        self.handle.take();
        self.driver.take().and_then(|d| d.join().ok()).unwrap_or_default()
    }
}

impl Drop for BatchEvaluator {
    fn drop(&mut self) {
        self.handle.take();
        if let Some(driver) = self.driver.take() {
            let _ = driver.join();
        }
    }
}

/// A job thread's way into a [`BatchEvaluator`] (`Send`; one per thread).
pub struct BatchHandle {
    tx: SyncSender<Msg>,
    model: Vgg16,
    pooling: Pooling,
    weights_sha256: String,
    device: Device,
    kind: Kind,
    next_id: Arc<AtomicU64>,
}

impl Clone for BatchHandle {
    fn clone(&self) -> BatchHandle {
        BatchHandle {
            tx: self.tx.clone(),
            model: self.model.shallow_clone(),
            pooling: self.pooling,
            weights_sha256: self.weights_sha256.clone(),
            device: self.device,
            kind: self.kind,
            next_id: Arc::clone(&self.next_id),
        }
    }
}

impl BatchHandle {
    /// The model the members are evaluated with (to compute their targets).
    pub fn model(&self) -> Vgg16 {
        self.model.shallow_clone()
    }

    /// The floating-point kind of the model and of the renders that join it.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether a job with these weights, pooling and device can share this model.
    pub fn compatible(&self, weights: &VggWeights, pooling: Pooling, device: Device) -> Result<()> {
        if weights.sha256 != self.weights_sha256 {
            return Err(EngineError::param("weights", format!("the shared model has weights {}, the job {}", self.weights_sha256, weights.sha256)));
        }
        if pooling != self.pooling {
            return Err(EngineError::param("pooling", format!("the shared model pools {:?}, the job asks for {pooling:?}", self.pooling)));
        }
        if device != self.device {
            return Err(EngineError::param("device", format!("the shared model is on {:?}, the job on {device:?}", self.device)));
        }
        Ok(())
    }

    /// Adds a job; its evaluations go through the shared passes until the
    /// returned member is dropped.
    pub fn join(&self, spec: LossSpec) -> Result<Member> {
        let deepest = spec.layers().iter().map(|l| l.index()).max().unwrap_or(0);
        if deepest >= self.model.depth() {
            return Err(EngineError::param(
                "layers",
                format!("layer {} is deeper than the shared model ({} convolutions)", LayerId::from_index(deepest), self.model.depth()),
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answers) = mpsc::sync_channel(1);
        let (height, width) = (spec.height(), spec.width());
        self.tx.send(Msg::Join { id, spec, reply }).map_err(|_| stopped())?;
        Ok(Member { id, tx: self.tx.clone(), answers, height, width, packing: Packing::default() })
    }
}

fn stopped() -> EngineError {
    EngineError::param("batch", "the shared evaluator has stopped")
}

/// One job's handle on a [`BatchEvaluator`]: an [`Objective`].
pub struct Member {
    id: u64,
    tx: SyncSender<Msg>,
    answers: Receiver<Answer>,
    packing: Packing,
    height: i64,
    width: i64,
}

/// How a job's evaluations were stacked with others' (in its metadata).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Packing {
    /// Evaluations made through the shared evaluator.
    pub evaluations: u64,
    /// Of those, stacked with at least one other job's.
    pub stacked: u64,
    /// Mean jobs per pass, this job included.
    pub mean_width: f64,
    /// The most jobs in one of its passes.
    pub max_width: u32,
}

impl Packing {
    fn add(&mut self, width: u32) {
        self.mean_width = (self.mean_width * self.evaluations as f64 + width as f64) / (self.evaluations + 1) as f64;
        self.evaluations += 1;
        self.stacked += u64::from(width > 1);
        self.max_width = self.max_width.max(width);
    }

    /// Both parts together (a render's scales).
    pub fn merge(&mut self, other: Packing) {
        let n = self.evaluations + other.evaluations;
        if n > 0 {
            self.mean_width = (self.mean_width * self.evaluations as f64 + other.mean_width * other.evaluations as f64) / n as f64;
        }
        self.evaluations = n;
        self.stacked += other.stacked;
        self.max_width = self.max_width.max(other.max_width);
    }
}

impl Member {
    pub fn packing(&self) -> Packing {
        self.packing
    }

    pub fn height(&self) -> i64 {
        self.height
    }

    pub fn width(&self) -> i64 {
        self.width
    }
}

impl Objective for Member {
    fn evaluate(&mut self, x: &Tensor) -> Result<Evaluation> {
        self.tx.send(Msg::Eval { id: self.id, x: x.detach() }).map_err(|_| stopped())?;
        let (evaluation, width) = self.answers.recv().map_err(|_| stopped())??;
        self.packing.add(width);
        Ok(evaluation)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Leave { id: self.id });
    }
}

struct Joined {
    spec: LossSpec,
    reply: SyncSender<Answer>,
}

/// A member's evaluation waiting for its round: (member, point).
type Request = (u64, Tensor);

struct Driver {
    model: Vgg16,
    members: HashMap<u64, Joined>,
    /// In arrival order.
    pending: Vec<Request>,
    stats: BatchStats,
}

impl Driver {
    fn run(mut self, rx: Receiver<Msg>, linger: Duration) -> BatchStats {
        let mut first_pending: Option<Instant> = None;
        loop {
            let msg = match first_pending {
                None => match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => break,
                },
                Some(since) => match rx.recv_timeout(linger.saturating_sub(since.elapsed())) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            match msg {
                Some(Msg::Join { id, spec, reply }) => {
                    self.members.insert(id, Joined { spec, reply });
                }
                Some(Msg::Eval { id, x }) if self.members.contains_key(&id) => {
                    self.pending.push((id, x));
                    first_pending.get_or_insert_with(Instant::now);
                }
                Some(Msg::Eval { .. }) => {}
                Some(Msg::Leave { id }) => {
                    self.members.remove(&id);
                    self.pending.retain(|(p, _)| *p != id);
                }
                None => {}
            }
            let everyone_waits = !self.pending.is_empty() && self.pending.len() >= self.members.len();
            let lingered = first_pending.is_some_and(|since| since.elapsed() >= linger);
            if everyone_waits || (lingered && !self.pending.is_empty()) {
                self.round();
                first_pending = None;
            } else if self.pending.is_empty() {
                first_pending = None;
            }
        }
        self.stats
    }

    /// Evaluates every pending request: one stacked pass per image size.
    fn round(&mut self) {
        self.stats.rounds += 1;
        let pending = std::mem::take(&mut self.pending);
        let mut by_size: Vec<((i64, i64), Vec<Request>)> = Vec::new();
        for (id, x) in pending {
            let size = self.members.get(&id).map(|m| (m.spec.height(), m.spec.width())).expect("pending members are joined");
            match by_size.iter_mut().find(|(s, _)| *s == size) {
                Some((_, group)) => group.push((id, x)),
                None => by_size.push((size, vec![(id, x)])),
            }
        }
        for (_, group) in by_size {
            self.stats.passes += 1;
            self.stats.widest = self.stats.widest.max(group.len() as u64);
            self.stats.evaluations += group.len() as u64;
            let specs: Vec<&LossSpec> = group.iter().map(|(id, _)| &self.members[id].spec).collect();
            let points: Vec<&Tensor> = group.iter().map(|(_, x)| x).collect();
            match guarded(&self.model, &specs, &points) {
                Ok(evaluations) => {
                    let width = group.len() as u32;
                    for ((id, _), evaluation) in group.iter().zip(evaluations) {
                        let _ = self.members[id].reply.send(Ok((evaluation, width)));
                    }
                }
                Err(_) if group.len() > 1 => {
                    // find the job that fails: each alone, so the others still get theirs
                    self.stats.fallbacks += 1;
                    for (id, x) in &group {
                        let result = guarded(&self.model, &[&self.members[id].spec], &[x]).map(|mut e| (e.remove(0), 1));
                        let _ = self.members[id].reply.send(result);
                    }
                }
                Err(e) => {
                    let _ = self.members[&group[0].0].reply.send(Err(e));
                }
            }
        }
    }
}

/// [`evaluate_stacked`], with a panic inside libtorch's bindings turned into
/// an error: the driver outlives any one job's bad pass.
fn guarded(model: &Vgg16, specs: &[&LossSpec], points: &[&Tensor]) -> Result<Vec<Evaluation>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| evaluate_stacked(model, specs, points)))
        .unwrap_or_else(|_| Err(EngineError::param("batch", "the stacked pass panicked")))
}

/// The losses and gradients of `specs[i]` at `points[i]` (flat NHWC, all the
/// same size), through one pass of `model`.
pub fn evaluate_stacked(model: &Vgg16, specs: &[&LossSpec], points: &[&Tensor]) -> Result<Vec<Evaluation>> {
    let (h, w) = (specs[0].height(), specs[0].width());
    let n = specs.len() as i64;
    let flat = Tensor::f_stack(&points.iter().map(|p| p.f_view([-1])).collect::<std::result::Result<Vec<_>, _>>()?, 0)?;
    let leaf = flat.detach().set_requires_grad(true);
    let images = leaf.f_view([n, h, w, 3])?.f_permute([0, 3, 1, 2])?;
    // the union of the layers the jobs read, shallowest first
    let mut layers: Vec<LayerId> = specs.iter().flat_map(|s| s.layers().iter().copied()).collect();
    layers.sort();
    layers.dedup();
    let features = model.forward(&images, &layers)?;
    let mut values = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let own: Vec<Tensor> = spec
            .layers()
            .iter()
            .map(|l| features[layers.iter().position(|u| u == l).expect("in the union")].f_narrow(0, i as i64, 1))
            .collect::<std::result::Result<_, _>>()?;
        values.push(spec.losses_from(&own, &images.f_narrow(0, i as i64, 1)?)?);
    }
    let total = values.iter().map(|v| v.get(0)).reduce(|a, b| a + b).expect("at least one job");
    total.f_backward()?;
    let grad = leaf.grad();
    if !grad.defined() {
        return Err(EngineError::param("loss", "no gradient reached the image (all weights zero?)"));
    }
    Ok(values.into_iter().enumerate().map(|(i, v)| Evaluation { values: v.detach(), grad: grad.get(i as i64) }).collect())
}

#[cfg(test)]
mod tests;
