"""The retry policy for calls that are safe to repeat (reads, submits with
their request id, uploads by hash, reconnecting a watch), the same as the
Rust client's (stylefarm_core::retry): 200 ms, doubling, at most 5 s apart,
for up to ``retry_for`` seconds. Only UNAVAILABLE is retried; a watch also
reconnects after a stream that broke or ended before the batch did (for up to
``reconnect_for`` seconds, 300 by default, as the CLI's watch)."""

from __future__ import annotations

import time
from typing import Iterator

import grpc

INITIAL_S = 0.2
FACTOR = 2.0
MAX_DELAY_S = 5.0

RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
# a watch stream broken by a coordinator going away can end with any of these (as the CLI's watch)
STREAM_BROKEN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL)


def delays(retry_for: float) -> Iterator[float]:
    """Sleeps between tries, ending when the next would pass ``retry_for`` seconds from now."""
    deadline = time.monotonic() + retry_for
    delay = INITIAL_S
    while time.monotonic() + delay <= deadline:
        yield delay
        delay = min(delay * FACTOR, MAX_DELAY_S)


def retryable(error: grpc.RpcError) -> bool:
    code = error.code() if hasattr(error, "code") else None  # type: ignore[attr-defined]
    return code in RETRYABLE


def stream_broken(error: grpc.RpcError) -> bool:
    code = error.code() if hasattr(error, "code") else None  # type: ignore[attr-defined]
    return code in STREAM_BROKEN
