"""The blocking client: :class:`Client` (the farm) and :class:`Batch` (one
batch's handle). ``stylefarm.aio`` has the same shape for asyncio.

>>> from stylefarm import Client
>>> farm = Client("http://127.0.0.1:50051")
>>> batch = farm.submit(contents=["a.jpg"], styles=["starry.jpg"], size=512)
>>> batch.wait(timeout=3600)
>>> batch.fetch("out/")
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence, TypeVar

import grpc

from . import _requests, _retry
from ._base import BatchView, ClientBase
from ._progress import Progress
from ._requests import Input, JobSpec, PathLike
from .errors import BatchCancelled, BatchFailed, Unavailable, from_rpc_error
from .models import BatchInfo, BatchState, Event, EventKind, Job, Worker, WorkerAction, batch_states_to_proto
from .results import CancelResult, DeleteResult, finished_outcome
from .v1 import stylefarm_pb2 as pb
from .v1 import stylefarm_pb2_grpc as pb_grpc

__all__ = ["Client", "Batch"]

T = TypeVar("T")


class Client(ClientBase):
    """A connection to a stylefarm coordinator.

    Args:
        url: ``http://HOST:PORT`` or ``https://HOST:PORT``; default
            ``STYLEFARM_COORDINATOR``, else ``http://127.0.0.1:50051``.
        token: an API token; default read from ``token_file``, else
            ``STYLEFARM_TOKEN`` (none: an open local coordinator).
        token_file: a file holding the token (``~`` is expanded).
        tls_ca: PEM CA that signed the coordinator's certificate
            (``https://``; default ``STYLEFARM_TLS_CA``, else the system roots).
        timeout: seconds each unary call may take.
        retry_for: seconds to keep retrying a safe call while the
            coordinator is unavailable (a restart, a network blip).
        reconnect_for: seconds a watch (and a wait) keeps reconnecting to a
            coordinator that went away before it gives up.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        token: Optional[str] = None,
        token_file: Optional[PathLike] = None,
        tls_ca: Optional[PathLike] = None,
        timeout: float = 60.0,
        retry_for: float = 30.0,
        reconnect_for: float = 300.0,
    ) -> None:
        super().__init__(url, token, token_file, tls_ca, timeout, retry_for, reconnect_for)
        args = self._channel_args()
        self._channel = grpc.secure_channel(*args) if len(args) == 3 else grpc.insecure_channel(*args)
        self._stub = pb_grpc.CoordinatorStub(self._channel)

    # ------------------------------------------------------------ plumbing

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


    def _call(self, method: str, request: Any, *, retry: bool = False, timeout: Optional[float] = None) -> Any:
        fn = getattr(self._stub, method)
        return self._retrying(lambda: fn(request, timeout=timeout or self.timeout, metadata=self._metadata), retry)

    def _retrying(self, call: Callable[[], T], retry: bool) -> T:
        waits = _retry.delays(self.retry_for) if retry else iter(())
        while True:
            try:
                return call()
            except grpc.RpcError as e:
                delay = next(waits, None) if _retry.retryable(e) else None
                if delay is None:
                    raise from_rpc_error(e) from None
                time.sleep(delay)

    # ------------------------------------------------------------ submit

    def submit(
        self,
        contents: Sequence[Input] = (),
        styles: Sequence[Input] = (),
        *,
        jobs: Sequence[JobSpec] = (),
        name: str = "",
        preset: Optional[str] = None,
        priority: int = 0,
        labels: Optional[Mapping[str, str]] = None,
        requires: Sequence[str] = (),
        notify: Sequence[str] = (),
        notify_on: Optional[str] = None,
        max_attempts: int = 0,
        time_limit_s: int = 0,
        request_id: Optional[str] = None,
        **knobs: Any,
    ) -> "Batch":
        """Submits every content × every style (and any explicit ``jobs``).

        Local files are uploaded once (by SHA-256, only those the coordinator
        lacks); ``s3://``, ``gs://``, ``file://``... URLs are used as they
        are. Render knobs are keyword arguments named as the engine's
        parameters (``size=1024, iterations=300, style_weight=1e4,
        preserve_colors=True``; see ``stylefarm.KNOBS``); the coordinator
        checks them with the engine's rules and names the field it refuses.

        ``notify`` names webhook URLs (under the coordinator's
        ``--webhook-allow``) POSTed a signed summary when the batch ends;
        ``notify_on="failures"`` also tells them of each job that fails for
        good.

        ``request_id`` makes the submit idempotent (a second submit with the
        same id returns the first batch); one is made up when not given, and
        a submit retried after a lost connection reuses it.
        """
        plan = _requests.batch_request(
            contents=contents,
            styles=styles,
            jobs=jobs,
            name=name,
            priority=priority,
            labels=labels,
            requires=requires,
            notify=notify,
            notify_on=notify_on,
            max_attempts=max_attempts,
            time_limit_s=time_limit_s,
            request_id=request_id,
            preset=preset,
            knobs=knobs,
        )
        return self._send(plan)

    def submit_video(
        self,
        video: Input,
        styles: Sequence[Input],
        *,
        name: Optional[str] = None,
        preset: Optional[str] = None,
        priority: int = 0,
        labels: Optional[Mapping[str, str]] = None,
        requires: Sequence[str] = (),
        notify: Sequence[str] = (),
        notify_on: Optional[str] = None,
        max_attempts: int = 0,
        time_limit_s: int = 0,
        request_id: Optional[str] = None,
        video_params: Optional[Mapping[str, Any]] = None,
        **knobs: Any,
    ) -> "Batch":
        """Stylises a clip, temporally consistent; ``video_params`` takes
        ``temporal_weight``, ``first_iterations``, ``frame_iterations``,
        ``segment_frames``, ``overlap``, ``start_s``, ``duration_s``.
        ``fetch`` puts ``NAME-stylised.mp4`` at the top of its folder."""
        plan = _requests.video_request(
            video=video,
            styles=styles,
            name=name,
            priority=priority,
            labels=labels,
            requires=requires,
            notify=notify,
            notify_on=notify_on,
            max_attempts=max_attempts,
            time_limit_s=time_limit_s,
            request_id=request_id,
            preset=preset,
            knobs=knobs,
            video_knobs=video_params or {},
        )
        return self._send(plan)

    def _send(self, plan: _requests.Submit) -> "Batch":
        uploaded = self._upload(plan.inputs)
        response = self._call("SubmitBatch", plan.request, retry=True)
        batch = self.batch(response.batch_id)
        batch.uploaded = tuple(uploaded)
        batch.deduplicated = bool(response.deduplicated)
        return batch

    def _upload(self, inputs: _requests.Inputs) -> List[str]:
        """Uploads the local files the coordinator does not have; returns their SHA-256s."""
        if not inputs.local:
            return []
        missing = self._call("StatImages", pb.StatImagesRequest(sha256=list(inputs.local)), retry=True).missing
        for sha in missing:
            file = inputs.local[sha]
            self._retrying(
                lambda: self._stub.UploadImage(_requests.upload_messages(file), timeout=None, metadata=self._metadata),
                retry=True,
            )
        return list(missing)

    # ------------------------------------------------------------ reads

    def batch(self, batch_id: str) -> "Batch":
        """A batch by id (NotFound if it does not exist or is not yours)."""
        response = self._call("GetBatch", pb.GetBatchRequest(batch_id=batch_id), retry=True)
        return Batch(self, BatchInfo._from_proto(response.batch))

    def batches(self, state: Optional[Sequence["BatchState | str"]] = None, limit: Optional[int] = None) -> List["Batch"]:
        """Batches, newest first; ``state`` keeps only these (``["failed"]``)."""
        states = batch_states_to_proto([BatchState.parse(s) for s in (state or ())])
        out: List[Batch] = []
        token = ""
        while limit is None or len(out) < limit:
            page = 1000 if limit is None else min(1000, limit - len(out))
            request = pb.ListBatchesRequest(page_size=page, page_token=token, states=states)
            response = self._call("ListBatches", request, retry=True)
            out.extend(Batch(self, BatchInfo._from_proto(b)) for b in response.batches)
            token = response.next_page_token
            if not token:
                break
        return out

    def job(self, job_id: str) -> Job:
        """A job with every ended attempt."""
        return Job._from_proto(self._call("GetJob", pb.GetJobRequest(job_id=job_id), retry=True))

    def cancel_job(self, job_id: str) -> Job:
        """Cancels one job: queued, at once (its dependents follow); running, at its next heartbeat."""
        self._call("CancelJob", pb.CancelJobRequest(job_id=job_id), retry=True)
        return self.job(job_id)

    # ------------------------------------------------------------ workers (admin)

    def workers(self) -> List[Worker]:
        """Registered workers: devices, labels, what they run."""
        return [Worker._from_proto(w) for w in self._call("ListWorkers", pb.ListWorkersRequest(), retry=True).workers]

    def control_worker(self, worker_id: str, action: "WorkerAction | str") -> Worker:
        """Admin: disable, enable or drain a worker."""
        request = pb.ControlWorkerRequest(worker_id=worker_id, action=WorkerAction(action)._to_proto())
        return Worker._from_proto(self._call("ControlWorker", request))

    def forget_worker(self, worker_id: str) -> None:
        """Admin: drop a worker that is gone (not connected, running nothing)."""
        self._call("ForgetWorker", pb.ForgetWorkerRequest(worker_id=worker_id))

    def unblock_worker(self, worker_id: str, batch_id: str) -> bool:
        """Admin: let a worker take a batch's jobs again; True if it had been blocked."""
        return self._call("UnblockWorker", pb.UnblockWorkerRequest(worker_id=worker_id, batch_id=batch_id)).was_blocked


