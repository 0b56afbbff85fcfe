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
//! | `unfinished_mpx_iterations`: pixels × iterations of queued + running jobs, in millions | 2,000,000 | no limit |
//! | `request_mib_in_flight`: request bytes of open client calls, in MiB (checked by `crate::gate`) | 256 | no limit |
//!
//! Set in the config file per role (`[quotas.submit]`, `[quotas.admin]`),
//! and per token over its role's (`[quotas.tokens.NAME]`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::CoordError;
use crate::identity::{Principal, Role};
use crate::model::Load;

/// Pixels × iterations in the unit the quota is set in (Mpx·it).
const MPX: u64 = 1_000_000;

/// One role's quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Pixels × iterations of queued and running jobs at once, in millions
    /// (a 512 px, 500-iteration render is about 170).
    pub unfinished_mpx_iterations: u64,
    /// MiB of request bytes a principal's open client calls may hold (a
    /// submit is at most 64, an upload at most `max_upload_bytes`).
    pub request_mib_in_flight: u64,
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
            unfinished_mpx_iterations: 2_000_000,
            request_mib_in_flight: 256,
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
            unfinished_mpx_iterations: u64::MAX,
            request_mib_in_flight: u64::MAX,
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

    /// `adding` on top of `unfinished` stays within `unfinished_jobs` and
    /// `unfinished_mpx_iterations`.
    pub fn check_unfinished(&self, unfinished: Load, adding: Load) -> Result<(), CoordError> {
        if unfinished.jobs.saturating_add(adding.jobs) > self.unfinished_jobs {
            return Err(exceeded(
                "unfinished_jobs",
                self.unfinished_jobs.to_string(),
                format!("{} queued or running, {} more asked for", unfinished.jobs, adding.jobs),
            ));
        }
        if unfinished.work.saturating_add(adding.work) > self.unfinished_mpx_iterations.saturating_mul(MPX) {
            let mpx = |work: u64| work.div_ceil(MPX);
            return Err(exceeded(
                "unfinished_mpx_iterations",
                self.unfinished_mpx_iterations.to_string(),
                format!("{} Mpx·iterations queued or running, {} more asked for", mpx(unfinished.work), mpx(adding.work)),
            ));
        }
        Ok(())
    }
}

fn exceeded(quota: &'static str, limit: String, detail: String) -> CoordError {
    CoordError::QuotaExceeded { quota, limit, detail }
}

/// The quotas of each role that may submit, and of single tokens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "QuotasFile")]
pub struct Quotas {
    pub submit: Quota,
    pub admin: Quota,
    /// A token's own quotas (by its name), over its role's.
    pub tokens: BTreeMap<String, QuotaFields>,
}

/// A section of the config file: what it leaves out keeps the default
/// (the role's, for a role; the token's role's, for a token).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaFields {
    pub unfinished_jobs: Option<u64>,
    pub jobs_per_batch: Option<u64>,
    pub submits_per_minute: Option<u32>,
    pub priority_min: Option<i32>,
    pub priority_max: Option<i32>,
    pub concurrent_calls: Option<u32>,
    pub unfinished_mpx_iterations: Option<u64>,
    pub request_mib_in_flight: Option<u64>,
}

impl QuotaFields {
    fn over(&self, base: Quota) -> Quota {
        Quota {
            unfinished_jobs: self.unfinished_jobs.unwrap_or(base.unfinished_jobs),
            jobs_per_batch: self.jobs_per_batch.unwrap_or(base.jobs_per_batch),
            submits_per_minute: self.submits_per_minute.unwrap_or(base.submits_per_minute),
            priority_min: self.priority_min.unwrap_or(base.priority_min),
            priority_max: self.priority_max.unwrap_or(base.priority_max),
            concurrent_calls: self.concurrent_calls.unwrap_or(base.concurrent_calls),
            unfinished_mpx_iterations: self.unfinished_mpx_iterations.unwrap_or(base.unfinished_mpx_iterations),
            request_mib_in_flight: self.request_mib_in_flight.unwrap_or(base.request_mib_in_flight),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct QuotasFile {
    submit: QuotaFields,
    admin: QuotaFields,
    tokens: BTreeMap<String, QuotaFields>,
}

impl From<QuotasFile> for Quotas {
    fn from(file: QuotasFile) -> Quotas {
        Quotas { submit: file.submit.over(Quota::submitter()), admin: file.admin.over(Quota::unlimited()), tokens: file.tokens }
    }
}

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas { submit: Quota::submitter(), admin: Quota::unlimited(), tokens: BTreeMap::new() }
    }
}

impl Quotas {
    /// The caller's quotas: its token's own over its role's (workers do not
    /// submit; theirs are a submitter's).
    pub fn of(&self, caller: &Principal) -> Quota {
        let role = match caller.role {
            Role::Admin => self.admin,
            Role::Submit | Role::Worker => self.submit,
        };
        self.tokens.get(&caller.name).map_or(role, |own| own.over(role))
    }

