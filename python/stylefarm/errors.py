"""Errors: one exception class per gRPC status code the coordinator answers
with, carrying the code, the coordinator's message and, for a bad request, the
field it named (``jobs[3].settings.size``, ``priority``, ...).

Input this package checks before anything is sent (an unknown render knob, a
missing file) raises :class:`InvalidArgument` too, with the same ``field``.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Type

import grpc

__all__ = [
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
    "from_rpc_error",
]

# the coordinator names the field in a trailer (and in its message: "invalid `field`: reason")
FIELD_TRAILER = "stylefarm-field"
_FIELD_IN_MESSAGE = re.compile(r"invalid `([^`]+)`")


class StylefarmError(Exception):
    """Anything the coordinator refused or failed, or this client refused to send.

    Attributes:
        code: the gRPC status code (``grpc.StatusCode``).
        message: the coordinator's (or this client's) message.
        field: the request field it names, for INVALID_ARGUMENT; else ``None``.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, field: Optional[str] = None, code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class InvalidArgument(StylefarmError):
    """A request field is missing, malformed or beyond its limit (``field`` names it)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(StylefarmError):
    """No such batch, job or worker (or it is another submitter's)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(StylefarmError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(StylefarmError):
    """The token's role may not do this (e.g. a submit token controlling workers)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(StylefarmError):
    """No token, or a wrong or revoked one."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(StylefarmError):
    """Over a limit (message size, a quota)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(StylefarmError):
    """Not in this state (e.g. deleting a batch while its jobs run)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(StylefarmError):
    code = grpc.StatusCode.ABORTED


class Unavailable(StylefarmError):
    """The coordinator cannot be reached, or is shutting down."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(StylefarmError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(StylefarmError):
    code = grpc.StatusCode.CANCELLED


class Internal(StylefarmError):
    code = grpc.StatusCode.INTERNAL


class BatchFailed(StylefarmError):
    """``Batch.wait`` saw the batch finish with failed jobs.

    ``batch`` is the finished batch; ``failures`` maps each failed job's id to
    its reason.
    """

    code = grpc.StatusCode.OK

    def __init__(self, message: str, batch: object, failures: Dict[str, str]) -> None:
        super().__init__(message)
        self.batch = batch
        self.failures = failures


class BatchCancelled(StylefarmError):
    """``Batch.wait`` saw the batch end cancelled (``batch`` is the batch)."""

    code = grpc.StatusCode.OK

    def __init__(self, message: str, batch: object) -> None:
        super().__init__(message)
        self.batch = batch


_BY_CODE: Dict[grpc.StatusCode, Type[StylefarmError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Internal,
    )
}


def field_of(message: str, trailers: object) -> Optional[str]:
    """The field a refusal names: the trailer if sent, else the message's ``invalid `field```."""
    for key, value in trailers or ():  # type: ignore[attr-defined]
        if key == FIELD_TRAILER:
            return value if isinstance(value, str) else value.decode()
    found = _FIELD_IN_MESSAGE.search(message)
    return found.group(1) if found else None


def from_rpc_error(error: grpc.RpcError) -> StylefarmError:
    """The exception for a failed call (sync or ``grpc.aio``)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
    message = (error.details() if hasattr(error, "details") else None) or str(code)  # type: ignore[attr-defined]
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None  # type: ignore[attr-defined]
    field = field_of(message, trailers) if code == grpc.StatusCode.INVALID_ARGUMENT else None
    cls = _BY_CODE.get(code, StylefarmError)
    exc = cls(message, field=field, code=code)
    exc.__cause__ = error
    return exc
