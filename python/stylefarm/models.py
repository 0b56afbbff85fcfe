"""What the coordinator answers, as typed, immutable Python values.

Each type keeps the message it was read from as ``proto`` for anything this
layer does not lift (every field of ``stylefarm.v1`` is there). Times are
``datetime`` in UTC (``None`` where the coordinator sends 0).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple

from .v1 import stylefarm_pb2 as pb

__all__ = [
    "JobState",
    "BatchState",
    "EventKind",
    "WorkerAction",
    "JobCounts",
    "BatchInfo",
    "LossRow",
    "Progress",
    "OutputFile",
    "JobResult",
    "Attempt",
    "Job",
    "Device",
    "Worker",
    "Event",
]


def _time(ms: int) -> Optional[datetime]:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc) if ms else None


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @classmethod
    def _from_proto(cls, value: int) -> "JobState":
        return _JOB_STATES.get(value, JobState.QUEUED)


_JOB_STATES: Dict[int, JobState] = {
    pb.JOB_STATE_QUEUED: JobState.QUEUED,
    pb.JOB_STATE_RUNNING: JobState.RUNNING,
    pb.JOB_STATE_SUCCEEDED: JobState.SUCCEEDED,
    pb.JOB_STATE_FAILED: JobState.FAILED,
    pb.JOB_STATE_CANCELLED: JobState.CANCELLED,
}


class BatchState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"

    @property
    def finished(self) -> bool:
        return self in (BatchState.SUCCEEDED, BatchState.FAILED, BatchState.CANCELLED)

    @classmethod
    def parse(cls, value: "BatchState | str") -> "BatchState":
        """A state from its name (``"failed"``), as ``stylefarm list --state`` takes it."""
        if isinstance(value, BatchState):
            return value
        try:
            return BatchState(value.strip().lower())
        except ValueError:
            from .errors import InvalidArgument

            names = ", ".join(s.value for s in BatchState)
            raise InvalidArgument(f"unknown batch state `{value}` (one of {names})", field="state") from None

    def _to_proto(self) -> Any:
        return {v: k for k, v in _BATCH_STATES.items()}[self]

    @classmethod
    def _from_proto(cls, value: int) -> "BatchState":
        return _BATCH_STATES.get(value, BatchState.QUEUED)


_BATCH_STATES: Dict[int, BatchState] = {
    pb.BATCH_STATE_QUEUED: BatchState.QUEUED,
    pb.BATCH_STATE_RUNNING: BatchState.RUNNING,
    pb.BATCH_STATE_SUCCEEDED: BatchState.SUCCEEDED,
    pb.BATCH_STATE_FAILED: BatchState.FAILED,
    pb.BATCH_STATE_CANCELLED: BatchState.CANCELLED,
    pb.BATCH_STATE_PAUSED: BatchState.PAUSED,
}


class EventKind(str, enum.Enum):
    """What a watch event says (``stylefarm.v1.EventKind``)."""

    SNAPSHOT = "snapshot"  # the job as it was when the watch started
    QUEUED = "queued"  # queued again after a failed attempt
    STARTED = "started"
    PROGRESS = "progress"  # iterations and losses
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    BATCH_FINISHED = "batch_finished"  # the last event
    WAITING = "waiting"  # a queued job's waiting reason changed
    BATCH_CHANGED = "batch_changed"  # priority, paused or resumed
    BATCH_DELETED = "batch_deleted"
    UNKNOWN = "unknown"  # a kind newer than this client


_EVENT_KINDS: Dict[int, EventKind] = {
    pb.EVENT_KIND_SNAPSHOT: EventKind.SNAPSHOT,
    pb.EVENT_KIND_QUEUED: EventKind.QUEUED,
    pb.EVENT_KIND_STARTED: EventKind.STARTED,
    pb.EVENT_KIND_PROGRESS: EventKind.PROGRESS,
    pb.EVENT_KIND_SUCCEEDED: EventKind.SUCCEEDED,
    pb.EVENT_KIND_FAILED: EventKind.FAILED,
    pb.EVENT_KIND_CANCELLED: EventKind.CANCELLED,
    pb.EVENT_KIND_BATCH_FINISHED: EventKind.BATCH_FINISHED,
    pb.EVENT_KIND_WAITING: EventKind.WAITING,
    pb.EVENT_KIND_BATCH_CHANGED: EventKind.BATCH_CHANGED,
    pb.EVENT_KIND_BATCH_DELETED: EventKind.BATCH_DELETED,
}


class WorkerAction(str, enum.Enum):
    """An admin's control of a worker (``Client.control_worker``)."""

    DISABLE = "disable"  # no new leases (kept across coordinator restarts)
    ENABLE = "enable"
    DRAIN = "drain"  # disable, and hand running jobs back without spending an attempt

    def _to_proto(self) -> Any:
        return {
            WorkerAction.DISABLE: pb.WORKER_ACTION_DISABLE,
            WorkerAction.ENABLE: pb.WORKER_ACTION_ENABLE,
            WorkerAction.DRAIN: pb.WORKER_ACTION_DRAIN,
        }[self]


