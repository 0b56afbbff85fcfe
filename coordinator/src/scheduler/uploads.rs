//! Uploads retention removes: the scheduler's side. Retention reads from the
//! store which uploads no batch uses ([`crate::store::Store::unused_uploads`]);
//! under the scheduler's lock they are then forgotten unless a job held in
//! memory reads one (a submit that got in first), and a submit checks under
//! the same lock that its uploads are still there (one that comes after), so
//! no job is ever given an upload whose bytes are being removed.

use super::{Effects, Scheduler};
use crate::error::{CoordError, Result};
use crate::model::{ImageSource, NewBatch};
use crate::store::StoreOp;

impl Scheduler {
    /// Forgets the `candidates` no job in memory reads (their rows go with
    /// the commit); returns those forgotten, whose bytes may then be deleted.
    pub fn forget_uploads(&mut self, candidates: Vec<String>, fx: &mut Effects) -> Vec<String> {
        if candidates.is_empty() {
            return candidates;
        }
        let mut forgotten: std::collections::HashSet<String> = candidates.into_iter().collect();
        for job in self.jobs.values() {
            for source in std::iter::once(&job.content).chain(&job.styles) {
                if let ImageSource::Blob(sha) = source {
                    forgotten.remove(sha);
                }
            }
        }
        let forgotten: Vec<String> = forgotten.into_iter().collect();
        for sha in &forgotten {
            self.images.remove(sha);
            self.image_refs.remove(sha);
            fx.ops.push(StoreOp::ForgetUpload(sha.clone()));
        }
        forgotten
    }

    /// Refuses a batch naming an upload that is no longer stored (retention
    /// removed it after the submit's own check), naming the field.
    pub fn check_uploads(&self, new: &NewBatch) -> Result<()> {
        for (i, job) in new.jobs.iter().enumerate() {
            let fields = std::iter::once(("content".to_string(), &job.content)).chain(job.styles.iter().enumerate().map(|(k, s)| (format!("styles[{k}]"), s)));
            for (field, source) in fields {
                if let ImageSource::Blob(sha) = source {
                    if !self.images.contains(sha) {
                        return Err(CoordError::invalid(
                            format!("jobs[{i}].{field}"),
                            format!("the upload sha256:{sha} was removed (retention); upload it again"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures;
    use crate::scheduler::SchedulerConfig;
    use crate::store::{ImageRecord, Snapshot};

    fn image(sha: &str) -> ImageRecord {
        ImageRecord { sha256: sha.into(), size_bytes: 1, width: 1, height: 1, format: "png".into(), created_ms: 0 }
    }

    #[test]
    fn an_upload_a_live_job_reads_is_kept_and_a_submit_naming_a_forgotten_one_is_refused() {
        let snapshot = Snapshot { next_batch: 1, next_job: 1, next_worker: 1, ..Snapshot::default() };
        let mut s = Scheduler::restore(SchedulerConfig::default(), snapshot, 0);
        let (used, unused) = ("a".repeat(64), "c".repeat(64));
        let mut fx = Effects::default();
        for sha in [&used, &unused, &"b".repeat(64)] {
            s.add_image(image(sha), "alice", &mut fx);
        }
        let new = fixtures::new_batch(ImageSource::Blob(used.clone()), ImageSource::Blob("b".repeat(64)));
        s.check_uploads(&new).unwrap();
        s.submit(new, "alice", 0, &mut fx, &mut || "t".into());
        let mut fx = Effects::default();
        let forgotten = s.forget_uploads(vec![used.clone(), unused.clone()], &mut fx);
        assert_eq!(forgotten, vec![unused.clone()], "the other is read by a live job");
        assert_eq!(fx.ops.len(), 1);
        assert!(matches!(&fx.ops[0], StoreOp::ForgetUpload(sha) if *sha == unused));
        assert!(!s.has_image(&unused) && s.has_image(&used));
        let late = fixtures::new_batch(ImageSource::Blob(used.clone()), ImageSource::Blob(unused.clone()));
        let e = s.check_uploads(&late).unwrap_err().to_string();
        assert!(e.contains("jobs[0].styles[0]") && e.contains("upload it again"), "{e}");
    }
}
