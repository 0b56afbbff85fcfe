"""Small results of controls, and how a finished batch ends a wait; shared by
both clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

from .errors import BatchCancelled, BatchFailed
from .models import BatchInfo, BatchState, Job, JobState


@dataclass(frozen=True)
class CancelResult:
    cancelled_queued: int  # cancelled at once
    signalled_running: int  # told to stop at their next heartbeat


@dataclass(frozen=True)
class DeleteResult:
    cancelled: int  # jobs this call cancelled
    jobs_removed: int  # job rows removed (0 when it was deleted already)
    objects_removed: int  # objects removed from the store


def finished_outcome(info: BatchInfo, jobs: Sequence[Job]) -> Optional[Union[BatchFailed, BatchCancelled]]:
    """None if the batch succeeded, else the exception a wait raises (``jobs``: its jobs, for the reasons)."""
    c = info.counts
    if info.state == BatchState.FAILED:
        failures = {j.id: j.error for j in jobs if j.state == JobState.FAILED}
        first = next(iter(failures.items()), None)
        detail = f"; {first[0]}: {first[1]}" if first else ""
        return BatchFailed(f"batch {info.id} failed: {c.failed} of {c.total} jobs failed{detail}", info, failures)
    if info.state == BatchState.CANCELLED:
        return BatchCancelled(f"batch {info.id} was cancelled ({c.succeeded} of {c.total} jobs had succeeded)", info)
    return None
