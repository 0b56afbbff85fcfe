"""Progress while waiting for a batch: a tqdm bar (``tqdm.auto``, so a widget
in notebooks) when tqdm is installed, else one line on stderr redrawn in place.
Fed by watch events; shared by both clients."""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional

from .models import Event, EventKind, JobState


class Progress:
    def __init__(self, total: int, label: str) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.running: Dict[str, str] = {}
        self.bar: Optional[Any] = None
        try:
            from tqdm.auto import tqdm  # optional dependency: pip install stylefarm[progress]
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self.bar = tqdm(total=total, desc=label, unit="job", dynamic_ncols=True)

    def update(self, event: Event) -> None:
        counts = event.batch.counts
        if counts.total != self.total:
            self.total = counts.total
            if self.bar is not None:
                self.bar.total = self.total
        job = event.job
        if job is not None:
            if job.state == JobState.RUNNING and job.progress is not None:
                p = job.progress
                loss = f" loss {p.loss.total:.4g}" if p.loss is not None else ""
                eta = f" eta {p.eta_s:.0f}s" if p.eta_s is not None else ""
                self.running[job.id] = f"{job.name} {p.iteration}/{p.total_iterations}{loss}{eta}"
            elif job.state.finished or event.kind in (EventKind.QUEUED, EventKind.CANCELLED):
                self.running.pop(job.id, None)
        finished = counts.finished
        detail = "; ".join(list(self.running.values())[:2])
        if self.bar is not None:
            self.bar.update(finished - self.done)
            self.bar.set_postfix_str(detail, refresh=True)
        else:
            line = f"\r{self.label}: {finished}/{self.total} jobs"
            if counts.failed:
                line += f" ({counts.failed} failed)"
            line += f"  {detail}"[:100]
            sys.stderr.write(line.ljust(120)[:120])
            sys.stderr.flush()
        self.done = finished

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            sys.stderr.write("\n")
            sys.stderr.flush()
