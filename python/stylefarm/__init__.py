"""stylefarm: script a stylefarm render farm from Python.

>>> from stylefarm import Client
>>> farm = Client("https://farm:50051", token_file="~/.stylefarm/token", tls_ca="ca.pem")
>>> batch = farm.submit(contents=["a.jpg", "s3://bucket/b.png"], styles=["starry.jpg"],
...                     size=1024, preset="gatys", name="tests", labels={"shot": "010"})
>>> for event in batch.watch():
...     print(event.kind.value, event.batch.counts)
>>> batch.wait(timeout=3600)
>>> batch.fetch("out/")

``stylefarm.aio`` has the same client for asyncio. Errors are
:class:`StylefarmError` subclasses named after the gRPC code
(:class:`InvalidArgument` carries the ``field`` the coordinator named).
"""

try:
    from ._build import PROTO_SHA256, VERSION
except ImportError as e:  # pragma: no cover - only from a source checkout
    raise ImportError("stylefarm's stubs are generated when its wheel is built: run `make wheel` and install target/dist/stylefarm-*.whl") from e
from ._requests import KNOBS, VIDEO_KNOBS, JobSpec
from .client import Batch, Client
from .errors import (
    Aborted,
    AlreadyExists,
    BatchCancelled,
    BatchFailed,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StylefarmError,
    Unauthenticated,
    Unavailable,
)
from .models import (
    Attempt,
    BatchInfo,
    BatchState,
    Device,
    Event,
    EventKind,
    Job,
    JobCounts,
    JobResult,
    JobState,
    LossRow,
    OutputFile,
    Progress,
    Worker,
    WorkerAction,
)
from .results import CancelResult, DeleteResult

__version__ = VERSION

__all__ = [
    "Client",
    "Batch",
    "JobSpec",
    "KNOBS",
    "VIDEO_KNOBS",
    "PROTO_SHA256",
    "StylefarmError",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "Unauthenticated",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "Unavailable",
    "DeadlineExceeded",
    "Cancelled",
    "Internal",
    "BatchFailed",
    "BatchCancelled",
    "Attempt",
    "BatchInfo",
    "BatchState",
    "Device",
    "Event",
    "EventKind",
    "Job",
    "JobCounts",
    "JobResult",
    "JobState",
    "LossRow",
    "OutputFile",
    "Progress",
    "Worker",
    "WorkerAction",
    "CancelResult",
    "DeleteResult",
    "__version__",
]
