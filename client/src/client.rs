//! [`Client`]: a connection to the coordinator with the client's protocol on
//! top: uploads by hash, submit, watch as a `Stream`, wait, fetch. The raw
//! gRPC stub stays reachable ([`Client::coordinator`]) for every other call.

use std::path::Path;
use std::time::Duration;

use futures::{Stream, StreamExt};
use stylefarm_proto as pb;
use stylefarm_proto::connect::{ConnectOptions, Coordinator};

use crate::download::{self, Fetched};
use crate::error::{ClientError, Result};
use crate::follow::{self, Watched, RECONNECT_FOR};
use crate::inputs::{self, Input, Resolved};

/// A connection to a stylefarm coordinator. Cheap to clone (clones share the channel).
#[derive(Clone)]
pub struct Client {
    coordinator: Coordinator,
    reconnect_for: Duration,
}

impl Client {
    /// Connects with `options` (URL, token, CA; see `stylefarm_proto::connect`).
    pub async fn connect(options: &ConnectOptions) -> Result<Client> {
        let endpoint = options.endpoint()?;
        let channel = endpoint.connect().await.map_err(|source| ClientError::Transport { url: options.url.clone(), source })?;
        Ok(Client::from_coordinator(options.coordinator(channel)?))
    }

    /// Over a stub made elsewhere (a shared channel, a test's).
    pub fn from_coordinator(coordinator: Coordinator) -> Client {
        Client { coordinator, reconnect_for: RECONNECT_FOR }
    }

    /// How long a watch keeps reconnecting to a coordinator that went away (default 300 s).
    pub fn with_reconnect_for(mut self, reconnect_for: Duration) -> Client {
        self.reconnect_for = reconnect_for;
        self
    }

    /// The gRPC stub, for the calls this type does not wrap (controls, workers, jobs).
    pub fn coordinator(&mut self) -> &mut Coordinator {
        &mut self.coordinator
    }

    /// Uploads the local files among `inputs` that the coordinator lacks and
    /// returns every input's reference; `is_video` marks clips.
    pub async fn resolve_inputs(&mut self, inputs: &[Input], is_video: &dyn Fn(&Input) -> bool) -> Result<Resolved> {
        inputs::resolve(&mut self.coordinator, inputs, is_video).await
    }

    /// Submits a batch whose inputs are resolved (the current span's trace
    /// context goes with it, so the coordinator's and workers' spans join it).
    pub async fn submit(&mut self, request: pb::SubmitBatchRequest) -> Result<pb::SubmitBatchResponse> {
        let mut request = tonic::Request::new(request);
        stylefarm_core::traces::inject(&tracing::Span::current(), request.metadata_mut());
        Ok(self.coordinator.submit_batch(request).await?.into_inner())
    }

    /// The batch now (with its jobs if `include_jobs`).
    pub async fn batch(&mut self, batch_id: &str, include_jobs: bool) -> Result<pb::GetBatchResponse> {
        let request = pb::GetBatchRequest { batch_id: batch_id.to_string(), include_jobs };
        Ok(self.coordinator.get_batch(request).await?.into_inner())
    }

    /// Every change of the batch until it finishes, reconnecting through outages.
    pub fn watch(&self, batch_id: &str) -> impl Stream<Item = Result<Watched>> + Send + 'static {
        follow::watch(self.coordinator.clone(), batch_id, self.reconnect_for)
    }

    /// Follows the batch to its end, handing each item to `on` (progress
    /// bars), and returns its final record, whatever its state.
    pub async fn follow(&mut self, batch_id: &str, mut on: impl FnMut(&Watched)) -> Result<pb::Batch> {
        let mut stream = std::pin::pin!(self.watch(batch_id));
        let mut last: Option<pb::Batch> = None;
        while let Some(item) = stream.next().await {
            let item = item?;
            if let Watched::Event(event) = &item {
                if let Some(batch) = &event.batch {
                    last = Some(batch.clone());
                }
            }
            on(&item);
        }
        match last {
            Some(batch) if batch.finished_at_ms != 0 => Ok(batch),
            _ => Ok(self.batch(batch_id, false).await?.batch.unwrap_or_default()),
        }
    }

    /// Waits for the batch to finish: `Ok` if every job succeeded, else
    /// [`ClientError::BatchFailed`] (with each failed job's reason) or
    /// [`ClientError::BatchCancelled`]; [`ClientError::Timeout`] after `timeout`.
    pub async fn wait(&mut self, batch_id: &str, timeout: Option<Duration>) -> Result<pb::Batch> {
        let batch = match timeout {
            Some(limit) => tokio::time::timeout(limit, self.follow(batch_id, |_| {}))
                .await
                .map_err(|_| ClientError::Timeout { batch: batch_id.to_string(), timeout: limit })??,
            None => self.follow(batch_id, |_| {}).await?,
        };
        match pb::BatchState::try_from(batch.state) {
            Ok(pb::BatchState::Succeeded) => Ok(batch),
            Ok(pb::BatchState::Cancelled) => Err(ClientError::BatchCancelled(Box::new(batch))),
            _ => {
                let jobs = self.batch(batch_id, true).await?.jobs;
                let failures = jobs.into_iter().filter(|j| j.state == pb::JobState::Failed as i32).map(|j| (j.id, j.error)).collect();
                Err(ClientError::BatchFailed { batch: Box::new(batch), failures })
            }
        }
    }

    /// Downloads every succeeded job's outputs to `out/JOBID-NAME/`.
    pub async fn fetch(&mut self, batch_id: &str, out: &Path) -> Result<Fetched> {
        download::fetch(&mut self.coordinator, batch_id, out).await
    }
}
