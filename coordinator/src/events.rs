//! Watch events fan out per batch: a broadcast channel per watched batch, made
//! with the first watcher and dropped with the last ([`Watch`]'s drop), so a
//! batch nobody watches holds nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use stylefarm_proto as pb;
use tokio::sync::broadcast;

use crate::ids::BatchId;

/// Events a slow watcher may fall behind by before it is sent a fresh snapshot.
const CHANNEL_CAPACITY: usize = 1024;

type Channels = Mutex<HashMap<BatchId, broadcast::Sender<pb::WatchEvent>>>;

/// Events every batch's followers may fall behind by (the dashboard's
/// farm-wide stream).
const ALL_CAPACITY: usize = 4096;

pub struct Hub {
    channels: Arc<Channels>,
    /// Every batch's events, for the dashboard; only rendered while subscribed
    /// (shared, not copied, by its receivers).
    all: broadcast::Sender<Arc<pb::WatchEvent>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub { channels: Arc::default(), all: broadcast::channel(ALL_CAPACITY).0 }
    }
}

/// One watcher's subscription; dropping it frees the batch's channel if it was
/// the last.
pub struct Watch {
    pub events: broadcast::Receiver<pb::WatchEvent>,
    batch: BatchId,
    channels: Arc<Channels>,
}

fn lock(channels: &Channels) -> MutexGuard<'_, HashMap<BatchId, broadcast::Sender<pb::WatchEvent>>> {
    // the map holds no invariant a panic could break halfway
    channels.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut channels = lock(&self.channels);
        // this receiver is still counted until the end of drop
        if channels.get(&self.batch).is_some_and(|c| c.receiver_count() <= 1) {
            channels.remove(&self.batch);
        }
    }
}

impl Hub {
    /// Subscribes to a batch the caller has checked exists.
    pub fn subscribe(&self, batch: BatchId) -> Watch {
        let mut channels = lock(&self.channels);
        let events = channels.entry(batch).or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0).subscribe();
        Watch { events, batch, channels: Arc::clone(&self.channels) }
    }

    /// Every batch's events from now on (a lagging receiver skips ahead).
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<pb::WatchEvent>> {
        self.all.subscribe()
    }

    pub fn is_watched(&self, batch: BatchId) -> bool {
        self.all.receiver_count() > 0 || lock(&self.channels).get(&batch).is_some_and(|c| c.receiver_count() > 0)
    }

    pub fn publish(&self, batch: BatchId, event: pb::WatchEvent) {
        let channels = lock(&self.channels);
        let watchers = channels.get(&batch);
        if self.all.receiver_count() == 0 {
            if let Some(sender) = watchers {
                let _ = sender.send(event);
            }
            return;
        }
        // copied only when both a batch's watchers and the farm-wide stream want it
        let shared = match watchers {
            Some(sender) => {
                let _ = sender.send(event.clone());
                Arc::new(event)
            }
            None => Arc::new(event),
        };
        let _ = self.all.send(shared);
    }

    /// Batches with a channel now.
    pub fn channels(&self) -> usize {
        lock(&self.channels).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_watcher_leaving_frees_the_channel() {
        let hub = Hub::default();
        let a = hub.subscribe(BatchId(1));
        let b = hub.subscribe(BatchId(1));
        let c = hub.subscribe(BatchId(2));
        assert_eq!(hub.channels(), 2);
        drop(a);
        assert!(hub.is_watched(BatchId(1)));
        drop(b);
        assert!(!hub.is_watched(BatchId(1)));
        assert_eq!(hub.channels(), 1);
        drop(c);
        assert_eq!(hub.channels(), 0);
        hub.publish(BatchId(1), pb::WatchEvent::default());
        assert_eq!(hub.channels(), 0, "publishing to nobody allocates nothing");
    }

    #[test]
    fn the_farm_wide_stream_sees_every_batch_and_makes_them_watched() {
        let hub = Hub::default();
        assert!(!hub.is_watched(BatchId(3)));
        let mut all = hub.subscribe_all();
        assert!(hub.is_watched(BatchId(3)), "events are rendered while the dashboard follows the farm");
        hub.publish(BatchId(3), pb::WatchEvent { at_ms: 3, ..Default::default() });
        hub.publish(BatchId(4), pb::WatchEvent { at_ms: 4, ..Default::default() });
        assert_eq!(all.try_recv().unwrap().at_ms, 3);
        assert_eq!(all.try_recv().unwrap().at_ms, 4);
        assert_eq!(hub.channels(), 0, "no per-batch channel was made");
        drop(all);
        assert!(!hub.is_watched(BatchId(3)));
    }
}
