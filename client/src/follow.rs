//! A batch's watch as a `Stream`: the coordinator's WatchBatch events until the
//! batch finishes, reconnecting with backoff (core's retry pacing) when the
//! coordinator goes away (a restart, a rolling update) and giving up only
//! after `reconnect_for`. After a reconnect the coordinator sends every job's
//! state again (SNAPSHOT events), so a follower misses nothing that matters.

use std::time::{Duration, Instant};

use futures::Stream;
use stylefarm_core::retry::Backoff;
use stylefarm_proto as pb;
use stylefarm_proto::connect::Coordinator;
use tonic::codec::Streaming;

use crate::error::{ClientError, Result};

/// How long a watch keeps trying to reach a coordinator that went away.
pub const RECONNECT_FOR: Duration = Duration::from_secs(300);

/// One item of a watch.
#[derive(Debug, Clone)]
pub enum Watched {
    Event(Box<pb::WatchEvent>),
    /// The stream broke; reconnecting (said once per outage).
    Lost(tonic::Status),
    /// Back after an outage; events follow, starting with SNAPSHOTs.
    Reconnected,
}

/// Whether a failed call or stream may succeed against a restarted coordinator.
pub fn transient(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded)
}

struct Follow {
    client: Coordinator,
    batch_id: String,
    stream: Option<Streaming<pb::WatchEvent>>,
    pending: Option<pb::WatchEvent>,
    backoff: Backoff,
    outage: Option<Instant>,
    reconnect_for: Duration,
    done: bool,
}

impl Follow {
    /// After the stream broke with `status`: the item to yield now, if any
    /// (`Lost` at the start of an outage, an error when it is not one or has
    /// lasted too long); `None` to keep reconnecting.
    fn broke(&mut self, status: tonic::Status) -> Option<Result<Watched>> {
        self.stream = None;
        if !transient(&status) {
            self.done = true;
            return Some(Err(status.into()));
        }
        match self.outage {
            None => {
                self.outage = Some(Instant::now());
                Some(Ok(Watched::Lost(status)))
            }
            Some(since) if since.elapsed() > self.reconnect_for => {
                self.done = true;
                Some(Err(ClientError::Unreachable { for_s: self.reconnect_for.as_secs(), last: status }))
            }
            Some(_) => None,
        }
    }

    async fn next(&mut self) -> Option<Result<Watched>> {
        if let Some(event) = self.pending.take() {
            return Some(Ok(self.event(event)));
        }
        if self.done {
            return None;
        }
        loop {
            if self.stream.is_none() {
                if self.outage.is_some() {
                    tokio::time::sleep(self.backoff.next_delay()).await;
                }
                match self.client.watch_batch(pb::WatchBatchRequest { batch_id: self.batch_id.clone() }).await {
                    Ok(response) => self.stream = Some(response.into_inner()),
                    Err(status) => match self.broke(status) {
                        Some(item) => return Some(item),
                        None => continue,
                    },
                }
            }
            let Some(stream) = self.stream.as_mut() else { continue };
            let status = match stream.message().await {
                Ok(Some(event)) => {
                    self.backoff.reset();
                    if self.outage.take().is_some() {
                        self.pending = Some(event);
                        return Some(Ok(Watched::Reconnected));
                    }
                    return Some(Ok(self.event(event)));
                }
                // a stream that ends before the batch does: the coordinator stopped
                Ok(None) => tonic::Status::unavailable("the watch stream ended"),
                Err(status) => status,
            };
            if let Some(item) = self.broke(status) {
                return Some(item);
            }
        }
    }

    fn event(&mut self, event: pb::WatchEvent) -> Watched {
        if event.kind == pb::EventKind::BatchFinished as i32 {
            self.done = true;
        }
        Watched::Event(Box::new(event))
    }
}

/// The watch of `batch_id` as a stream; it ends after the BATCH_FINISHED event.
pub fn watch(client: Coordinator, batch_id: &str, reconnect_for: Duration) -> impl Stream<Item = Result<Watched>> + Send + 'static {
    let follow =
        Follow { client, batch_id: batch_id.to_string(), stream: None, pending: None, backoff: Backoff::default(), outage: None, reconnect_for, done: false };
    futures::stream::unfold(follow, |mut follow| async move { follow.next().await.map(|item| (item, follow)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_outages_are_retried() {
        assert!(transient(&tonic::Status::unavailable("down")));
        assert!(transient(&tonic::Status::unknown("transport error")));
        assert!(!transient(&tonic::Status::not_found("no batch")));
        assert!(!transient(&tonic::Status::permission_denied("no")));
        assert!(!transient(&tonic::Status::unauthenticated("no")));
    }
}
