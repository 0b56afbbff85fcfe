//! The wall clock, in milliseconds since the Unix epoch: the one time source of
//! the coordinator's state (leases, backoff, retention). A leaf module.

use crate::model::Millis;

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}