@dataclass(frozen=True)
class JobCounts:
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @classmethod
    def _from_proto(cls, m: Any) -> "JobCounts":
        return cls(m.total, m.queued, m.running, m.succeeded, m.failed, m.cancelled)


@dataclass(frozen=True)
class BatchInfo:
    """A batch as the coordinator last told it."""

    id: str
    name: str
    state: BatchState
    counts: JobCounts
    priority: int
    labels: Dict[str, str]
    owner: str
    requires: Tuple[str, ...]
    notify: Tuple[str, ...]
    notify_on: str
    max_attempts: int
    created_at: Optional[datetime]
    started_at: Optional[datetime]
    finished_at: Optional[datetime]
    proto: Any = field(repr=False, compare=False)

    @classmethod
    def _from_proto(cls, m: Any) -> "BatchInfo":
        return cls(
            id=m.id,
            name=m.name,
            state=BatchState._from_proto(m.state),
            counts=JobCounts._from_proto(m.counts),
            priority=m.priority,
            labels=dict(m.labels),
            owner=m.owner,
            requires=tuple(m.requires),
            notify=tuple(m.notify),
            notify_on="failures" if m.notify_on == 2 else "batch_end",
            max_attempts=m.max_attempts,
            created_at=_time(m.created_at_ms),
            started_at=_time(m.started_at_ms),
            finished_at=_time(m.finished_at_ms),
            proto=m,
        )


@dataclass(frozen=True)
class LossRow:
    """One row of a loss trace: the losses at one iteration of one scale."""

    scale: int
    size: int
    iteration: int
    total: float
    content: float
    style: float
    tv: float
    elapsed_ms: float
    evaluations: int

    @classmethod
    def _from_proto(cls, m: Any) -> "LossRow":
        return cls(m.scale, m.size, m.iteration, m.total, m.content, m.style, m.tv, m.elapsed_ms, m.evaluations)


@dataclass(frozen=True)
class Progress:
    """A running job's progress at its current scale."""

    iteration: int
    total_iterations: int
    scale: int  # 0-based
    scales: int
    loss: Optional[LossRow]  # the latest row
    rows: Tuple[LossRow, ...]  # rows since the previous event

    @property
    def fraction(self) -> float:
        """Of the whole job, counting finished scales as whole."""
        if not self.total_iterations or not self.scales:
            return 0.0
        return (self.scale + self.iteration / self.total_iterations) / self.scales

    @property
    def eta_s(self) -> Optional[float]:
        """Seconds left at the current scale, from the pace so far (``None`` before the first row)."""
        if self.loss is None or self.iteration == 0 or self.loss.elapsed_ms <= 0:
            return None
        per_iteration = self.loss.elapsed_ms / 1000 / self.iteration
        return per_iteration * max(self.total_iterations - self.iteration, 0)

    @classmethod
    def _from_proto(cls, m: Any) -> "Progress":
        return cls(
            iteration=m.iteration,
            total_iterations=m.total_iterations,
            scale=m.scale,
            scales=m.scales,
            loss=LossRow._from_proto(m.latest) if m.HasField("latest") else None,
            rows=tuple(LossRow._from_proto(r) for r in m.rows),
        )


@dataclass(frozen=True)
class OutputFile:
    key: str  # object key inside the attempt's prefix
    size_bytes: int
    kind: str  # image, trace, metadata, snapshot, animation


@dataclass(frozen=True)
class JobResult:
    """A succeeded job's committed attempt."""

    outputs: Tuple[OutputFile, ...]
    final_loss: float
    iterations: int
    engine_ms: float
    device: str

    @classmethod
    def _from_proto(cls, m: Any) -> "JobResult":
        outputs = tuple(OutputFile(o.key, o.size_bytes, o.kind) for o in m.outputs)
        return cls(outputs, m.final_loss, m.iterations, m.engine_ms, m.device)


