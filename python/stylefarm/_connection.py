"""Where the coordinator is and how to prove who we are, read exactly as the
``stylefarm`` CLI reads it: the URL (argument, else ``STYLEFARM_COORDINATOR``,
else ``http://127.0.0.1:50051``), the token (argument, else ``token_file``,
else ``STYLEFARM_TOKEN``; none for an open local coordinator) and the CA that
signed the coordinator's certificate for ``https://`` URLs (argument, else
``STYLEFARM_TLS_CA``, else the system roots)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union
from urllib.parse import urlsplit

import grpc

from .errors import InvalidArgument

PathLike = Union[str, "os.PathLike[str]"]

DEFAULT_URL = "http://127.0.0.1:50051"
# the coordinator's limit too (a 100,000-job submit is ~20 MB)
MAX_MESSAGE_BYTES = 64 << 20

CHANNEL_OPTIONS: List[Tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # watches are long-lived: keep idle connections alive through NATs and proxies
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


@dataclass(frozen=True)
class Connection:
    """A resolved coordinator address: the gRPC target, TLS credentials and the token."""

    url: str
    target: str
    credentials: Optional[grpc.ChannelCredentials]
    token: Optional[str]

    def metadata(self) -> Tuple[Tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def read_token(token: Optional[str], token_file: Optional[PathLike]) -> Optional[str]:
    """The token as the CLI finds it: given, else the file, else ``STYLEFARM_TOKEN``."""
    if token is not None:
        text = token.strip()
    elif token_file is not None:
        path = Path(token_file).expanduser()
        try:
            text = path.read_text().strip()
        except OSError as e:
            raise InvalidArgument(f"reading the token file {path}: {e.strerror or e}", field="token_file") from e
    else:
        text = os.environ.get("STYLEFARM_TOKEN", "").strip()
    if not text:
        return None
    if not text.isprintable() or "\n" in text:
        raise InvalidArgument("the token is not valid metadata (one line of printable ASCII)", field="token")
    return text


def resolve(
    url: Optional[str],
    token: Optional[str],
    token_file: Optional[PathLike],
    tls_ca: Optional[PathLike],
) -> Connection:
    url = url or os.environ.get("STYLEFARM_COORDINATOR") or DEFAULT_URL
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(f"invalid coordinator URL `{url}`: expected http://HOST:PORT or https://HOST:PORT", field="url")
    if parts.path not in ("", "/"):
        raise InvalidArgument(f"invalid coordinator URL `{url}`: no path is allowed", field="url")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    target = f"{host}:{port}"
    ca_path = tls_ca if tls_ca is not None else os.environ.get("STYLEFARM_TLS_CA") or None
    credentials: Optional[grpc.ChannelCredentials] = None
    if parts.scheme == "https":
        root: Optional[bytes] = None
        if ca_path is not None:
            path = Path(ca_path).expanduser()
            try:
                root = path.read_bytes()
            except OSError as e:
                raise InvalidArgument(f"reading the CA file {path}: {e.strerror or e}", field="tls_ca") from e
        credentials = grpc.ssl_channel_credentials(root_certificates=root)
    elif tls_ca is not None:
        raise InvalidArgument("TLS options need an https:// URL", field="tls_ca")
    return Connection(url=url, target=target, credentials=credentials, token=read_token(token, token_file))
