"""The installed package itself: stubs cut from this proto/, knobs that match
the engine's parameters, syntax a Python 3.9 accepts, the typing marker."""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

import stylefarm
from stylefarm.v1 import stylefarm_pb2

from farmtools import REPO


def test_stubs_match_this_proto():
    """CI builds the wheel from proto/ and fails here if the installed stubs came from another one."""
    digest = hashlib.sha256()
    name = "stylefarm/v1/stylefarm.proto"
    text = (REPO / "proto" / name).read_bytes()
    digest.update(name.encode() + b"\0" + text)
    assert stylefarm.PROTO_SHA256 == digest.hexdigest(), "the wheel's stubs were generated from another proto/: rebuild it (make wheel)"
    # and every message and service of the proto is in the stubs
    declared = set(re.findall(rb"^(?:message|enum|service) (\w+)", text, re.M))
    file = stylefarm_pb2.DESCRIPTOR
    generated = set(file.message_types_by_name) | set(file.enum_types_by_name) | set(file.services_by_name)
    assert {d.decode() for d in declared} == generated


def test_version_is_the_workspace_version():
    cargo = (REPO / "Cargo.toml").read_text()
    version = re.search(r'\[workspace\.package\][^\[]*?version = "([^"]+)"', cargo).group(1)
    assert stylefarm.__version__ == version


def struct_fields(path: Path, name: str) -> set:
    source = path.read_text()
    body = re.search(r"pub struct " + name + r" \{(.*?)\n\}", source, re.S).group(1)
    return set(re.findall(r"^\s*pub (\w+):", body, re.M))


def test_knobs_are_the_engines_parameters():
    assert set(stylefarm.KNOBS) | {"preset"} == struct_fields(REPO / "core/src/params.rs", "RenderParams")
    assert set(stylefarm.VIDEO_KNOBS) == struct_fields(REPO / "core/src/video.rs", "VideoParams")


def test_sources_parse_as_python_3_9():
    package = Path(stylefarm.__file__).parent
    for source in package.rglob("*.py"):
        ast.parse(source.read_text(), filename=str(source), feature_version=(3, 9))
    assert (package / "py.typed").exists()


def test_url_schemes_are_the_stores():
    from stylefarm import _requests

    policy = (REPO / "core/src/schemes.rs").read_text()
    schemes = re.search(r"pub const STORE_SCHEMES: \[&str; \d+\] = \[([^\]]*)\]", policy).group(1)
    assert _requests.STORE_SCHEMES == tuple(re.findall(r'"(\w+)"', schemes))
    assert _requests.is_url("http://host/a.png") and not _requests.is_url("photos/a.png")


def test_type_hints_check_with_mypy(tmp_path):
    """py.typed promises hints a checker accepts: mypy on the installed package (the generated stubs aside)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--disallow-untyped-defs", "--ignore-missing-imports", "--no-incremental",
         "--exclude", "stylefarm/v1/", "-p", "stylefarm"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"no issues found in (1[0-9]|[2-9][0-9]) source files", out.stdout), out.stdout


def test_retry_pacing_is_the_rust_clients():
    """_retry copies core::retry::Backoff (200 ms, doubling, 5 s cap): kept equal here."""
    from stylefarm import _retry

    retry = (REPO / "core/src/retry.rs").read_text()
    first_ms = int(re.search(r"pub const FIRST: Duration = Duration::from_millis\((\d+)\);", retry).group(1))
    max_s = int(re.search(r"pub const MAX: Duration = Duration::from_secs\((\d+)\);", retry).group(1))
    assert (_retry.INITIAL_S, _retry.MAX_DELAY_S, _retry.FACTOR) == (first_ms / 1000, max_s, 2.0)
    assert "1 << exponent" in retry, "core doubles its delay; so does _retry"