@dataclass(frozen=True)
class Attempt:
    """One ended attempt of a job (``Client.job`` only)."""

    attempt: int
    worker_id: str
    outcome: str  # succeeded, failed, handed_back, expired, timed_out, cancelled
    reason: str
    leased_at: Optional[datetime]
    ended_at: Optional[datetime]


@dataclass(frozen=True)
class Job:
    """A job as the coordinator last told it."""

    id: str
    batch_id: str
    index: int
    name: str
    state: JobState
    attempt: int
    max_attempts: int
    worker_id: str
    params: Dict[str, Any]  # the resolved render parameters
    error: str  # the last failure's reason
    waiting_reason: str  # why a queued job is not being leased; empty while it waits its turn
    result: Optional[JobResult]
    progress: Optional[Progress]
    attempts: Tuple[Attempt, ...]
    depends_on: Tuple[str, ...]
    requires: Tuple[str, ...]
    task: str  # a video job's step ("frame 12 (segment 2)"); empty for a render
    created_at: Optional[datetime]
    started_at: Optional[datetime]
    finished_at: Optional[datetime]
    proto: Any = field(repr=False, compare=False)

    @classmethod
    def _from_proto(cls, m: Any) -> "Job":
        try:
            params = json.loads(m.params_json) if m.params_json else {}
        except ValueError:
            params = {}
        return cls(
            id=m.id,
            batch_id=m.batch_id,
            index=m.index,
            name=m.name,
            state=JobState._from_proto(m.state),
            attempt=m.attempt,
            max_attempts=m.max_attempts,
            worker_id=m.worker_id,
            params=params,
            error=m.error,
            waiting_reason=m.waiting_reason,
            result=JobResult._from_proto(m.result) if m.HasField("result") else None,
            progress=Progress._from_proto(m.progress) if m.HasField("progress") else None,
            attempts=tuple(
                Attempt(a.attempt, a.worker_id, a.outcome, a.reason, _time(a.leased_at_ms), _time(a.ended_at_ms))
                for a in m.attempts
            ),
            depends_on=tuple(m.depends_on),
            requires=tuple(m.requires),
            task=m.task,
            created_at=_time(m.created_at_ms),
            started_at=_time(m.started_at_ms),
            finished_at=_time(m.finished_at_ms),
            proto=m,
        )


@dataclass(frozen=True)
class Device:
    name: str  # cpu, cuda:0, ...
    memory_bytes: int
    description: str
    # engine time over wall time in the worker's last minute (None before its first heartbeat)
    busy_fraction: Optional[float] = None


@dataclass(frozen=True)
class Worker:
    id: str
    name: str
    devices: Tuple[Device, ...]
    version: str
    connected: bool
    enabled: bool  # False: an admin disabled (or drained) it
    labels: Dict[str, str]
    running_jobs: Tuple[str, ...]
    succeeded: int
    failed: int
    last_seen_at: Optional[datetime]
    proto: Any = field(repr=False, compare=False)

    @classmethod
    def _from_proto(cls, m: Any) -> "Worker":
        busy = {b.device: b.fraction for b in m.busy}
        return cls(
            id=m.id,
            name=m.name,
            devices=tuple(Device(d.name, d.memory_bytes, d.description, busy.get(d.name)) for d in m.devices),
            version=m.version,
            connected=m.connected,
            enabled=m.availability != pb.WORKER_AVAILABILITY_DISABLED,
            labels=dict(m.labels),
            running_jobs=tuple(m.running_jobs),
            succeeded=m.succeeded,
            failed=m.failed,
            last_seen_at=_time(m.last_seen_at_ms),
            proto=m,
        )


@dataclass(frozen=True)
class Event:
    """One event of a batch's watch stream: what happened, to which job, and
    the batch's counts after it."""

    kind: EventKind
    batch: BatchInfo
    job: Optional[Job]  # absent for BATCH_FINISHED
    at: Optional[datetime]

    @property
    def progress(self) -> Optional[Progress]:
        return self.job.progress if self.job is not None else None

    @classmethod
    def _from_proto(cls, m: Any) -> "Event":
        return cls(
            kind=_EVENT_KINDS.get(m.kind, EventKind.UNKNOWN),
            batch=BatchInfo._from_proto(m.batch),
            job=Job._from_proto(m.job) if m.HasField("job") else None,
            at=_time(m.at_ms),
        )


def batch_states_to_proto(states: List[BatchState]) -> List[Any]:
    return [s._to_proto() for s in states]
