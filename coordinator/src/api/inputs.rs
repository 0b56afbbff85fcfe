//! What a caller may name as a job's inputs: their own uploads (by hash),
//! objects of the store that are theirs (their uploads, their batches'
//! outputs, so one batch's output can feed the next), and URLs under the
//! operator's allowlist. Worked out once per submit, before validation, so
//! that validation stays synchronous and outside the scheduler's lock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use stylefarm_core::policy::InputPlace;
use stylefarm_proto as pb;

use crate::error::{CoordError, Result};
use crate::farm::Farm;
use crate::identity::Principal;
use crate::ids::BatchId;

/// Distinct batches one submit may take outputs from.
const MAX_SOURCE_BATCHES: usize = 1_000;

/// The request's inputs this caller may use.
#[derive(Debug, Default)]
pub struct CallerInputs {
    pub uploads: HashSet<String>,
    pub store_keys: HashSet<String>,
}

fn refs(req: &pb::SubmitBatchRequest) -> impl Iterator<Item = &pb::ImageRef> {
    let jobs = req.jobs.iter().flat_map(|j| j.content.iter().chain(j.styles.iter()));
    let cartesian = req.cartesian.iter().flat_map(|c| c.contents.iter().chain(c.styles.iter()));
    let video = req.video.iter().flat_map(|v| v.video.iter().chain(v.styles.iter()));
    jobs.chain(cartesian).chain(video)
}

impl CallerInputs {
    pub async fn of(farm: &Arc<Farm>, caller: &Principal, req: &pb::SubmitBatchRequest) -> Result<CallerInputs> {
        let mut shas = Vec::new();
        let mut keys = Vec::new();
        for source in refs(req).filter_map(|r| r.source.as_ref()) {
            match source {
                pb::image_ref::Source::Sha256(sha) => shas.push(sha.to_ascii_lowercase()),
                // a URL the policy refuses is refused by validation, with its reason
                pb::image_ref::Source::Url(url) => {
                    if let Ok(InputPlace::Store { key }) = farm.config.submit.inputs.classify(url) {
                        keys.push(key);
                    }
                }
            }
        }
        let mut inputs = CallerInputs::default();
        let (uploads, key_uploads) = farm.read(|s| {
            let uploads: HashSet<String> = shas.into_iter().filter(|sha| s.may_use_image(caller, sha)).collect();
            let key_uploads: HashSet<String> =
                keys.iter().filter(|k| k.strip_prefix("images/sha256/").is_some_and(|sha| s.may_use_image(caller, sha))).cloned().collect();
            (uploads, key_uploads)
        })?;
        inputs.uploads = uploads;
        inputs.store_keys = key_uploads;
        let mut batches: HashMap<BatchId, bool> = HashMap::new();
        for key in keys {
            let Some(batch) = source_batch(&key) else {
                if caller.is_admin() {
                    inputs.store_keys.insert(key);
                }
                continue;
            };
            if !batches.contains_key(&batch) {
                if batches.len() == MAX_SOURCE_BATCHES {
                    return Err(CoordError::invalid("jobs", format!("inputs from more than {MAX_SOURCE_BATCHES} batches; the limit is {MAX_SOURCE_BATCHES}")));
                }
                // NOT_FOUND for another's batch and a missing one alike: both refused the same way
                let theirs = farm.batch_record(batch, caller).await.is_ok();
                batches.insert(batch, theirs);
            }
            if batches[&batch] {
                inputs.store_keys.insert(key);
            }
        }
        Ok(inputs)
    }
}

/// The batch whose outputs `key` is one of (`batches/b7/jobs/...`).
fn source_batch(key: &str) -> Option<BatchId> {
    let id = key.strip_prefix("batches/")?.split('/').next()?;
    BatchId::parse(id, "key").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_its_batch() {
        assert_eq!(source_batch("batches/b7/jobs/j3/attempt-1/output.png"), Some(BatchId(7)));
        assert_eq!(source_batch("batches/x/jobs/j3/output.png"), None);
        assert_eq!(source_batch("images/sha256/ab"), None);
        assert_eq!(source_batch("batches/"), None);
    }
}
