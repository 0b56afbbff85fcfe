//! KEDA's `externalscaler.ExternalScaler`, served on the coordinator's port so
//! that a ScaledObject scales the worker Deployment on the queue, down to zero
//! (as Ballista's scheduler does for its executors).
//!
//! The metric is the jobs a worker could take now or is running: queued jobs
//! that some registered device fits, plus running ones. A job that no device
//! fits is left out: more workers of the same kind would not run it (it fails
//! after the unfit grace period). KEDA divides the value by `jobsPerWorker`
//! (trigger metadata, default 1) to get the number of workers.
//!
//! Worker pools: with `labels` in the trigger metadata (`pool=studio-b,vram=80`,
//! the labels the scaled Deployment's workers carry) the metric is that pool's
//! demand ([`crate::scheduler::Scheduler::pool_demand`]), so each pool scales on
//! its own queue, from zero.
//!
//! It answers without a token (KEDA's external trigger has no way to send
//! one) and tells nothing but these two counts. `--no-scaler` turns it off.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use stylefarm_proto::externalscaler as ks;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use stylefarm_core::labels::{self, Labels};

use crate::error::CoordError;
use crate::farm::Farm;

/// The metric's name, as KEDA and the HPA show it.
pub const METRIC: &str = "stylefarm-jobs";

/// How often StreamIsActive looks at the queue.
const PUSH_PERIOD: Duration = Duration::from_secs(1);

pub struct ScalerService {
    farm: Arc<Farm>,
}

impl ScalerService {
    pub fn new(farm: Arc<Farm>) -> ScalerService {
        ScalerService { farm }
    }

    fn demand(&self, trigger: &Trigger) -> Result<u64, Status> {
        workable(&self.farm, trigger)
    }
}

/// The metric: jobs a worker (of the trigger's pool) could take now or is running.
fn workable(farm: &Farm, trigger: &Trigger) -> Result<u64, Status> {
    Ok(match &trigger.pool {
        None => farm.read(|s| s.demand())?.workable(),
        Some(labels) => farm.read(|s| s.pool_demand(labels))?,
    })
}

/// A ScaledObject trigger's metadata.
#[derive(Debug, Clone, PartialEq)]
struct Trigger {
    /// `jobsPerWorker`, default 1.
    per_worker: u64,
    /// `labels`: the scaled workers' labels (a pool); None: the whole farm.
    pool: Option<Labels>,
}

fn trigger(r: &ks::ScaledObjectRef) -> Result<Trigger, CoordError> {
    let per_worker = match r.scaler_metadata.get("jobsPerWorker") {
        None => 1,
        Some(text) => match text.trim().parse::<u64>() {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => return Err(CoordError::invalid("scalerMetadata.jobsPerWorker", format!("`{text}` is not a whole number in 1..=10000"))),
        },
    };
    let pool = match r.scaler_metadata.get("labels") {
        None => None,
        Some(text) => Some(labels::parse_labels(text).map_err(|e| CoordError::invalid("scalerMetadata.labels", e))?),
    };
    Ok(Trigger { per_worker, pool })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ks::external_scaler_server::ExternalScaler for ScalerService {
    async fn is_active(&self, request: Request<ks::ScaledObjectRef>) -> Result<Response<ks::IsActiveResponse>, Status> {
        let trigger = trigger(request.get_ref())?;
        Ok(Response::new(ks::IsActiveResponse { result: self.demand(&trigger)? > 0 }))
    }

    type StreamIsActiveStream = BoxStream<ks::IsActiveResponse>;

    async fn stream_is_active(&self, request: Request<ks::ScaledObjectRef>) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let trigger = trigger(request.get_ref())?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let farm = Arc::clone(&self.farm);
        tokio::spawn(async move {
            let mut stopping = farm.stopping();
            let mut last = None;
            loop {
                let active = match workable(&farm, &trigger) {
                    Ok(n) => n > 0,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                // the current state first, then every change
                if last != Some(active) {
                    if tx.send(Ok(ks::IsActiveResponse { result: active })).await.is_err() {
                        return;
                    }
                    last = Some(active);
                }
                let stop = tokio::select! {
                    _ = tokio::time::sleep(PUSH_PERIOD) => false,
                    _ = stopping.wait_for(|s| *s) => true,
                    _ = tx.closed() => return,
                };
                if stop {
                    let _ = tx.send(Err(Status::unavailable("the coordinator is shutting down"))).await;
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn get_metric_spec(&self, request: Request<ks::ScaledObjectRef>) -> Result<Response<ks::GetMetricSpecResponse>, Status> {
        let per_worker = trigger(request.get_ref())?.per_worker;
        let spec = ks::MetricSpec { metric_name: METRIC.into(), target_size: per_worker as i64, target_size_float: per_worker as f64 };
        Ok(Response::new(ks::GetMetricSpecResponse { metric_specs: vec![spec] }))
    }

    async fn get_metrics(&self, request: Request<ks::GetMetricsRequest>) -> Result<Response<ks::GetMetricsResponse>, Status> {
        let r = request.into_inner();
        let trigger = trigger(&r.scaled_object_ref.unwrap_or_default())?;
        if !r.metric_name.is_empty() && r.metric_name != METRIC && !r.metric_name.ends_with(METRIC) {
            return Err(CoordError::invalid("metricName", format!("`{}` is not served here; the metric is `{METRIC}`", r.metric_name)).into());
        }
        let demand = self.demand(&trigger)?;
        let value = ks::MetricValue { metric_name: METRIC.into(), metric_value: demand as i64, metric_value_float: demand as f64 };
        Ok(Response::new(ks::GetMetricsResponse { metric_values: vec![value] }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(metadata: &[(&str, &str)]) -> ks::ScaledObjectRef {
        ks::ScaledObjectRef {
            name: "stylefarm-worker".into(),
            namespace: "stylefarm".into(),
            scaler_metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn trigger_metadata_defaults_and_names_the_field_when_bad() {
        assert_eq!(trigger(&object(&[])).unwrap(), Trigger { per_worker: 1, pool: None });
        assert_eq!(trigger(&object(&[("jobsPerWorker", "4")])).unwrap().per_worker, 4);
        for bad in ["0", "-1", "two", "100000"] {
            let e = trigger(&object(&[("jobsPerWorker", bad)])).unwrap_err().to_string();
            assert!(e.contains("jobsPerWorker"), "{e}");
        }
        let pool = trigger(&object(&[("labels", "pool=studio-b, vram=80")])).unwrap().pool.unwrap();
        assert_eq!(pool, Labels::from([("pool".into(), "studio-b".into()), ("vram".into(), "80".into())]));
        for bad in ["pool", "Pool=x", "pool=a b"] {
            let e = trigger(&object(&[("labels", bad)])).unwrap_err().to_string();
            assert!(e.contains("scalerMetadata.labels"), "{e}");
        }
    }
}
