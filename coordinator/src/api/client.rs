//! `stylefarm.v1.Coordinator`: what users call.

use std::io::Cursor;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use opentelemetry::trace::TraceContextExt;
use sha2::{Digest, Sha256};
use stylefarm_proto as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::inputs::CallerInputs;
use crate::auth::Api;
use crate::clock::now_ms;
use crate::convert;
use crate::error::CoordError;
use crate::farm::Farm;
use crate::identity::Principal;
use crate::ids::{BatchId, JobId, WorkerId};
use crate::keys::image_key;
use crate::model::JobState;
use crate::model::{Load, NewBatch};
use crate::scheduler::{DeleteMode, PauseMode, RetryTarget, WorkerAction};
use crate::store::ImageRecord;
use crate::validate;

/// Largest side and pixel count of an uploaded image.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
pub const MAX_IMAGE_PIXELS: u64 = 100_000_000;
const DOWNLOAD_CHUNK: usize = 1 << 20;

pub struct ClientApi {
    farm: Arc<Farm>,
    /// Submits per principal in the last minute (the `submits_per_minute` quota).
    submit_rate: crate::quota::SubmitRate,
}

impl ClientApi {
    pub fn new(farm: Arc<Farm>) -> ClientApi {
        ClientApi { farm, submit_rate: Default::default() }
    }

