"""The wheel's build backend (PEP 517), in-tree so that the build needs
nothing beyond grpcio-tools.

It generates the gRPC stubs from ``../proto`` into ``stylefarm/v1/``, records
the SHA-256 of the .proto files they came from (``stylefarm._build``), takes
the version from the workspace's ``Cargo.toml`` and writes a pure-Python wheel
(``py3-none-any``). Nothing generated is kept in the source tree, so stubs
cannot drift from ``proto/``: every wheel is cut from the protos beside it,
and the tests compare the installed stubs with ``proto/`` again.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import sys
import tempfile
import zipfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - older build interpreters
    import tomli as tomllib

HERE = Path(__file__).resolve().parent.parent  # python/
PROTO_FILES = ["stylefarm/v1/stylefarm.proto"]


def _repo() -> Path:
    return Path(os.environ.get("STYLEFARM_REPO", HERE.parent)).resolve()


def _project() -> dict:
    with open(HERE / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _version() -> str:
    with open(_repo() / "Cargo.toml", "rb") as f:
        return tomllib.load(f)["workspace"]["package"]["version"]


def proto_sha256(proto_dir: Path) -> str:
    """One hash over every .proto the stubs come from (name and bytes)."""
    digest = hashlib.sha256()
    for name in PROTO_FILES:
        digest.update(name.encode() + b"\0")
        digest.update((proto_dir / name).read_bytes())
    return digest.hexdigest()


def _generate(out: Path) -> None:
    from grpc_tools import protoc  # build requirement
    import grpc_tools

    proto_dir = _repo() / "proto"
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {proto_dir}: {' '.join(args)}")
    (out / "stylefarm" / "v1" / "__init__.py").write_text(
        '"""stylefarm.v1: the wire contract (generated from proto/stylefarm/v1 at build time)."""\n'
    )
    from importlib.metadata import version

    (out / "stylefarm" / "_build.py").write_text(
        '"""Written by the build: what this wheel was cut from."""\n\n'
        f'VERSION = "{_version()}"\n'
        f'PROTO_SHA256 = "{proto_sha256(proto_dir)}"\n'
        f'GRPCIO_TOOLS = "{version("grpcio-tools")}"\n'
    )


def _files(generated: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    package = HERE / "stylefarm"
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".pyi", ".typed"):
            files["stylefarm/" + path.relative_to(package).as_posix()] = path.read_bytes()
    for path in sorted((generated / "stylefarm").rglob("*")):
        if path.is_file():
            files[path.relative_to(generated).as_posix()] = path.read_bytes()
    return files


def _metadata(version: str) -> str:
    project = _project()
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {version}",
        f"Summary: {project['description']}",
        f"License: {project['license']}",
        f"Requires-Python: {project['requires-python']}",
    ]
    lines += [f"Requires-Dist: {d}" for d in project["dependencies"]]
    for extra, deps in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f"Requires-Dist: {d}; extra == \"{extra}\"" for d in deps]
    readme = (HERE / project["readme"]).read_text()
    lines.append("Description-Content-Type: text/markdown")
    return "\n".join(lines) + "\n\n" + readme


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    version = _version()
    name = f"stylefarm-{version}-py3-none-any.whl"
    dist_info = f"stylefarm-{version}.dist-info"
    with tempfile.TemporaryDirectory() as tmp:
        generated = Path(tmp)
        _generate(generated)
        files = _files(generated)
    files[f"{dist_info}/METADATA"] = _metadata(version).encode()
    files[f"{dist_info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: stylefarm_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [_record_line(n, d) for n, d in files.items()] + [f"{dist_info}/RECORD,,"]
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for file_name, data in files.items():
            # fixed timestamps: the same sources make the same wheel
            info = zipfile.ZipInfo(file_name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(info, data)
    Path(wheel_directory, name).write_bytes(buffer.getvalue())
    return name


def get_requires_for_build_wheel(config_settings=None):
    return []
