//! Submit request ids remembered in memory for a window (the store keeps them
//! for good; a request id older than the window is looked up there).

use std::collections::{HashMap, VecDeque};

use crate::ids::BatchId;
use crate::model::Millis;

pub struct RequestIds {
    window_ms: Millis,
    map: HashMap<String, BatchId>,
    order: VecDeque<(Millis, String)>,
}

impl RequestIds {
    pub fn new(window_ms: Millis) -> RequestIds {
        RequestIds { window_ms, map: HashMap::new(), order: VecDeque::new() }
    }

    pub fn insert(&mut self, request_id: String, batch: BatchId, at: Millis) {
        if self.map.insert(request_id.clone(), batch).is_none() {
            self.order.push_back((at, request_id));
        }
    }

    pub fn get(&self, request_id: &str) -> Option<BatchId> {
        self.map.get(request_id).copied()
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
        let mut r = RequestIds::new(100);
        r.insert("a".into(), BatchId(1), 0);
        r.insert("b".into(), BatchId(2), 50);
        r.expire(100);
        assert_eq!((r.get("a"), r.get("b")), (Some(BatchId(1)), Some(BatchId(2))));
        r.expire(101);
        assert_eq!((r.get("a"), r.get("b"), r.len()), (None, Some(BatchId(2)), 1));
        r.expire(151);
        assert!(r.is_empty());
    }
}
