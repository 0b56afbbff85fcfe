//! Quotas per principal, set per role: how much of the farm one user may hold
//! or ask for, so that nobody starves or exhausts it for the others. Over a
//! quota a call is RESOURCE_EXHAUSTED, naming the quota and its value.
//!
//! | quota | submit (default) | admin (default) |
//! |---|---|---|
//! | `unfinished_jobs`: queued + running jobs at once | 20,000 | no limit |
//! | `jobs_per_batch` | 10,000 | the coordinator's `max_jobs_per_batch` |
//! | `submits_per_minute` (a rolling minute) | 120 | no limit |
//! | `priority_min`..=`priority_max`: a batch's priority | -1000..=100 (lowering one's own is free) | any |
//! | `concurrent_calls`: client API calls open at once (watch streams and downloads count) | 64 | no limit |
//!
//! Set in the config file (`[quotas.submit]`, `[quotas.admin]`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::CoordError;
use crate::identity::{Principal, Role};

/// One role's quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// Queued and running jobs of one principal at once.
    pub unfinished_jobs: u64,
    /// Jobs in one batch (within the coordinator's `max_jobs_per_batch`).
    pub jobs_per_batch: u64,
    /// Submits in any minute.
    pub submits_per_minute: u32,
    /// The priorities a batch may be given, at submit or later.
    pub priority_min: i32,
    pub priority_max: i32,
    /// Client API calls open at once (checked by `crate::gate`).
    pub concurrent_calls: u32,
}

impl Quota {
    /// What a submit token gets unless the config says otherwise.
    pub fn submitter() -> Quota {
        Quota {
            unfinished_jobs: 20_000,
            jobs_per_batch: 10_000,
            submits_per_minute: 120,
            priority_min: crate::validate::PRIORITY_RANGE.0,
            priority_max: 100,
            concurrent_calls: 64,
        }
    }

    /// No limit beyond the coordinator's own.
    pub fn unlimited() -> Quota {
        Quota {
            unfinished_jobs: u64::MAX,
            jobs_per_batch: u64::MAX,
            submits_per_minute: u32::MAX,
            priority_min: i32::MIN,
            priority_max: i32::MAX,
            concurrent_calls: u32::MAX,
        }
    }

    /// The priority `priority` is within this role's range.
    pub fn check_priority(&self, priority: i32) -> Result<(), CoordError> {
        if (self.priority_min..=self.priority_max).contains(&priority) {
            return Ok(());
        }
        Err(exceeded("priority", format!("{}..={}", self.priority_min, self.priority_max), format!("priority {priority} is outside it")))
    }

    /// A batch of `jobs` jobs is within `jobs_per_batch`.
    pub fn check_batch(&self, jobs: usize) -> Result<(), CoordError> {
        if jobs as u64 <= self.jobs_per_batch {
            return Ok(());
        }
        Err(exceeded("jobs_per_batch", self.jobs_per_batch.to_string(), format!("the batch has {jobs} jobs")))
    }

    /// `adding` more jobs on top of `unfinished` stays within `unfinished_jobs`.
    pub fn check_unfinished(&self, unfinished: u64, adding: u64) -> Result<(), CoordError> {
        if unfinished.saturating_add(adding) <= self.unfinished_jobs {
            return Ok(());
        }
        Err(exceeded("unfinished_jobs", self.unfinished_jobs.to_string(), format!("{unfinished} queued or running, {adding} more asked for")))
    }
}

fn exceeded(quota: &'static str, limit: String, detail: String) -> CoordError {
    CoordError::QuotaExceeded { quota, limit, detail }
}

/// The quotas of each role that may submit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "QuotasFile")]
pub struct Quotas {
    pub submit: Quota,
    pub admin: Quota,
}

/// A role's section of the config file: what it leaves out keeps that role's default.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct QuotaFields {
    unfinished_jobs: Option<u64>,
    jobs_per_batch: Option<u64>,
    submits_per_minute: Option<u32>,
    priority_min: Option<i32>,
    priority_max: Option<i32>,
    concurrent_calls: Option<u32>,
}

