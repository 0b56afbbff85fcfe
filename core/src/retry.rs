//! The one retry pacing of the project's network calls (registration, leases,
//! reports, downloads, uploads, a client's watch stream): wait 200 ms, doubling
//! after each failure, never more than 5 s; a success starts over. Callers
//! decide what is worth retrying and for how long; this says how long to wait.

use std::time::Duration;

/// Delays between tries: `first`, doubling, capped at `max`. Used two ways:
/// a loop walks it with [`Backoff::next_delay`], and the coordinator's job
/// retries (a schedule by attempt number, stored nowhere) ask
/// [`Backoff::delay_after`] directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    /// Failures in a row so far (what `next_delay` has walked).
    failures: u32,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(200);
    pub const MAX: Duration = Duration::from_secs(5);

    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max, failures: 0 }
    }

    pub const fn first(&self) -> Duration {
        self.first
    }

    pub const fn max(&self) -> Duration {
        self.max
    }

    /// The wait after `failures` failures in a row (counting from 1): `first`
    /// after the first, twice that after the second, never more than `max`.
    pub fn delay_after(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        self.first.saturating_mul(1 << exponent).min(self.max)
    }

    /// How long to wait before the next try; the one after waits twice as long (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.delay_after(self.failures)
    }

    /// A try succeeded: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(Backoff::FIRST, Backoff::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_200_ms_to_a_5_s_cap_and_starts_over_on_reset() {
        let mut b = Backoff::default();
        let ms: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(200));
    }

    #[test]
    fn a_schedule_by_attempt_number_is_the_same_walk_and_never_overflows() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!([1, 2, 3].map(|n| b.delay_after(n).as_secs()), [1, 2, 4]);
        assert_eq!(b.delay_after(0), Duration::from_secs(1));
        assert_eq!(b.delay_after(u32::MAX), Duration::from_secs(60));
        let mut walked = b;
        assert!((1..=10).all(|n| walked.next_delay() == b.delay_after(n)));
    }
}
