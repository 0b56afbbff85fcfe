"""What the blocking and the asyncio clients share that is not a call: the
client's settings and its resolved connection, and a batch handle's view of
what the coordinator last said (``info`` and the properties over it)."""

from __future__ import annotations

from typing import Any, Optional, Tuple

from . import _connection
from ._requests import PathLike
from .models import BatchInfo, BatchState, JobCounts


class ClientBase:
    def __init__(
        self,
        url: Optional[str],
        token: Optional[str],
        token_file: Optional[PathLike],
        tls_ca: Optional[PathLike],
        timeout: float,
        retry_for: float,
        reconnect_for: float,
    ) -> None:
        self.connection = _connection.resolve(url, token, token_file, tls_ca)
        self.timeout = timeout
        self.retry_for = retry_for
        self.reconnect_for = reconnect_for
        self._metadata = self.connection.metadata()

    def _channel_args(self) -> Tuple[Any, ...]:
        """(target, credentials, options) for secure_channel, or (target, options) for insecure_channel."""
        conn = self.connection
        if conn.credentials is not None:
            return (conn.target, conn.credentials, _connection.CHANNEL_OPTIONS)
        return (conn.target, _connection.CHANNEL_OPTIONS)

    def __repr__(self) -> str:
        return f"{type(self).__module__.rsplit('.', 1)[-1]}.Client({self.connection.url!r})"


class BatchView:
    def __init__(self, info: BatchInfo) -> None:
        self.info = info
        # the SHA-256s this submit uploaded (a batch from submit only; the rest were on the coordinator)
        self.uploaded: Tuple[str, ...] = ()
        # True when this submit's request id matched an earlier batch (which this is)
        self.deduplicated = False

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def state(self) -> BatchState:
        return self.info.state

    @property
    def counts(self) -> JobCounts:
        return self.info.counts

    def __repr__(self) -> str:
        c = self.info.counts
        return f"Batch({self.id!r}, {self.name!r}, {self.state.value}, {c.finished}/{c.total} finished)"