impl QuotaFields {
    fn over(self, base: Quota) -> Quota {
        Quota {
            unfinished_jobs: self.unfinished_jobs.unwrap_or(base.unfinished_jobs),
            jobs_per_batch: self.jobs_per_batch.unwrap_or(base.jobs_per_batch),
            submits_per_minute: self.submits_per_minute.unwrap_or(base.submits_per_minute),
            priority_min: self.priority_min.unwrap_or(base.priority_min),
            priority_max: self.priority_max.unwrap_or(base.priority_max),
            concurrent_calls: self.concurrent_calls.unwrap_or(base.concurrent_calls),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct QuotasFile {
    submit: QuotaFields,
    admin: QuotaFields,
}

impl From<QuotasFile> for Quotas {
    fn from(file: QuotasFile) -> Quotas {
        Quotas { submit: file.submit.over(Quota::submitter()), admin: file.admin.over(Quota::unlimited()) }
    }
}

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas { submit: Quota::submitter(), admin: Quota::unlimited() }
    }
}

impl Quotas {
    /// The caller's quotas (workers do not submit; theirs are a submitter's).
    pub fn of(&self, caller: &Principal) -> &Quota {
        match caller.role {
            Role::Admin => &self.admin,
            Role::Submit | Role::Worker => &self.submit,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        for (role, q) in [("submit", &self.submit), ("admin", &self.admin)] {
            if q.priority_min > q.priority_max {
                return Err(format!("quotas.{role}: priority_min {} is above priority_max {}", q.priority_min, q.priority_max));
            }
            if q.jobs_per_batch == 0 || q.unfinished_jobs == 0 || q.submits_per_minute == 0 || q.concurrent_calls == 0 {
                return Err(format!("quotas.{role}: unfinished_jobs, jobs_per_batch, submits_per_minute and concurrent_calls must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Principals tracked at most; beyond it the one idle longest is forgotten
/// (it had no submit in the last minute, so it loses nothing).
const MAX_PRINCIPALS: usize = 10_000;

/// Submits per principal in the last minute.
pub struct SubmitRate {
    window: Duration,
    recent: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Default for SubmitRate {
    fn default() -> SubmitRate {
        SubmitRate { window: Duration::from_secs(60), recent: Mutex::new(HashMap::new()) }
    }
}

impl SubmitRate {
    /// Counts a submit by `who` at `now` if it is within `per_minute`, else refuses it.
    pub fn admit(&self, who: &str, per_minute: u32, now: Instant) -> Result<(), CoordError> {
        if per_minute == u32::MAX {
            return Ok(());
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let window = self.window;
        let fresh = |t: &Instant| now.saturating_duration_since(*t) < window;
        if !recent.contains_key(who) && recent.len() >= MAX_PRINCIPALS {
            recent.retain(|_, times| times.back().is_some_and(fresh));
            if recent.len() >= MAX_PRINCIPALS {
                // every tracked principal submitted within the minute: the one quietest longest goes
                if let Some(oldest) = recent.iter().min_by_key(|(_, times)| times.back().copied()).map(|(k, _)| k.clone()) {
                    recent.remove(&oldest);
                }
            }
        }
        let times = recent.entry(who.to_string()).or_default();
        while times.front().is_some_and(|t| !fresh(t)) {
            times.pop_front();
        }
        if times.len() as u64 >= u64::from(per_minute) {
            let again = times.front().map_or(Duration::ZERO, |t| window.saturating_sub(now.saturating_duration_since(*t)));
            return Err(exceeded(
                "submits_per_minute",
                per_minute.to_string(),
                format!("{} submits in the last minute; the next is allowed in {:.1} s", times.len(), again.as_secs_f64()),
            ));
        }
        times.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submitter() -> Principal {
        Principal { name: "ann".into(), role: Role::Submit }
    }

    #[test]
    fn each_quota_names_itself_and_its_value() {
        let q = Quotas::default();
        let mine = q.of(&submitter());
        assert!(mine.check_priority(100).is_ok() && mine.check_priority(-1_000).is_ok(), "lowering one's own is free");
        let e = mine.check_priority(101).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.to_string().contains("quota `priority` (-1000..=100)") && e.to_string().contains("101"), "{e}");
        assert!(q.of(&Principal::local()).check_priority(1_000_000).is_ok(), "admins: any");
        let e = mine.check_batch(10_001).unwrap_err();
        assert!(e.to_string().contains("quota `jobs_per_batch` (10000)"), "{e}");
        assert!(mine.check_unfinished(19_990, 10).is_ok());
        let e = mine.check_unfinished(19_990, 11).unwrap_err();
        assert!(e.to_string().contains("quota `unfinished_jobs` (20000)") && e.to_string().contains("19990 queued or running"), "{e}");
    }

    #[test]
    fn submits_are_counted_over_a_rolling_minute_per_principal() {
        let rate = SubmitRate::default();
        let t0 = Instant::now();
        for i in 0..3 {
            rate.admit("ann", 3, t0 + Duration::from_secs(i)).unwrap();
        }
        let e = rate.admit("ann", 3, t0 + Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().contains("quota `submits_per_minute` (3)") && e.to_string().contains("allowed in 50.0 s"), "{e}");
        rate.admit("bob", 3, t0 + Duration::from_secs(10)).expect("another principal has their own");
        // a minute after the first, one more fits
        rate.admit("ann", 3, t0 + Duration::from_secs(60)).unwrap();
        assert!(rate.admit("ann", 3, t0 + Duration::from_secs(60)).is_err());
    }

    #[test]
    fn the_map_of_principals_is_bounded() {
        let rate = SubmitRate::default();
        let t0 = Instant::now();
        for i in 0..MAX_PRINCIPALS + 5 {
            rate.admit(&format!("p{i}"), 10, t0).unwrap();
        }
        assert_eq!(rate.recent.lock().unwrap().len(), MAX_PRINCIPALS);
    }

    #[test]
    fn a_config_that_cannot_hold_is_refused() {
        let mut q = Quotas::default();
        q.submit.priority_min = 5;
        q.submit.priority_max = 4;
        assert!(q.validate().unwrap_err().contains("quotas.submit"));
        let parsed: Quotas = toml::from_str("[submit]\nunfinished_jobs = 5\n[admin]\nsubmits_per_minute = 600\n").unwrap();
        assert_eq!((parsed.submit.unfinished_jobs, parsed.submit.priority_max), (5, 100), "the rest keep their defaults");
        assert_eq!(parsed.admin, Quota { submits_per_minute: 600, ..Quota::unlimited() }, "an admin's defaults are no limit");
        assert!(toml::from_str::<Quotas>("[submit]\nunfinished = 5\n").is_err(), "a misspelt quota is refused");
    }
}
