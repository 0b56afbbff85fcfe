"""The asyncio client: the same shape as :mod:`stylefarm.client`, every call
awaited and ``watch()`` an async iterator.

>>> from stylefarm.aio import Client
>>> async with Client("http://127.0.0.1:50051") as farm:
...     batch = await farm.submit(contents=["a.jpg"], styles=["starry.jpg"], size=512)
...     async for event in batch.watch():
...         print(event.kind, event.batch.counts)
...     await batch.fetch("out/")
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, List, Mapping, Optional, Sequence, TypeVar

import grpc
import grpc.aio

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
    """A connection to a coordinator, for asyncio; arguments as :class:`stylefarm.Client`.

    Open it inside a running event loop, and ``await close()`` it (or use
    ``async with``).
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
        self._channel = grpc.aio.secure_channel(*args) if len(args) == 3 else grpc.aio.insecure_channel(*args)
        self._stub = pb_grpc.CoordinatorStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


    async def _call(self, method: str, request: Any, *, retry: bool = False) -> Any:
        fn = getattr(self._stub, method)
        return await self._retrying(lambda: fn(request, timeout=self.timeout, metadata=self._metadata), retry)

    async def _retrying(self, call: Callable[[], Awaitable[T]], retry: bool) -> T:
        waits = _retry.delays(self.retry_for) if retry else iter(())
        while True:
            try:
                return await call()
            except grpc.RpcError as e:
                delay = next(waits, None) if _retry.retryable(e) else None
                if delay is None:
                    raise from_rpc_error(e) from None
                await asyncio.sleep(delay)

    async def submit(
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
        """As :meth:`stylefarm.Client.submit`."""
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
        return await self._send(plan)

    async def submit_video(
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
        """As :meth:`stylefarm.Client.submit_video`."""
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
        return await self._send(plan)

    async def _send(self, plan: _requests.Submit) -> "Batch":
        uploaded = await self._upload(plan.inputs)
        response = await self._call("SubmitBatch", plan.request, retry=True)
        batch = await self.batch(response.batch_id)
        batch.uploaded = tuple(uploaded)
        batch.deduplicated = bool(response.deduplicated)
        return batch

    async def _upload(self, inputs: _requests.Inputs) -> List[str]:
        if not inputs.local:
            return []
        missing = (await self._call("StatImages", pb.StatImagesRequest(sha256=list(inputs.local)), retry=True)).missing
        for sha in missing:
            file = inputs.local[sha]
            # file reads are small (1 MiB) and local; the stream yields between them
            await self._retrying(
                lambda: self._stub.UploadImage(_requests.upload_messages(file), metadata=self._metadata), retry=True
            )
        return list(missing)

    async def batch(self, batch_id: str) -> "Batch":
        response = await self._call("GetBatch", pb.GetBatchRequest(batch_id=batch_id), retry=True)
        return Batch(self, BatchInfo._from_proto(response.batch))

    async def batches(self, state: Optional[Sequence["BatchState | str"]] = None, limit: Optional[int] = None) -> List["Batch"]:
        states = batch_states_to_proto([BatchState.parse(s) for s in (state or ())])
        out: List[Batch] = []
        token = ""
        while limit is None or len(out) < limit:
            page = 1000 if limit is None else min(1000, limit - len(out))
            response = await self._call("ListBatches", pb.ListBatchesRequest(page_size=page, page_token=token, states=states), retry=True)
            out.extend(Batch(self, BatchInfo._from_proto(b)) for b in response.batches)
            token = response.next_page_token
            if not token:
                break
        return out

    async def job(self, job_id: str) -> Job:
        return Job._from_proto(await self._call("GetJob", pb.GetJobRequest(job_id=job_id), retry=True))

    async def cancel_job(self, job_id: str) -> Job:
        await self._call("CancelJob", pb.CancelJobRequest(job_id=job_id), retry=True)
        return await self.job(job_id)

    async def workers(self) -> List[Worker]:
        response = await self._call("ListWorkers", pb.ListWorkersRequest(), retry=True)
        return [Worker._from_proto(w) for w in response.workers]

    async def control_worker(self, worker_id: str, action: "WorkerAction | str") -> Worker:
        request = pb.ControlWorkerRequest(worker_id=worker_id, action=WorkerAction(action)._to_proto())
        return Worker._from_proto(await self._call("ControlWorker", request))

    async def forget_worker(self, worker_id: str) -> None:
        await self._call("ForgetWorker", pb.ForgetWorkerRequest(worker_id=worker_id))

    async def unblock_worker(self, worker_id: str, batch_id: str) -> bool:
        response = await self._call("UnblockWorker", pb.UnblockWorkerRequest(worker_id=worker_id, batch_id=batch_id))
        return bool(response.was_blocked)


class Batch(BatchView):
    """One batch, for asyncio; as :class:`stylefarm.Batch` with awaited calls."""

    def __init__(self, client: Client, info: BatchInfo) -> None:
        super().__init__(info)
        self._client = client

    async def refresh(self) -> "Batch":
        self.info = (await self._client.batch(self.id)).info
        return self

    async def jobs(self) -> List[Job]:
        """Every job, as it is now (a coroutine here, a property in the blocking client)."""
        response = await self._client._call("GetBatch", pb.GetBatchRequest(batch_id=self.id, include_jobs=True), retry=True)
        self.info = BatchInfo._from_proto(response.batch)
        return [Job._from_proto(j) for j in response.jobs]

    def watch(self) -> AsyncIterator[Event]:
        """As :meth:`stylefarm.Batch.watch`, as an async iterator."""
        return self._watch(None)

    async def _watch(self, deadline: Optional[float]) -> AsyncIterator[Event]:
        client = self._client
        waits = _retry.delays(client.reconnect_for)
        while True:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            call = client._stub.WatchBatch(pb.WatchBatchRequest(batch_id=self.id), timeout=timeout, metadata=client._metadata)
            try:
                async for message in call:
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
                call.cancel()
            await asyncio.sleep(delay)

    async def wait(self, timeout: Optional[float] = None, *, progress: bool = False) -> "Batch":
        """As :meth:`stylefarm.Batch.wait`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = Progress(self.info.counts.total, f"{self.id} {self.name}".strip()) if progress else None
        try:
            while not self.info.state.finished:
                async for event in self._watch(deadline):
                    if bar is not None:
                        bar.update(event)
                await self.refresh()
        finally:
            if bar is not None:
                bar.close()
        jobs = await self.jobs() if self.info.state == BatchState.FAILED else []
        outcome = finished_outcome(self.info, jobs)
        if outcome is not None:
            if isinstance(outcome, (BatchFailed, BatchCancelled)):
                outcome.batch = self
            raise outcome
        return self

    async def fetch(self, out: PathLike) -> List[Path]:
        """As :meth:`stylefarm.Batch.fetch`."""
        root = Path(out)
        written: List[Path] = []
        for job in await self.jobs():
            if job.state.value != "succeeded":
                continue
            writer = _requests.OutputWriter(root, job.id, job.name)
            try:
                call = self._client._stub.DownloadOutputs(pb.DownloadOutputsRequest(job_id=job.id), metadata=self._client._metadata)
                async for chunk in call:
                    writer.write(chunk)
            except grpc.RpcError as e:
                raise from_rpc_error(e) from None
            finally:
                writer.close()
            written.extend(writer.written)
        return written

    async def cancel(self) -> CancelResult:
        r = await self._client._call("CancelBatch", pb.CancelBatchRequest(batch_id=self.id), retry=True)
        await self.refresh()
        return CancelResult(r.cancelled_queued, r.signalled_running)

    async def cancel_job(self, job_id: str) -> Job:
        return await self._client.cancel_job(job_id)

    async def pause(self, *, now: bool = False) -> "Batch":
        mode = pb.PAUSE_MODE_HAND_BACK_NOW if now else pb.PAUSE_MODE_FINISH_RUNNING
        r = await self._client._call("PauseBatch", pb.PauseBatchRequest(batch_id=self.id, mode=mode))
        self.info = BatchInfo._from_proto(r.batch)
        return self

    async def resume(self) -> "Batch":
        self.info = BatchInfo._from_proto(await self._client._call("ResumeBatch", pb.ResumeBatchRequest(batch_id=self.id)))
        return self

    async def set_priority(self, priority: int) -> "Batch":
        request = pb.SetBatchPriorityRequest(batch_id=self.id, priority=priority)
        self.info = BatchInfo._from_proto(await self._client._call("SetBatchPriority", request))
        return self

    async def retry(self, job_id: Optional[str] = None) -> int:
        r = await self._client._call("Retry", pb.RetryRequest(batch_id=self.id, job_id=job_id or ""))
        self.info = BatchInfo._from_proto(r.batch)
        return int(r.requeued)

    async def delete(self, *, force: bool = False) -> DeleteResult:
        mode = pb.DELETE_MODE_CANCEL_RUNNING if force else pb.DELETE_MODE_IF_IDLE
        r = await self._client._call("DeleteBatch", pb.DeleteBatchRequest(batch_id=self.id, mode=mode), retry=True)
        return DeleteResult(r.cancelled, r.jobs_removed, r.objects_removed)