class Batch(BatchView):
    """One batch: what the coordinator last said of it (``info``, and the
    properties below), and what can be done to it. ``refresh()`` asks again."""

    def __init__(self, client: Client, info: BatchInfo) -> None:
        super().__init__(info)
        self._client = client

    def refresh(self) -> "Batch":
        self.info = self._client.batch(self.id).info
        return self

    @property
    def jobs(self) -> List[Job]:
        """Every job, as it is now."""
        response = self._client._call("GetBatch", pb.GetBatchRequest(batch_id=self.id, include_jobs=True), retry=True)
        self.info = BatchInfo._from_proto(response.batch)
        return [Job._from_proto(j) for j in response.jobs]

    def watch(self) -> Iterator[Event]:
        """Every job as it is now (SNAPSHOT events), then each change (progress
        with losses, state changes) until the batch finishes (BATCH_FINISHED is
        the last). A dropped connection is resumed (SNAPSHOT events again)."""
        yield from self._watch(None)

    def _watch(self, deadline: Optional[float]) -> Iterator[Event]:
        client = self._client
        waits = _retry.delays(client.reconnect_for)
        while True:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            stream = client._stub.WatchBatch(pb.WatchBatchRequest(batch_id=self.id), timeout=timeout, metadata=client._metadata)
            try:
                for message in stream:
                    event = Event._from_proto(message)
                    self.info = event.batch
                    waits = _retry.delays(client.reconnect_for)
                    yield event
                    if event.kind == EventKind.BATCH_FINISHED:
                        return
                # ended before the batch did: the coordinator stopped; reconnect
                delay = next(waits, None)
                if delay is None:
                    raise Unavailable(f"the watch of batch {self.id} kept ending before the batch finished")
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None:
                    c = self.info.counts
                    raise TimeoutError(f"batch {self.id} did not finish in time ({c.finished}/{c.total} jobs finished)") from None
                delay = next(waits, None) if _retry.stream_broken(e) else None
                if delay is None:
                    raise from_rpc_error(e) from None
            finally:
                stream.cancel()
            time.sleep(delay)

    def wait(self, timeout: Optional[float] = None, *, progress: bool = False) -> "Batch":
        """Blocks until the batch finishes; returns it if every job succeeded.

        Raises :class:`BatchFailed` (with each failed job's reason) or
        :class:`BatchCancelled`, or ``TimeoutError`` after ``timeout`` seconds.
        ``progress=True`` shows a bar (tqdm when installed, a notebook widget
        in Jupyter).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = Progress(self.info.counts.total, f"{self.id} {self.name}".strip()) if progress else None
        try:
            while not self.info.state.finished:
                for event in self._watch(deadline):
                    if bar is not None:
                        bar.update(event)
                self.refresh()
        finally:
            if bar is not None:
                bar.close()
        jobs = self.jobs if self.info.state == BatchState.FAILED else []
        outcome = finished_outcome(self.info, jobs)
        if outcome is not None:
            if isinstance(outcome, (BatchFailed, BatchCancelled)):
                outcome.batch = self
            raise outcome
        return self

    def fetch(self, out: PathLike) -> List[Path]:
        """Downloads every succeeded job's outputs (image, trace, metadata,
        snapshots, animation) to ``out/JOBID-NAME/``; returns the files."""
        root = Path(out)
        written: List[Path] = []
        for job in self.jobs:
            if job.state.value != "succeeded":
                continue
            writer = _requests.OutputWriter(root, job.id, job.name)
            try:
                request = pb.DownloadOutputsRequest(job_id=job.id)
                for chunk in self._client._stub.DownloadOutputs(request, timeout=None, metadata=self._client._metadata):
                    writer.write(chunk)
            except grpc.RpcError as e:
                raise from_rpc_error(e) from None
            finally:
                writer.close()
            written.extend(writer.written)
        return written

    # ------------------------------------------------------------ controls (owner or admin)

    def cancel(self) -> CancelResult:
        """Cancels every unfinished job: queued ones at once, running ones at their next heartbeat."""
        r = self._client._call("CancelBatch", pb.CancelBatchRequest(batch_id=self.id), retry=True)
        self.refresh()
        return CancelResult(r.cancelled_queued, r.signalled_running)

    def cancel_job(self, job_id: str) -> Job:
        return self._client.cancel_job(job_id)

    def pause(self, *, now: bool = False) -> "Batch":
        """No new leases until :meth:`resume`; running jobs finish (or with
        ``now=True`` go back to the queue without spending an attempt)."""
        mode = pb.PAUSE_MODE_HAND_BACK_NOW if now else pb.PAUSE_MODE_FINISH_RUNNING
        r = self._client._call("PauseBatch", pb.PauseBatchRequest(batch_id=self.id, mode=mode))
        self.info = BatchInfo._from_proto(r.batch)
        return self

    def resume(self) -> "Batch":
        self.info = BatchInfo._from_proto(self._client._call("ResumeBatch", pb.ResumeBatchRequest(batch_id=self.id)))
        return self

    def set_priority(self, priority: int) -> "Batch":
        """Higher first (-1000..=1000), effective at the next lease."""
        request = pb.SetBatchPriorityRequest(batch_id=self.id, priority=priority)
        self.info = BatchInfo._from_proto(self._client._call("SetBatchPriority", request))
        return self

    def retry(self, job_id: Optional[str] = None) -> int:
        """Runs every failed job again (or one failed or cancelled job) with a
        fresh attempt budget; returns how many were requeued."""
        r = self._client._call("Retry", pb.RetryRequest(batch_id=self.id, job_id=job_id or ""))
        self.info = BatchInfo._from_proto(r.batch)
        return int(r.requeued)

    def delete(self, *, force: bool = False) -> DeleteResult:
        """Deletes the batch, its history and its outputs (uploads stay).
        Refused (FailedPrecondition) while jobs run, unless ``force``."""
        mode = pb.DELETE_MODE_CANCEL_RUNNING if force else pb.DELETE_MODE_IF_IDLE
        r = self._client._call("DeleteBatch", pb.DeleteBatchRequest(batch_id=self.id, mode=mode), retry=True)
        return DeleteResult(r.cancelled, r.jobs_removed, r.objects_removed)

