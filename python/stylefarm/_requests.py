"""Building requests, shared by the blocking and the asyncio clients: inputs
(local files hashed for upload, store URLs used as they are), render knobs,
explicit jobs, the submit request, upload chunks, and writing fetched outputs.

Nothing here does I/O on the network, so both clients send exactly the same
messages.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import InvalidArgument
from .v1 import stylefarm_pb2 as pb

PathLike = Union[str, "os.PathLike[str]"]
Input = Union[str, "os.PathLike[str]"]

# a URL of a scheme the farm's storage knows (core/src/schemes.rs STORE_SCHEMES, checked by
# the tests) is passed as a URL; anything else is a local path
STORE_SCHEMES = ("file", "s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "memory", "http", "https")
URL_SCHEMES = tuple(f"{scheme}://" for scheme in STORE_SCHEMES)
CHUNK_BYTES = 1 << 20

PRESETS = ("keras", "gatys")

# Every render knob: the fields of the engine's RenderParams (core/src/params.rs)
# besides the preset, with the Python types they take. Values are checked by the
# coordinator with the engine's own rules, so errors read exactly as the CLI's
# (`invalid `size`: 9000 is outside the limits 16..=8192 px`).
KNOBS: Dict[str, str] = {
    "size": "int: long side of the output in pixels",
    "iterations": "int: at the finest scale (with automatic scales: at the coarsest, halving on each finer one, at least 50)",
    "content_layers": "list[str]: e.g. ['block5_conv2'] or ['relu4_2']",
    "content_weight": "float",
    "content_loss": "str: sum (keras) or mse (neural-style)",
    "style_layers": "list[str]",
    "style_weight": "float",
    "style_weighting": "str: split or per_layer",
    "style_layer_weights": "list[float]: one per style layer",
    "style_loss": "str: keras or mse",
    "style_resize": "str: content_size or long_side",
    "style_scale": "float",
    "style_blend_weights": "list[float]: one per style image",
    "tv_weight": "float",
    "tv_exponent": "float",
    "init": "str: content or random",
    "seed": "int",
    "pooling": "str: max or avg",
    "preserve_colors": "bool: keep the content's colours",
    "scales": "int: coarse-to-fine scales (1 = one; 0 = chosen from the size, the default)",
    "tile_size": "int: longest tile side in pixels; a scale longer than this renders as tiles across the farm (0 = only when it does not fit a device)",
    "tile_overlap": "int: pixels neighbouring tiles share (0 = an eighth of the tile, at least 32)",
    "print": "str: a print master beside output.png: png16, tiff8 or tiff16 (none, the default: only output.png)",
    "scale_iterations": "list[int]: iterations at each coarser scale, coarsest first",
    "optimizer": "dict: {'kind': 'lbfgs', ...} or {'kind': 'adam', 'lr': 10.0, ...}",
    "snapshot_every": "int: a snapshot (and animation frame) every N iterations",
    "weights": "str: default, or a URL the workers can fetch",
    "normalization": "str: caffe or torchvision",
}

# VideoParams (core/src/video.rs)
VIDEO_KNOBS: Dict[str, str] = {
    "temporal_weight": "float",
    "first_iterations": "int: iterations of a segment's first frame",
    "frame_iterations": "int: iterations of every later frame",
    "segment_frames": "int",
    "overlap": "int: frames shared by neighbouring segments",
    "start_s": "float",
    "duration_s": "float",
}


@dataclass(frozen=True)
class JobSpec:
    """One explicit job (a manifest's ``[[jobs]]``): a content, its styles,
    its own knobs over the batch's, and more worker requirements."""

    content: Input
    styles: Sequence[Input]
    name: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    requires: Sequence[str] = ()


def is_url(text: Input) -> bool:
    return isinstance(text, str) and text.startswith(URL_SCHEMES)


def check_knobs(knobs: Mapping[str, Any], allowed: Mapping[str, str], where: str) -> Dict[str, Any]:
    """Drops ``None`` values; an unknown name is refused naming it (as the engine does)."""
    out: Dict[str, Any] = {}
    for name, value in knobs.items():
        if name not in allowed:
            close = difflib.get_close_matches(name, list(allowed), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise InvalidArgument(f"invalid `{name}`: unknown {where}{hint}", field=name)
        if value is not None:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def settings(preset: Optional[str], knobs: Mapping[str, Any]) -> Any:
    """RenderSettings: the preset, then the knobs as params_json (resolved by the coordinator)."""
    if preset is not None and preset not in PRESETS:
        raise InvalidArgument(f"invalid `preset`: `{preset}` is not one of {', '.join(PRESETS)}", field="preset")
    try:
        params_json = json.dumps(dict(knobs)) if knobs else ""
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"invalid `params`: not JSON: {e}", field="params") from e
    return pb.RenderSettings(preset=preset or "", params_json=params_json)


@dataclass
class LocalFile:
    path: Path
    sha256: str
    size: int
    video: bool


def hash_file(path: Path) -> Tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


class Inputs:
    """Every input of a submit: refs for the request, and the local files to
    upload (each distinct content once)."""

    def __init__(self) -> None:
        self.refs: Dict[str, Any] = {}
        self.local: Dict[str, LocalFile] = {}

    def add(self, item: Input, field_name: str, video: bool = False) -> Any:
        key = os.fspath(item)
        if key in self.refs:
            return self.refs[key]
        if is_url(item):
            ref = pb.ImageRef(url=key)
        else:
            path = Path(key).expanduser()
            if not path.is_file():
                raise InvalidArgument(f"invalid `{field_name}`: cannot read {path}: no such file", field=field_name)
            try:
                sha, size = hash_file(path)
            except OSError as e:
                raise InvalidArgument(f"invalid `{field_name}`: cannot read {path}: {e.strerror or e}", field=field_name) from e
            self.local.setdefault(sha, LocalFile(path, sha, size, video))
            ref = pb.ImageRef(sha256=sha)
        self.refs[key] = ref
        return ref


def upload_messages(file: LocalFile) -> Iterator[Any]:
    """The UploadImage stream: a header, then the file in 1 MiB chunks (read as sent)."""
    header = pb.UploadHeader(filename=file.path.name, size_bytes=file.size, sha256=file.sha256, video=file.video)
    yield pb.UploadImageRequest(header=header)
    with open(file.path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            yield pb.UploadImageRequest(chunk=block)


def stem(item: Input) -> str:
    text = os.fspath(item)
    if is_url(text):
        name = text.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]
    else:
        name = Path(text).stem
    return name[:60]


@dataclass
class Submit:
    """A batch being built: the request and the inputs it needs uploaded."""

    request: Any
    inputs: Inputs


def batch_request(
    *,
    contents: Sequence[Input],
    styles: Sequence[Input],
    jobs: Sequence[JobSpec],
    name: str,
    priority: int,
    labels: Optional[Mapping[str, str]],
    requires: Sequence[str],
    notify: Sequence[str],
    notify_on: Optional[str],
    max_attempts: int,
    time_limit_s: int,
    request_id: Optional[str],
    preset: Optional[str],
    knobs: Mapping[str, Any],
) -> Submit:
    """Every content × every style (one job each, named ``content-x-style``), then the explicit jobs."""
    if isinstance(contents, (str, os.PathLike)) or isinstance(styles, (str, os.PathLike)):
        raise InvalidArgument("invalid `contents`: give a list of files or URLs, not one string", field="contents")
    if bool(contents) != bool(styles):
        raise InvalidArgument(
            "invalid `styles`: give both contents and styles (every content is rendered with every style)",
            field="styles" if contents else "contents",
        )
    if not contents and not jobs:
        raise InvalidArgument("invalid `contents`: nothing to submit: give contents and styles, or jobs", field="contents")
    base = check_knobs(knobs, KNOBS, "render parameter")
    batch_settings = settings(preset, base)
    inputs = Inputs()
    specs: List[Any] = []
    for c in contents:
        content = inputs.add(c, "contents")
        for s in styles:
            specs.append(
                pb.JobSpec(
                    name=f"{stem(c)}-x-{stem(s)}",
                    content=content,
                    styles=[inputs.add(s, "styles")],
                    settings=batch_settings,
                )
            )
    for i, job in enumerate(jobs):
        own = check_knobs(job.params, KNOBS, f"render parameter of jobs[{i}]")
        specs.append(
            pb.JobSpec(
                name=job.name,
                content=inputs.add(job.content, f"jobs[{i}].content"),
                styles=[inputs.add(s, f"jobs[{i}].styles") for s in job.styles],
                settings=settings(preset, {**base, **own}),
                requires=list(job.requires),
            )
        )
    request = pb.SubmitBatchRequest(
        name=name,
        priority=priority,
        labels=dict(labels or {}),
        jobs=specs,
        max_attempts=max_attempts,
        request_id=request_id or new_request_id(),
        job_time_limit_s=time_limit_s,
        requires=list(requires),
        **notifications(notify, notify_on),
    )
    return Submit(request, inputs)


def video_request(
    *,
    video: Input,
    styles: Sequence[Input],
    name: Optional[str],
    priority: int,
    labels: Optional[Mapping[str, str]],
    requires: Sequence[str],
    notify: Sequence[str],
    notify_on: Optional[str],
    max_attempts: int,
    time_limit_s: int,
    request_id: Optional[str],
    preset: Optional[str],
    knobs: Mapping[str, Any],
    video_knobs: Mapping[str, Any],
) -> Submit:
    if not styles:
        raise InvalidArgument("invalid `styles`: give at least one style with a video", field="styles")
    params = check_knobs(knobs, KNOBS, "render parameter")
    video_params = check_knobs(video_knobs, VIDEO_KNOBS, "video parameter")
    inputs = Inputs()
    spec = pb.VideoSpec(
        video=inputs.add(video, "video", video=True),
        styles=[inputs.add(s, "styles") for s in styles],
        settings=settings(preset, params),
        video_params_json=json.dumps(video_params),
        name=stem(video),
    )
    request = pb.SubmitBatchRequest(
        name=name or stem(video),
        priority=priority,
        labels=dict(labels or {}),
        max_attempts=max_attempts,
        request_id=request_id or new_request_id(),
        job_time_limit_s=time_limit_s,
        video=spec,
        requires=list(requires),
        **notifications(notify, notify_on),
    )
    return Submit(request, inputs)


#: What a batch's ``notify`` URLs are told: its end, or also each job that fails for good.
NOTIFY_ON = {"batch_end": 1, "failures": 2}


def notifications(notify: Sequence[str], notify_on: Optional[str]) -> Dict[str, Any]:
    """The request's webhook fields; the coordinator checks each URL against its allowlist."""
    if isinstance(notify, (str, bytes)):
        raise InvalidArgument("invalid `notify`: give a list of URLs, not one string", field="notify")
    if notify_on is not None and notify_on not in NOTIFY_ON:
        raise InvalidArgument(
            f"invalid `notify_on`: {notify_on!r} is not one of {', '.join(NOTIFY_ON)}", field="notify_on"
        )
    return {"notify": list(notify), "notify_on": NOTIFY_ON.get(notify_on or "", 0)}


def new_request_id() -> str:
    """A fresh idempotency key: a submit retried with it returns the first batch."""
    return f"py-{uuid.uuid4()}"


_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def sanitize(name: str) -> str:
    return _SAFE.sub("_", name)


def sanitize_path(name: str) -> str:
    """Keeps sub-folders (snapshots/) but never leaves the job's folder."""
    return "/".join(sanitize(p) for p in name.split("/") if p not in ("", ".", ".."))


class OutputWriter:
    """Writes DownloadOutputs chunks of one job to ``out/JOB-NAME/``, file by
    file as they stream (nothing is held whole in memory); a video's clip is
    also copied to ``out/``, as ``stylefarm fetch`` does."""

    def __init__(self, out: Path, job_id: str, job_name: str) -> None:
        self.out = out
        self.dir = out / f"{job_id}-{sanitize(job_name)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.open: Dict[str, Any] = {}
        self.written: List[Path] = []

    def write(self, chunk: Any) -> None:
        name = sanitize_path(chunk.name)
        if not name:
            return
        f = self.open.get(name)
        if f is None:
            path = self.dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            f = self.open[name] = open(path, "wb")
        f.write(chunk.data)
        if chunk.last:
            f.close()
            del self.open[name]
            path = self.dir / name
            if name.endswith(".mp4") and "/" not in name:
                top = self.out / name
                top.write_bytes(path.read_bytes())
                self.written.append(top)
            self.written.append(path)

    def close(self) -> None:
        for f in self.open.values():
            f.close()
        self.open.clear()

