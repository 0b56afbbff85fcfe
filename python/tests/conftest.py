"""Fixtures: a real farm (the project's coordinator and worker binaries) for
the whole session, and a second one with TLS and tokens required."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator

import pytest

from farmtools import SAMPLES, Farm, certificates


@pytest.fixture(scope="session")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """An open coordinator on loopback with one CPU worker."""
    f = Farm(tmp_path_factory.mktemp("farm"))
    try:
        f.start_worker()
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="session")
def samples() -> Dict[str, Path]:
    found = {p.stem: p for p in SAMPLES.glob("*.*") if p.suffix in (".png", ".jpg")}
    assert {"chelsea", "coffee", "retina"} <= set(found), f"sample images missing in {SAMPLES} (run scripts/setup.sh)"
    return found


@pytest.fixture(scope="session")
def secure_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, object]]:
    """A coordinator with TLS and tokens required, and a worker that uses a worker token."""
    root = tmp_path_factory.mktemp("secure")
    certs = certificates(root)
    f = Farm(root, ["--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"]), "--auth", "required"], scheme="https")
    try:
        tokens = {role: f.token(role, f"py-{role}") for role in ("submit", "worker", "admin")}
        files = {}
        for role, token in tokens.items():
            files[role] = root / f"{role}.token"
            files[role].write_text(token + "\n")
        f.start_worker("secure-worker", token_file=files["worker"], tls_ca=certs["ca"])
        yield {"farm": f, "ca": certs["ca"], "tokens": tokens, "token_files": files}
    finally:
        f.stop()
