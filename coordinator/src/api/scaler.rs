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
//! It answers without a token (KEDA's external trigger has no way to send
//! one) and tells nothing but these two counts. `--no-scaler` turns it off.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use stylefarm_proto::externalscaler as ks;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

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

    fn demand(&self) -> Result<u64, Status> {
        workable(&self.farm)
    }
}

/// The metric: jobs a worker could take now or is running.
fn workable(farm: &Farm) -> Result<u64, Status> {
    Ok(farm.read(|s| s.demand())?.workable())
}

/// Jobs per worker from the trigger's metadata (`jobsPerWorker`, default 1).
fn jobs_per_worker(r: &ks::ScaledObjectRef) -> Result<u64, CoordError> {
    match r.scaler_metadata.get("jobsPerWorker") {
        None => Ok(1),
        Some(text) => match text.trim().parse::<u64>() {
            Ok(n) if (1..=10_000).contains(&n) => Ok(n),
            _ => Err(CoordError::invalid("scalerMetadata.jobsPerWorker", format!("`{text}` is not a whole number in 1..=10000"))),
        },
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ks::external_scaler_server::ExternalScaler for ScalerService {
    async fn is_active(&self, request: Request<ks::ScaledObjectRef>) -> Result<Response<ks::IsActiveResponse>, Status> {
        jobs_per_worker(request.get_ref())?;
        Ok(Response::new(ks::IsActiveResponse { result: self.demand()? > 0 }))
    }

    type StreamIsActiveStream = BoxStream<ks::IsActiveResponse>;

    async fn stream_is_active(&self, request: Request<ks::ScaledObjectRef>) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        jobs_per_worker(request.get_ref())?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let farm = Arc::clone(&self.farm);
        tokio::spawn(async move {
            let mut stopping = farm.stopping();
            let mut last = None;
            loop {
                let active = match workable(&farm) {
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
        let per_worker = jobs_per_worker(request.get_ref())?;
        let spec = ks::MetricSpec { metric_name: METRIC.into(), target_size: per_worker as i64, target_size_float: per_worker as f64 };
        Ok(Response::new(ks::GetMetricSpecResponse { metric_specs: vec![spec] }))
    }

    async fn get_metrics(&self, request: Request<ks::GetMetricsRequest>) -> Result<Response<ks::GetMetricsResponse>, Status> {
        let r = request.into_inner();
        jobs_per_worker(&r.scaled_object_ref.unwrap_or_default())?;
        if !r.metric_name.is_empty() && r.metric_name != METRIC && !r.metric_name.ends_with(METRIC) {
            return Err(CoordError::invalid("metricName", format!("`{}` is not served here; the metric is `{METRIC}`", r.metric_name)).into());
        }
        let demand = self.demand()?;
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
    fn jobs_per_worker_defaults_to_one_and_names_the_field_when_bad() {
        assert_eq!(jobs_per_worker(&object(&[])).unwrap(), 1);
        assert_eq!(jobs_per_worker(&object(&[("jobsPerWorker", "4")])).unwrap(), 4);
        for bad in ["0", "-1", "two", "100000"] {
            let e = jobs_per_worker(&object(&[("jobsPerWorker", bad)])).unwrap_err().to_string();
            assert!(e.contains("jobsPerWorker"), "{e}");
        }
    }
}
