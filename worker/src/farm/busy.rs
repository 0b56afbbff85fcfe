//! How busy a device is: the time it spends in engine work (inside the
//! optimiser, weights already loaded, inputs already decoded) over wall time.
//! One clock per device, shared by its runners (`--jobs-per-device`): the
//! device is busy while at least one of them is in the engine.
//!
//! Read as a trailing window (the Workers page, `/metrics`, each job's
//! metadata) and as a running total (`stylefarm_device_engine_seconds_total`,
//! whose `rate()` is the same fraction over any window Prometheus likes).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The window the busy fraction is read over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Closed busy intervals kept for the window at most (the oldest go first).
const MAX_INTERVALS: usize = 4096;

pub struct BusyClock {
    inner: Mutex<Inner>,
}

struct Inner {
    /// When the clock began (a window never reaches before it).
    began: Instant,
    /// Runners in the engine now, and since when at least one has been.
    active: u32,
    since: Instant,
    /// Busy time in closed intervals, all told.
    total: Duration,
    /// Closed intervals that may still overlap the window, oldest first.
    recent: VecDeque<(Instant, Instant)>,
}

/// Held while a runner is in the engine; dropping it ends the busy interval.
pub struct Busy {
    clock: Arc<BusyClock>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.clock.exit(Instant::now());
    }
}

impl BusyClock {
    pub fn new(now: Instant) -> Arc<BusyClock> {
        Arc::new(BusyClock { inner: Mutex::new(Inner { began: now, active: 0, since: now, total: Duration::ZERO, recent: VecDeque::new() }) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A runner enters the engine until the guard drops.
    pub fn enter(self: &Arc<Self>) -> Busy {
        self.enter_at(Instant::now());
        Busy { clock: Arc::clone(self) }
    }

    fn enter_at(&self, now: Instant) {
        let mut inner = self.lock();
        if inner.active == 0 {
            inner.since = now;
        }
        inner.active += 1;
    }

    fn exit(&self, now: Instant) {
        let mut inner = self.lock();
        inner.active = inner.active.saturating_sub(1);
        if inner.active > 0 {
            return;
        }
        let since = inner.since;
        inner.total += now.saturating_duration_since(since);
        if inner.recent.len() == MAX_INTERVALS {
            inner.recent.pop_front();
        }
        inner.recent.push_back((since, now));
        while inner.recent.front().is_some_and(|(_, end)| now.saturating_duration_since(*end) > WINDOW) {
            inner.recent.pop_front();
        }
    }

    /// Busy time since the clock began, the open interval included.
    pub fn total(&self, now: Instant) -> Duration {
        let inner = self.lock();
        let open = if inner.active > 0 { now.saturating_duration_since(inner.since) } else { Duration::ZERO };
        inner.total + open
    }

    /// Busy time over wall time in the last [`WINDOW`] (or since the clock
    /// began, if that is shorter); 0 before any wall time has passed.
    pub fn fraction(&self, now: Instant) -> f64 {
        let inner = self.lock();
        let from = now.checked_sub(WINDOW).map_or(inner.began, |t| t.max(inner.began));
        let wall = now.saturating_duration_since(from);
        if wall.is_zero() {
            return 0.0;
        }
        let overlap = |start: Instant, end: Instant| end.min(now).saturating_duration_since(start.max(from));
        let mut busy: Duration = inner.recent.iter().map(|(s, e)| overlap(*s, *e)).sum();
        if inner.active > 0 {
            busy += overlap(inner.since, now);
        }
        (busy.as_secs_f64() / wall.as_secs_f64()).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn busy_over_wall_since_the_clock_began() {
        let t0 = Instant::now();
        let clock = BusyClock::new(t0);
        assert_eq!(clock.fraction(t0), 0.0);
        clock.enter_at(t0 + ms(100));
        clock.exit(t0 + ms(900));
        assert!((clock.fraction(t0 + ms(1000)) - 0.8).abs() < 1e-9);
        assert_eq!(clock.total(t0 + ms(1000)), ms(800));
        // the open interval counts while it lasts
        clock.enter_at(t0 + ms(1000));
        assert!((clock.fraction(t0 + ms(2000)) - 0.9).abs() < 1e-9);
        assert_eq!(clock.total(t0 + ms(2000)), ms(1800));
    }

    #[test]
    fn overlapping_runners_count_once() {
        let t0 = Instant::now();
        let clock = BusyClock::new(t0);
        clock.enter_at(t0);
        clock.enter_at(t0 + ms(200));
        clock.exit(t0 + ms(500));
        clock.exit(t0 + ms(600));
        assert_eq!(clock.total(t0 + ms(1000)), ms(600));
        assert!((clock.fraction(t0 + ms(1000)) - 0.6).abs() < 1e-9);
    }

    #[test]
    fn only_the_window_counts() {
        let t0 = Instant::now();
        let clock = BusyClock::new(t0);
        // busy for the first 60 s, idle for the next 30 s: half of the last minute
        clock.enter_at(t0);
        clock.exit(t0 + WINDOW);
        let later = t0 + WINDOW + WINDOW / 2;
        assert!((clock.fraction(later) - 0.5).abs() < 1e-9, "{}", clock.fraction(later));
        // a minute of idleness later the old interval is gone
        let idle = t0 + WINDOW * 3;
        clock.enter_at(idle);
        clock.exit(idle);
        assert_eq!(clock.fraction(idle), 0.0);
        assert_eq!(clock.lock().recent.len(), 1, "intervals outside the window are dropped");
        assert_eq!(clock.total(idle), WINDOW, "the running total keeps them");
    }

    #[test]
    fn the_guard_ends_the_interval() {
        let clock = BusyClock::new(Instant::now());
        {
            let _busy = clock.enter();
            assert_eq!(clock.lock().active, 1);
        }
        assert_eq!(clock.lock().active, 0);
        assert_eq!(clock.lock().recent.len(), 1);
    }
}
