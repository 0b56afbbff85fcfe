//! Watch events fan out per batch: a broadcast channel per watched batch, made
//! on the first subscriber and dropped with the last.

use std::collections::HashMap;
use std::sync::Mutex;

use stylefarm_proto as pb;
use tokio::sync::broadcast;

use crate::ids::BatchId;

/// Events a slow watcher may fall behind by before it is sent a fresh snapshot.
const CHANNEL_CAPACITY: usize = 1024;

#[derive(Default)]
pub struct Hub {
    channels: Mutex<HashMap<BatchId, broadcast::Sender<pb::WatchEvent>>>,
}

impl Hub {
    pub fn subscribe(&self, batch: BatchId) -> broadcast::Receiver<pb::WatchEvent> {
        let mut channels = self.channels.lock().expect("hub lock");
        channels.entry(batch).or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0).subscribe()
    }

    pub fn is_watched(&self, batch: BatchId) -> bool {
        let channels = self.channels.lock().expect("hub lock");
        channels.get(&batch).is_some_and(|c| c.receiver_count() > 0)
    }

    pub fn publish(&self, batch: BatchId, event: pb::WatchEvent) {
        let mut channels = self.channels.lock().expect("hub lock");
        let Some(sender) = channels.get(&batch) else { return };
        if sender.send(event).is_err() {
            channels.remove(&batch);
        }
    }
}