    fn caller<T>(&self, request: &Request<T>, api: Api) -> Result<Principal, CoordError> {
        self.farm.auth.authenticate(request, api)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn new_trace_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for ClientApi {
    #[tracing::instrument(skip_all, fields(principal, batch_id, jobs))]
    async fn submit_batch(&self, request: Request<pb::SubmitBatchRequest>) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let caller = self.caller(&request, Api::Client)?;
        tracing::Span::current().record("principal", caller.name.as_str());
        let req = request.into_inner();
        let farm = Arc::clone(&self.farm);
        // an id beyond the in-memory window: the store remembers it
        if !req.request_id.is_empty() && farm.read(|s| s.batch_for_request(&caller.name, &req.request_id))?.is_none() {
            if let Some(batch) = farm.stored_request(caller.name.clone(), req.request_id.clone()).await? {
                let (_, jobs) = farm.batch_with_jobs(batch, &caller).await?;
                tracing::info!(batch_id = %batch, "batch submitted before (request id from the store)");
                return Ok(Response::new(pb::SubmitBatchResponse {
                    batch_id: batch.to_string(),
                    job_ids: jobs.into_iter().map(|j| j.id).collect(),
                    deduplicated: true,
                }));
            }
        }
        let quota = farm.config.quotas.of(&caller);
        // every submit counts toward the rate, refused or not
        self.submit_rate.admit(&caller.name, quota.submits_per_minute, std::time::Instant::now())?;
        quota.check_priority(req.priority)?;
        // what this caller may name as inputs, worked out first, so validation runs outside the lock
        let known = CallerInputs::of(&farm, &caller, &req).await?;
        let (mut new, video) = {
            let (upload, store_key) = (|sha: &str| known.uploads.contains(sha), |key: &str| known.store_keys.contains(key));
            let access = validate::InputAccess { upload: &upload, store_key: &store_key };
            let new: NewBatch = validate::submit(&req, &access, &farm.config.submit)?;
            (new, req.video.as_ref().map(|spec| crate::video::check(spec, &access, &farm.config.submit)).transpose()?)
        };
        if let Some(video) = video {
            // the clip is probed before any job exists: a bad one is refused here
            let probe = crate::video::probe(&farm, &video.source).await?;
            new.jobs = crate::video::jobs(&video, &probe, &farm.config.submit, req.job_time_limit_s)?;
            tracing::info!(frames = probe.frames, width = probe.width, height = probe.height, fps = probe.fps(), jobs = new.jobs.len(), "video planned");
        }
        // a print larger than a device becomes tiles (its content's size read from the store)
        crate::tiling::expand(&farm, &mut new, req.job_time_limit_s).await?;
        quota.check_batch(new.jobs.len())?;
        let owner = caller.name.clone();
        // what the batch adds to its owner's load, summed before the lock
        let adding = Load { jobs: new.jobs.len() as u64, work: new.jobs.iter().fold(0u64, |sum, j| sum.saturating_add(j.work)) };
        // with traces exported, each job's trace starts at its `job` span under
        // this call: the jobs take this call's trace id in the lock, and their
        // spans are made after it, so a large submit does not hold up leases
        let parent = farm
            .tracer()
            .map(|_| tracing_opentelemetry::OpenTelemetrySpanExt::context(&tracing::Span::current()))
            .filter(|p| p.span().span_context().is_valid());
        let parent_trace = parent.as_ref().map(|p| p.span().span_context().trace_id().to_string());
        let submitted = farm
            .apply(move |s, fx, now| {
                // counted under the lock, so two submits at once cannot both slip under it
                let replay = new.request_id.as_deref().is_some_and(|r| s.batch_for_request(&owner, r).is_some());
                if !replay {
                    quota.check_unfinished(s.unfinished_of(&owner), adding)?;
                    s.check_uploads(&new)?;
                }
                Ok(match parent_trace {
                    Some(trace_id) => s.submit(new, &owner, now, fx, &mut || trace_id.clone()),
                    None => s.submit(new, &owner, now, fx, &mut new_trace_id),
                })
            })
            .await?;
        if let (Some(tracer), Some(parent)) = (farm.tracer(), &parent) {
            if !submitted.deduplicated {
                tracer.submitted(parent, &submitted.jobs);
            }
        }
        let span = tracing::Span::current();
        span.record("batch_id", tracing::field::display(submitted.batch));
        span.record("jobs", submitted.jobs.len());
        tracing::info!(deduplicated = submitted.deduplicated, "batch submitted");
        Ok(Response::new(pb::SubmitBatchResponse {
            batch_id: submitted.batch.to_string(),
            job_ids: submitted.jobs.iter().map(ToString::to_string).collect(),
            deduplicated: submitted.deduplicated,
        }))
    }

    async fn get_batch(&self, request: Request<pb::GetBatchRequest>) -> Result<Response<pb::GetBatchResponse>, Status> {
        let caller = self.caller(&request, Api::Client)?;
        let req = request.into_inner();
        let id = BatchId::parse(&req.batch_id, "batch_id")?;
        if !req.include_jobs {
            let batch = self.farm.batch_record(id, &caller).await?;
            return Ok(Response::new(pb::GetBatchResponse { batch: Some(convert::batch(&batch)), jobs: Vec::new() }));
        }
        let (batch, jobs) = self.farm.batch_with_jobs(id, &caller).await?;
        Ok(Response::new(pb::GetBatchResponse { batch: Some(batch), jobs }))
    }

    async fn list_batches(&self, request: Request<pb::ListBatchesRequest>) -> Result<Response<pb::ListBatchesResponse>, Status> {
        let caller = self.caller(&request, Api::Client)?;
        let req = request.into_inner();
        let limit = match req.page_size {
            0 => 50,
            n if n > 1000 => return Err(CoordError::invalid("page_size", format!("{n} is above the limit 1000")).into()),
            n => n as usize,
        };
        let before = if req.page_token.is_empty() { None } else { Some(BatchId::parse(&req.page_token, "page_token")?) };
        let mut phases = Vec::new();
        for (i, &state) in req.states.iter().enumerate() {
            phases.push(convert::batch_phase(state).ok_or_else(|| CoordError::invalid(format!("states[{i}]"), format!("{state} is not a batch state")))?);
        }
        if req.states.len() > 16 {
            return Err(CoordError::invalid("states", format!("{} states; the limit is 16", req.states.len())).into());
        }
        let batches = self.farm.list_batches(&caller, before, limit + 1, phases).await?;
        let (page, next) = if batches.len() > limit { (batches[..limit].to_vec(), batches[limit - 1].id.clone()) } else { (batches, String::new()) };
        Ok(Response::new(pb::ListBatchesResponse { batches: page, next_page_token: next }))
    }

    type WatchBatchStream = BoxStream<pb::WatchEvent>;

    async fn watch_batch(&self, request: Request<pb::WatchBatchRequest>) -> Result<Response<Self::WatchBatchStream>, Status> {
        let caller = self.caller(&request, Api::Client)?;
        let id = BatchId::parse(&request.into_inner().batch_id, "batch_id")?;
        let rx = crate::follow::follow_batch(&self.farm, id, caller).await?;
        let stream = ReceiverStream::new(rx).map(|item| {
            item.map_err(|e| match e {
                CoordError::ShuttingDown => Status::unavailable("the coordinator is shutting down; watch again"),
                e => e.into(),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(skip_all, fields(principal, batch_id))]
    async fn cancel_batch(&self, request: Request<pb::CancelBatchRequest>) -> Result<Response<pb::CancelBatchResponse>, Status> {
        let caller = self.caller(&request, Api::Client)?;
        let id = BatchId::parse(&request.into_inner().batch_id, "batch_id")?;
        tracing::Span::current().record("principal", caller.name.as_str()).record("batch_id", tracing::field::display(id));
        let (cancelled, signalled) = self.farm.cancel_batch(id, &caller).await?;
        tracing::info!(cancelled, signalled, "batch cancelled");
        Ok(Response::new(pb::CancelBatchResponse { cancelled_queued: cancelled, signalled_running: signalled }))
    }

    #[tracing::instrument(skip_all, fields(principal, job_id))]
    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> Result<Response<pb::CancelJobResponse>, Status> {
        let caller = self.caller(&request, Api::Client)?;
        let id = JobId::parse(&request.into_inner().job_id, "job_id")?;
        tracing::Span::current().record("principal", caller.name.as_str()).record("job_id", tracing::field::display(id));
        let (outcome, state) = self.farm.cancel_job(id, &caller).await?;
        Ok(Response::new(pb::CancelJobResponse { outcome: convert::cancel_outcome(outcome) as i32, state: convert::job_state(state) as i32 }))
    }

    #[tracing::instrument(skip_all, fields(principal, batch_id))]
    async fn set_batch_priority(&self, request: Request<pb::SetBatchPriorityRequest>) -> Result<Response<pb::Batch>, Status> {
        let caller = self.caller(&request, Api::Client)?;
        let request = request.into_inner();
        let id = BatchId::parse(&request.batch_id, "batch_id")?;
        let priority = validate::priority(request.priority)?;
        tracing::Span::current().record("principal", caller.name.as_str()).record("batch_id", tracing::field::display(id));
        let record = self.farm.set_priority(id, priority, &caller).await?;
        Ok(Response::new(convert::batch(&record)))
    }

    #[tracing::instrument(skip_all, fields(principal, batch_id))]
    async fn pause_batch(&self, request: Request<pb::PauseBatchRequest>) -> Result<Response<pb::PauseBatchResponse>, Status> {
        let caller = self.caller(&request, Api::Client)?;
        let request = request.into_inner();
        let id = BatchId::parse(&request.batch_id, "batch_id")?;
        let mode = match pb::PauseMode::try_from(request.mode) {
            Ok(pb::PauseMode::Unspecified | pb::PauseMode::FinishRunning) => PauseMode::FinishRunning,
            Ok(pb::PauseMode::HandBackNow) => PauseMode::HandBackNow,
            Err(_) => return Err(CoordError::invalid("mode", format!("{} is not a pause mode (1 finish running, 2 hand back now)", request.mode)).into()),
        };
        tracing::Span::current().record("principal", caller.name.as_str()).record("batch_id", tracing::field::display(id));
        let (record, handed_back) = self.farm.pause_batch(id, mode, &caller).await?;
        Ok(Response::new(pb::PauseBatchResponse { batch: Some(convert::batch(&record)), handed_back }))
    }

    #[tracing::instrument(skip_all, fields(principal, batch_id))]
    async fn retry(&self, request: Request<pb::RetryRequest>) -> Result<Response<pb::RetryResponse>, Status> {
        let caller = self.caller(&request, Api::Client)?;
        let request = request.into_inner();
        let id = BatchId::parse(&request.batch_id, "batch_id")?;
        let target = match request.job_id.as_str() {
            "" => RetryTarget::Failed,
            job => RetryTarget::Job(JobId::parse(job, "job_id")?),
        };
        tracing::Span::current().record("principal", caller.name.as_str()).record("batch_id", tracing::field::display(id));
        let (record, requeued) = self.farm.retry(id, target, &caller).await?;
        Ok(Response::new(pb::RetryResponse { batch: Some(convert::batch(&record)), requeued }))
    }

    #[tracing::instrument(skip_all, fields(principal, batch_id))]
    async fn resume_batch(&self, request: Request<pb::ResumeBatchRequest>) -> Result<Response<pb::Batch>, Status> {
        let caller = self.caller(&request, Api::Client)?;
        let id = BatchId::parse(&request.into_inner().batch_id, "batch_id")?;
        tracing::Span::current().record("principal", caller.name.as_str()).record("batch_id", tracing::field::display(id));
        let record = self.farm.resume_batch(id, &caller).await?;
        Ok(Response::new(convert::batch(&record)))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let caller = self.caller(&request, Api::Client)?;
        let id = JobId::parse(&request.into_inner().job_id, "job_id")?;
        let (_, mut job) = self.farm.job(id, &caller).await?;
        job.attempts = self.farm.attempts(id).await?.iter().map(convert::attempt).collect();
        Ok(Response::new(job))
    }

    #[tracing::instrument(skip_all, fields(sha256, bytes))]
    async fn upload_image(&self, request: Request<Streaming<pb::UploadImageRequest>>) -> Result<Response<pb::UploadImageResponse>, Status> {
        let caller = self.caller(&request, Api::Client)?;
        let mut stream = request.into_inner();
        let limit = self.farm.config.max_upload_bytes;
        let header = match stream.message().await? {
            Some(pb::UploadImageRequest { part: Some(pb::upload_image_request::Part::Header(h)) }) => h,
            _ => return Err(CoordError::invalid("header", "the first message must be an UploadHeader").into()),
        };
        if header.size_bytes > limit {
            return Err(CoordError::invalid("header.size_bytes", format!("{} bytes; the limit is {limit}", header.size_bytes)).into());
        }
        let mut data = BytesMut::with_capacity(header.size_bytes as usize);
        while let Some(message) = stream.message().await? {
            match message.part {
                Some(pb::upload_image_request::Part::Chunk(chunk)) => {
                    if data.len() as u64 + chunk.len() as u64 > limit {
                        return Err(CoordError::invalid("chunk", format!("the image is above the limit of {limit} bytes")).into());
                    }
                    data.extend_from_slice(&chunk);
                }
                _ => return Err(CoordError::invalid("header", "only the first message may be a header").into()),
            }
        }
        if header.size_bytes != 0 && header.size_bytes != data.len() as u64 {
            return Err(CoordError::invalid("header.size_bytes", format!("announced {} bytes, received {}", header.size_bytes, data.len())).into());
        }
        let data: Bytes = data.freeze();
        let sha = hex::encode(Sha256::digest(&data));
        if !header.sha256.is_empty() && !header.sha256.eq_ignore_ascii_case(&sha) {
            return Err(CoordError::invalid("header.sha256", format!("announced {}, the bytes hash to {sha}", header.sha256)).into());
        }
        tracing::Span::current().record("sha256", &sha[..16]).record("bytes", data.len());
        let (width, height, format) = if header.video {
            // a clip is probed now (and again, with its window, at submit)
            let probe = crate::video::probe_bytes(data.clone()).await?;
            probe
                .check("video", &stylefarm_core::video::VideoParams::default(), u32::MAX)
                .map_err(|e| CoordError::invalid("chunk", format!("{}: {}", header.filename, e.reason)))?;
            (probe.width, probe.height, "video".to_string())
        } else {
            inspect_image(&header.filename, &data)?
        };
        let size = data.len() as u64;
        // bytes someone stored before are not stored again; either way the
        // caller gets their own reference, and `already_present` speaks only
        // of theirs (another's upload of the same bytes is not revealed)
        if !self.farm.read(|s| s.has_image(&sha))? {
            self.farm.blobs.put(&image_key(&sha), data).await.map_err(|e| CoordError::Blob(e.to_string()))?;
            if let Some(metrics) = self.farm.metrics() {
                metrics.uploaded_bytes.increment(size);
            }
        }
        let record = ImageRecord { sha256: sha.clone(), size_bytes: size, width, height, format: format.clone(), created_ms: now_ms() };
        let owner = caller.name.clone();
        let added = self.farm.apply(move |s, fx, _| Ok(s.add_image(record, &owner, fx))).await?;
        tracing::info!(width, height, format = %format, "image stored");
        Ok(Response::new(pb::UploadImageResponse { sha256: sha, size_bytes: size, width, height, format, already_present: !added }))
    }

    async fn stat_images(&self, request: Request<pb::StatImagesRequest>) -> Result<Response<pb::StatImagesResponse>, Status> {
        let caller = self.caller(&request, Api::Client)?;
        let req = request.into_inner();
        if req.sha256.len() > 10_000 {
            return Err(CoordError::invalid("sha256", format!("{} hashes; the limit is 10000", req.sha256.len())).into());
        }
        let mut wanted = Vec::with_capacity(req.sha256.len());
        for (i, sha) in req.sha256.iter().enumerate() {
            wanted.push(validate::check_sha256(&format!("sha256[{i}]"), sha)?);
        }
        // missing for this caller: what they never uploaded, whoever else did
        let missing = self.farm.read_committed(|s| wanted.into_iter().filter(|sha| !s.may_use_image(&caller, sha)).collect()).await?;
        Ok(Response::new(pb::StatImagesResponse { missing }))
    }

    async fn unblock_worker(&self, request: Request<pb::UnblockWorkerRequest>) -> Result<Response<pb::UnblockWorkerResponse>, Status> {
        let caller = self.caller(&request, Api::Admin)?;
        let request = request.into_inner();
        let worker = WorkerId::parse(&request.worker_id, "worker_id")?;
        let batch = BatchId::parse(&request.batch_id, "batch_id")?;
        let was_blocked = self.farm.apply(move |s, fx, _| s.unblock_worker(worker, batch, fx)).await?;
        tracing::info!(principal = %caller.name, worker_id = %worker, batch_id = %batch, was_blocked, "unblock requested");
        Ok(Response::new(pb::UnblockWorkerResponse { was_blocked }))
    }

    async fn delete_batch(&self, request: Request<pb::DeleteBatchRequest>) -> Result<Response<pb::DeleteBatchResponse>, Status> {
        let caller = self.caller(&request, Api::Client)?;
        let request = request.into_inner();
        let id = BatchId::parse(&request.batch_id, "batch_id")?;
        let mode = match request.mode() {
            pb::DeleteMode::Unspecified | pb::DeleteMode::IfIdle => DeleteMode::IfIdle,
            pb::DeleteMode::CancelRunning => DeleteMode::CancelRunning,
        };
        let done = self.farm.delete_batch(id, mode, &caller).await?;
        Ok(Response::new(pb::DeleteBatchResponse { cancelled: done.cancelled, jobs_removed: done.jobs_removed, objects_removed: done.objects_removed }))
    }

    async fn control_worker(&self, request: Request<pb::ControlWorkerRequest>) -> Result<Response<pb::Worker>, Status> {
        let caller = self.caller(&request, Api::Admin)?;
        let request = request.into_inner();
        let worker = WorkerId::parse(&request.worker_id, "worker_id")?;
        let action = match request.action() {
            pb::WorkerAction::Disable => WorkerAction::Disable,
            pb::WorkerAction::Enable => WorkerAction::Enable,
            pb::WorkerAction::Drain => WorkerAction::Drain,
            pb::WorkerAction::Unspecified => return Err(CoordError::invalid("action", "one of DISABLE, ENABLE, DRAIN").into()),
        };
        let (record, running, _) = self.farm.control_worker(worker, action, &caller).await?;
        Ok(Response::new(convert::worker(&record, running, now_ms(), self.farm.config.heartbeat_interval_ms)))
    }

    async fn forget_worker(&self, request: Request<pb::ForgetWorkerRequest>) -> Result<Response<pb::ForgetWorkerResponse>, Status> {
        let caller = self.caller(&request, Api::Admin)?;
        let worker = WorkerId::parse(&request.into_inner().worker_id, "worker_id")?;
        self.farm.forget_worker(worker, &caller).await?;
        Ok(Response::new(pb::ForgetWorkerResponse {}))
    }

    async fn list_workers(&self, request: Request<pb::ListWorkersRequest>) -> Result<Response<pb::ListWorkersResponse>, Status> {
        self.caller(&request, Api::Admin)?;
        let now = now_ms();
        let heartbeat = self.farm.config.heartbeat_interval_ms;
        // the counters shown are written (with this read's commit) before the answer
        let workers = self
            .farm
            .apply(|s, fx, _| {
                s.flush_counters(fx);
                Ok(s.workers().map(|w| convert::worker(w, s.running_jobs_of(w.id).iter().map(ToString::to_string).collect(), now, heartbeat)).collect())
            })
            .await?;
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    type DownloadOutputsStream = BoxStream<pb::OutputChunk>;

    async fn download_outputs(&self, request: Request<pb::DownloadOutputsRequest>) -> Result<Response<Self::DownloadOutputsStream>, Status> {
        let caller = self.caller(&request, Api::Client)?;
        let id = JobId::parse(&request.into_inner().job_id, "job_id")?;
        let (job, _) = self.farm.job(id, &caller).await?;
        let JobState::Succeeded { outputs, .. } = job.state else {
            return Err(CoordError::FailedPrecondition(format!("job {id} has not succeeded: it has no outputs")).into());
        };
        let (tx, rx) = mpsc::channel(4);
        let blobs = self.farm.blobs.clone();
        let downloaded = self.farm.metrics().map(|m| m.downloaded_bytes.clone());
        // each file streams from the store in 1 MiB pieces: at most a few are held at once
        tokio::spawn(async move {
            for file in outputs.files {
                let name = file.key.strip_prefix(&outputs.prefix).unwrap_or(&file.key).to_string();
                let mut pieces = match blobs.get_stream(&file.key, DOWNLOAD_CHUNK).await {
                    Ok((_, pieces)) => pieces,
                    Err(e) => {
                        let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                        return;
                    }
                };
                let (mut offset, mut held) = (0u64, None::<bytes::Bytes>);
                // one piece behind, so the last one is marked `last` (an empty file is one empty chunk)
                loop {
                    let next = match pieces.next().await {
                        Some(Ok(piece)) => Some(piece),
                        Some(Err(e)) => {
                            let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                            return;
                        }
                        None => None,
                    };
                    let last = next.is_none();
                    if let Some(data) = held.take().or_else(|| last.then(bytes::Bytes::new)) {
                        if let Some(counter) = &downloaded {
                            counter.increment(data.len() as u64);
                        }
                        let len = data.len() as u64;
                        if tx.send(Ok(pb::OutputChunk { name: name.clone(), offset, data, last })).await.is_err() {
                            return;
                        }
                        offset += len;
                    }
                    match next {
                        Some(piece) => held = Some(piece),
                        None => break,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Reads only the header: format and dimensions, checked against the limits.
fn inspect_image(filename: &str, data: &[u8]) -> Result<(u32, u32, String), CoordError> {
    let name = if filename.is_empty() { "the upload".to_string() } else { filename.to_string() };
    let invalid = |reason: String| CoordError::invalid("chunk", format!("{name}: {reason}"));
    let reader = image::ImageReader::new(Cursor::new(data)).with_guessed_format().map_err(|e| invalid(e.to_string()))?;
    let Some(format) = reader.format() else {
        return Err(invalid("not an image in a known format (png, jpeg, gif, bmp, webp, tiff)".into()));
    };
    let (width, height) = reader.into_dimensions().map_err(|e| invalid(format!("unreadable {format:?} header: {e}")))?;
    if width == 0 || height == 0 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE || width as u64 * height as u64 > MAX_IMAGE_PIXELS {
        return Err(invalid(format!("{width}x{height} is beyond the limits: sides 1..={MAX_IMAGE_SIDE}, at most {MAX_IMAGE_PIXELS} pixels")));
    }
    Ok((width, height, format!("{format:?}").to_ascii_lowercase()))
}
