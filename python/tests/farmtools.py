"""Helpers for the Python client's tests (conftest.py holds the fixtures):
the project's own coordinator and worker binaries as processes, tokens, and
test certificates.

Environment: STYLEFARM_BIN (the binaries; default target/debug),
STYLEFARM_SAMPLES (sample images; default .samples).
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("STYLEFARM_BIN", REPO / "target" / "debug"))
SAMPLES = Path(os.environ.get("STYLEFARM_SAMPLES", REPO / ".samples"))

# tiny renders: the engine runs for real, in under half a second per job
SMALL = dict(size=48, iterations=4)
# long enough (~3 s on a CPU) for several progress heartbeats at 250 ms
PROGRESSING = dict(size=48, iterations=30)


class Process:
    def __init__(self, args: List[str], log: Path, env: Optional[Dict[str, str]] = None) -> None:
        self.log = log
        self.out = open(log, "w")
        self.proc = subprocess.Popen(args, stdout=self.out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log.read_text())
            if found:
                return found
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.log.name} exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{pattern!r} not in {self.log}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.out.close()


class Farm:
    """A coordinator (and maybe a worker) in a temporary directory."""

    def __init__(self, root: Path, extra: Optional[List[str]] = None, scheme: str = "http") -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.processes: List[Process] = []
        self.extra = extra or []
        self.coordinator = self._coordinator("127.0.0.1:0")
        self.port = self.coordinator.wait_for(r"listening on [\d.]+:(\d+)").group(1)
        host = "localhost" if scheme == "https" else "127.0.0.1"
        self.url = f"{scheme}://{host}:{self.port}"
        # the default file:// store, inside the data dir
        self.store_url = f"file://{self.data / 'objects'}"

    def _coordinator(self, listen: str) -> Process:
        n = sum(1 for p in self.processes if p.log.name.startswith("coordinator"))
        process = Process(
            [str(BIN / "stylefarm-coordinator"), "--listen", listen, "--data-dir", str(self.data),
             "--heartbeat-interval-ms", "250", *self.extra],
            self.root / f"coordinator-{n}.log",
        )
        self.processes.append(process)
        return process

    def restart_coordinator(self, down_s: float = 1.0) -> None:
        """SIGTERM, a pause, and the same data dir on the same port again."""
        self.coordinator.stop()
        time.sleep(down_s)
        self.coordinator = self._coordinator(f"127.0.0.1:{self.port}")
        self.coordinator.wait_for(r"listening on")

    def start_worker(self, name: str = "py-worker", token_file: Optional[Path] = None, tls_ca: Optional[Path] = None) -> None:
        args = [str(BIN / "stylefarm-worker"), "--coordinator", self.url, "--devices", "cpu", "--name", name,
                "--torch-threads", "1", "--work-dir", str(self.root / name)]
        if token_file:
            args += ["--token-file", str(token_file)]
        if tls_ca:
            args += ["--tls-ca", str(tls_ca)]
        worker = Process(args, self.root / f"{name}.log")
        self.processes.append(worker)
        worker.wait_for(r"registered", timeout=120)

    def token(self, role: str, name: str) -> str:
        out = subprocess.run(
            [str(BIN / "stylefarm-coordinator"), "token", "create", "--role", role, "--name", name, "--data-dir", str(self.data)],
            check=True, capture_output=True, text=True,
        )
        return out.stdout.strip()

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.stop()


def certificates(dir: Path) -> Dict[str, Path]:
    """A CA and a server certificate for localhost (PEM), made with `cryptography`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stylefarm test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": dir / "ca.pem", "cert": dir / "server.pem", "key": dir / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def ffmpeg() -> str:
    """The ffmpeg the coordinator finds too (STYLEFARM_FFMPEG, else the setup's static build)."""
    configured = os.environ.get("STYLEFARM_FFMPEG")
    cached = Path(os.environ.get("STYLEFARM_CACHE", Path.home() / ".cache" / "stylefarm")) / "bin" / "ffmpeg"
    return configured or (str(cached) if cached.is_file() else "ffmpeg")
