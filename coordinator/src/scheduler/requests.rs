//! Submit request ids remembered in memory for a window (the store keeps them
//! for good; a request id older than the window is looked up there). An id is
//! its submitter's: the same id from another principal is another request, so
//! nobody can reach (or suppress) another's batch by guessing their ids.

use std::collections::{HashMap, VecDeque};

use crate::ids::BatchId;
use crate::model::Millis;

/// A request id as its submitter sent it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub owner: String,
    pub request_id: String,
}

impl RequestKey {
    pub fn new(owner: &str, request_id: &str) -> RequestKey {
        RequestKey { owner: owner.to_string(), request_id: request_id.to_string() }
    }
}

pub struct RequestIds {
    window_ms: Millis,
    map: HashMap<RequestKey, BatchId>,
    order: VecDeque<(Millis, RequestKey)>,
}

impl RequestIds {
    pub fn new(window_ms: Millis) -> RequestIds {
        RequestIds { window_ms, map: HashMap::new(), order: VecDeque::new() }
    }

    pub fn insert(&mut self, key: RequestKey, batch: BatchId, at: Millis) {
        if self.map.insert(key.clone(), batch).is_none() {
            self.order.push_back((at, key));
        }
    }

    pub fn get(&self, key: &RequestKey) -> Option<BatchId> {
        self.map.get(key).copied()
    }

    /// Forgets ids older than the window.
    pub fn expire(&mut self, now: Millis) {
        while let Some((at, _)) = self.order.front() {
            if now - *at <= self.window_ms {
                break;
            }
            let (_, id) = self.order.pop_front().expect("peeked");
            self.map.remove(&id);
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_forgotten_after_the_window() {
        let (a, b) = (RequestKey::new("ann", "a"), RequestKey::new("ann", "b"));
        let mut r = RequestIds::new(100);
        r.insert(a.clone(), BatchId(1), 0);
        r.insert(b.clone(), BatchId(2), 50);
        r.expire(100);
        assert_eq!((r.get(&a), r.get(&b)), (Some(BatchId(1)), Some(BatchId(2))));
        r.expire(101);
        assert_eq!((r.get(&a), r.get(&b), r.len()), (None, Some(BatchId(2)), 1));
        r.expire(151);
        assert!(r.is_empty());
    }

    #[test]
    fn an_id_belongs_to_its_submitter() {
        let mut r = RequestIds::new(100);
        r.insert(RequestKey::new("ann", "nightly-1"), BatchId(1), 0);
        assert_eq!(r.get(&RequestKey::new("ann", "nightly-1")), Some(BatchId(1)));
        assert_eq!(r.get(&RequestKey::new("bob", "nightly-1")), None, "bob's nightly-1 is another request");
        r.insert(RequestKey::new("bob", "nightly-1"), BatchId(2), 1);
        assert_eq!((r.get(&RequestKey::new("ann", "nightly-1")), r.get(&RequestKey::new("bob", "nightly-1"))), (Some(BatchId(1)), Some(BatchId(2))));
    }
}