    pub fn validate(&self) -> Result<(), String> {
        let roles = [("quotas.submit".to_string(), self.submit), ("quotas.admin".to_string(), self.admin)];
        // a token's quotas are checked over either role it may have
        let tokens = self.tokens.iter().flat_map(|(name, own)| [self.submit, self.admin].map(|role| (format!("quotas.tokens.{name}"), own.over(role))));
        for (section, q) in roles.into_iter().chain(tokens) {
            if q.priority_min > q.priority_max {
                return Err(format!("{section}: priority_min {} is above priority_max {}", q.priority_min, q.priority_max));
            }
            let zero = [
                q.jobs_per_batch,
                q.unfinished_jobs,
                u64::from(q.submits_per_minute),
                u64::from(q.concurrent_calls),
                q.unfinished_mpx_iterations,
                q.request_mib_in_flight,
            ];
            if zero.contains(&0) {
                return Err(format!(
                    "{section}: unfinished_jobs, jobs_per_batch, submits_per_minute, concurrent_calls, unfinished_mpx_iterations and request_mib_in_flight must be at least 1"
                ));
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
        let jobs = |jobs| Load { jobs, work: 0 };
        assert!(mine.check_unfinished(jobs(19_990), jobs(10)).is_ok());
        let e = mine.check_unfinished(jobs(19_990), jobs(11)).unwrap_err();
        assert!(e.to_string().contains("quota `unfinished_jobs` (20000)") && e.to_string().contains("19990 queued or running"), "{e}");
        let work = |mpx: u64| Load { jobs: 1, work: mpx * MPX };
        assert!(mine.check_unfinished(work(1_999_000), work(1_000)).is_ok());
        let e = mine.check_unfinished(work(1_999_000), work(1_001)).unwrap_err();
        assert!(
            e.to_string().contains("quota `unfinished_mpx_iterations` (2000000)")
                && e.to_string().contains("1999000 Mpx·iterations queued or running, 1001 more"),
            "{e}"
        );
        assert!(q.of(&Principal::local()).check_unfinished(work(u64::MAX / MPX), work(u64::MAX / MPX)).is_ok(), "admins: no limit, no overflow");
    }

    #[test]
    fn a_token_has_its_own_quotas_over_its_roles() {
        let q: Quotas = toml::from_str(
            "[submit]\nunfinished_jobs = 50\n[tokens.render-night]\nunfinished_jobs = 5000\nconcurrent_calls = 8\n[tokens.ops]\npriority_max = 5\n",
        )
        .unwrap();
        let night = Principal { name: "render-night".into(), role: Role::Submit };
        assert_eq!(q.of(&night), Quota { unfinished_jobs: 5000, concurrent_calls: 8, ..Quota::submitter() });
        assert_eq!(q.of(&submitter()).unfinished_jobs, 50, "others keep their role's");
        let ops = Principal { name: "ops".into(), role: Role::Admin };
        assert_eq!(q.of(&ops), Quota { priority_max: 5, ..Quota::unlimited() }, "over the admin role's no-limit");
        assert!(q.of(&ops).check_priority(6).is_err());
        assert!(q.validate().is_ok());
        let bad: Quotas = toml::from_str("[tokens.x]\npriority_min = 10\npriority_max = 0\n").unwrap();
        assert!(bad.validate().unwrap_err().contains("quotas.tokens.x"), "{:?}", bad.validate());
        let zero: Quotas = toml::from_str("[tokens.x]\nconcurrent_calls = 0\n").unwrap();
        assert!(zero.validate().is_err());
        assert!(toml::from_str::<Quotas>("[tokens.x]\nconcurent_calls = 3\n").is_err(), "a misspelt quota is refused");
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
        assert_eq!(Quota::submitter().unfinished_mpx_iterations, 2_000_000);
        assert!(toml::from_str::<Quotas>("[submit]\nunfinished = 5\n").is_err(), "a misspelt quota is refused");
    }
}
