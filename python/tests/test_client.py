"""The blocking client against a real coordinator and worker."""

from __future__ import annotations

import json
import struct
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import stylefarm
from stylefarm import BatchState, EventKind, JobState

from farmtools import BIN, PROGRESSING, SMALL


def png_size(path: Path) -> tuple:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_submit_watch_wait_fetch(farm, samples, tmp_path):
    with stylefarm.Client(farm.url) as client:
        batch = client.submit(
            contents=[samples["chelsea"], samples["coffee"]], styles=[samples["retina"]],
            name="py-e2e", labels={"shot": "010"}, **PROGRESSING,
        )
        assert batch.id.startswith("b") and batch.counts.total == 2
        assert batch.info.labels == {"shot": "010"}
        events = list(batch.watch())
        kinds = [e.kind for e in events]
        assert kinds[-1] == EventKind.BATCH_FINISHED
        assert EventKind.SUCCEEDED in kinds
        progress = [e for e in events if e.kind == EventKind.PROGRESS]
        assert progress, f"no progress events in {kinds}"
        rows = [r for e in progress for r in e.progress.rows]
        assert rows and all(r.total > 0 for r in rows), "progress carries the losses"
        assert {e.job.name for e in events if e.job} == {"chelsea-x-retina", "coffee-x-retina"}
        assert batch.wait(timeout=60) is batch
        assert batch.state == BatchState.SUCCEEDED and batch.counts.succeeded == 2
        jobs = batch.jobs
        assert all(j.state == JobState.SUCCEEDED and j.result is not None for j in jobs)
        assert all(j.params["size"] == 48 and j.params["iterations"] == 30 for j in jobs)
        files = batch.fetch(tmp_path / "out")
        names = {p.name for p in files}
        assert {"output.png", "trace.jsonl", "metadata.json"} <= names, names
        for image in (p for p in files if p.name == "output.png"):
            assert max(png_size(image)) == 48
        job_dirs = {p.parent.name for p in files if p.name == "output.png"}
        assert job_dirs == {f"{j.id}-{j.name}" for j in jobs}
        trace = [json.loads(line) for line in next(p for p in files if p.name == "trace.jsonl").read_text().splitlines()]
        assert trace and trace[-1]["iteration"] >= 1
        metadata = next(p for p in files if p.name == "metadata.json").read_text()
        assert json.loads(metadata)["farm"]["content"].startswith("sha256:")
        assert str(farm.data) not in metadata and "weights_path" not in metadata, "no internal paths in what a submitter gets"


def test_uploads_once_and_request_ids_make_submits_idempotent(farm, samples):
    with stylefarm.Client(farm.url) as client:
        request_id = f"py-{uuid.uuid4()}"
        first = client.submit([samples["astronaut"]], [samples["retina"]], request_id=request_id, **SMALL)
        assert first.uploaded, "a new image is uploaded"
        again = client.submit([samples["astronaut"]], [samples["retina"]], request_id=request_id, **SMALL)
        assert again.id == first.id, "the same request id returns the first batch"
        assert again.uploaded == (), "nothing is uploaded twice"
        other = client.submit([samples["astronaut"]], [samples["retina"]], **SMALL)
        assert other.id != first.id
        for b in (first, other):
            b.wait(timeout=120)


def test_explicit_jobs_and_per_job_knobs(farm, samples):
    with stylefarm.Client(farm.url) as client:
        batch = client.submit(
            jobs=[
                stylefarm.JobSpec(content=samples["chelsea"], styles=[samples["retina"], samples["coffee"]],
                                  name="blend", params={"style_blend_weights": [0.7, 0.3]}),
                stylefarm.JobSpec(content=samples["coffee"], styles=[samples["retina"]], name="big", params={"size": 56}),
            ],
            preset="gatys", **SMALL,
        )
        jobs = {j.name: j for j in batch.jobs}
        assert jobs["blend"].params["style_blend_weights"] == [0.7, 0.3]
        assert jobs["big"].params["size"] == 56 and jobs["blend"].params["size"] == 48
        assert jobs["big"].params["preset"] == "gatys"
        batch.wait(timeout=120)


def cli_error(farm, *args: str) -> str:
    out = subprocess.run([str(BIN / "stylefarm"), "--coordinator", farm.url, *args], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr  # the CLI's exit code for invalid input
    return out.stderr.strip().splitlines()[-1].removeprefix("error: ")


def test_errors_carry_the_code_and_the_field_as_the_cli_says_them(farm, samples):
    with stylefarm.Client(farm.url) as client:
        with pytest.raises(stylefarm.InvalidArgument) as bad_size:
            client.submit([samples["chelsea"]], [samples["retina"]], size=9000)
        assert bad_size.value.field == "jobs[0].settings.size"  # the coordinator's path to it
        assert "8192" in bad_size.value.message
        cli = cli_error(farm, "submit", "--content", str(samples["chelsea"]), "--style", str(samples["retina"]), "--size", "9000")
        assert bad_size.value.message == cli, "the same words as the CLI"

        with pytest.raises(stylefarm.InvalidArgument) as bad_enum:
            client.submit([samples["chelsea"]], [samples["retina"]], content_loss="huber")
        assert bad_enum.value.field is not None and "huber" in bad_enum.value.message

        with pytest.raises(stylefarm.InvalidArgument) as unknown:
            client.submit([samples["chelsea"]], [samples["retina"]], sise=64)
        assert unknown.value.field == "sise" and "did you mean size" in unknown.value.message

        with pytest.raises(stylefarm.InvalidArgument) as priority:
            client.submit([samples["chelsea"]], [samples["retina"]], priority=5000, **SMALL)
        assert priority.value.field == "priority"
        assert priority.value.code.name == "INVALID_ARGUMENT"

        with pytest.raises(stylefarm.InvalidArgument) as missing:
            client.submit(["/nonexistent/photo.png"], [samples["retina"]])
        assert missing.value.field == "contents"

        with pytest.raises(stylefarm.InvalidArgument) as outside:
            client.submit(["s3://someone-elses-bucket/a.png"], [samples["retina"]], **SMALL)
        assert outside.value.field is not None

        with pytest.raises(stylefarm.InvalidArgument) as hook:
            client.submit([samples["chelsea"]], [samples["retina"]], notify=["https://hooks.example/x"], **SMALL)
        assert hook.value.field == "notify[0]" and "--webhook-allow" in hook.value.message
        with pytest.raises(stylefarm.InvalidArgument) as one_string:
            client.submit([samples["chelsea"]], [samples["retina"]], notify="https://hooks.example/x", **SMALL)
        assert one_string.value.field == "notify"
        with pytest.raises(stylefarm.InvalidArgument) as on:
            client.submit([samples["chelsea"]], [samples["retina"]], notify_on="sometimes", **SMALL)
        assert on.value.field == "notify_on" and "failures" in on.value.message

        with pytest.raises(stylefarm.NotFound):
            client.batch("b999999")
        with pytest.raises(stylefarm.NotFound):
            client.job("j999999")

    with pytest.raises(stylefarm.InvalidArgument) as url:
        stylefarm.Client("ftp://farm:50051")
    assert url.value.field == "url"


def test_unreachable_coordinator_is_unavailable():
    with stylefarm.Client("http://127.0.0.1:9", retry_for=0.5, timeout=2) as client:
        started = time.monotonic()
        with pytest.raises(stylefarm.Unavailable):
            client.batches()
        assert time.monotonic() - started < 10


def test_cancel_a_running_batch(farm, samples):
    with stylefarm.Client(farm.url) as client:
        batch = client.submit([samples["chelsea"]], [samples["retina"]], size=64, iterations=5000)
        for event in batch.watch():
            if event.kind == EventKind.PROGRESS:
                break
        result = batch.cancel()
        assert result.cancelled_queued + result.signalled_running == 1
        with pytest.raises(stylefarm.BatchCancelled) as cancelled:
            batch.wait(timeout=120)
        assert cancelled.value.batch is batch and batch.state == BatchState.CANCELLED


def test_cancel_one_job_of_a_batch_no_worker_matches(farm, samples):
    with stylefarm.Client(farm.url) as client:
        # no worker has the label: the jobs stay queued, so cancelling is immediate
        batch = client.submit([samples["chelsea"], samples["coffee"]], [samples["retina"]], requires=["pool=nowhere"], **SMALL)
        assert batch.info.requires == ("pool=nowhere",)
        first, second = batch.jobs
        assert batch.cancel_job(first.id).state == JobState.CANCELLED
        assert client.job(second.id).state == JobState.QUEUED
        assert batch.refresh().counts.cancelled == 1
        assert batch.cancel().cancelled_queued == 1
        with pytest.raises(stylefarm.BatchCancelled):
            batch.wait(timeout=60)
        assert batch.counts.cancelled == 2


def test_pause_priority_resume_retry_delete(farm, samples, tmp_path):
    with stylefarm.Client(farm.url) as client:
        batch = client.submit([samples["rocket"]], [samples["retina"]], **SMALL)
        assert batch.pause().state == BatchState.PAUSED
        assert batch.set_priority(7).info.priority == 7
        assert client.batch(batch.id).state == BatchState.PAUSED
        assert batch.id in {b.id for b in client.batches(state=["paused"])}
        with pytest.raises(stylefarm.InvalidArgument) as bad:
            batch.set_priority(100_000)
        assert bad.value.field == "priority"
        batch.resume()
        batch.wait(timeout=120)
        assert batch.retry() == 0  # nothing failed
        assert batch.fetch(tmp_path / "before")
        removed = batch.delete()
        assert removed.jobs_removed == 1 and removed.objects_removed >= 3
        with pytest.raises(stylefarm.NotFound):
            client.batch(batch.id)
        assert batch.delete().jobs_removed == 0, "deleting again is fine"


def test_a_failed_job_raises_with_its_reason_and_retries(farm, samples):
    with stylefarm.Client(farm.url) as client:
        # an input inside the store that is not there: the job fails on the worker, not at submit
        batch = client.submit([f"{farm.store_url}/nothing-here.png"], [samples["retina"]], max_attempts=1, **SMALL)
        with pytest.raises(stylefarm.BatchFailed) as failed:
            batch.wait(timeout=120)
        (job_id, reason), = failed.value.failures.items()
        assert reason and batch.state == BatchState.FAILED
        assert batch.retry() == 1
        assert batch.state in (BatchState.QUEUED, BatchState.RUNNING)
        with pytest.raises(stylefarm.BatchFailed):
            batch.wait(timeout=120)
        job = client.job(job_id)
        assert len(job.attempts) == 2, "the retried job keeps its first attempt in its history"


def test_workers_and_their_controls(farm):
    with stylefarm.Client(farm.url) as client:
        (worker,) = [w for w in client.workers() if w.name == "py-worker"]
        assert worker.connected and worker.enabled and worker.devices[0].name == "cpu"
        # how busy the device is arrives with the worker's heartbeats
        deadline = time.monotonic() + 20
        while worker.devices[0].busy_fraction is None and time.monotonic() < deadline:
            time.sleep(0.2)
            (worker,) = [w for w in client.workers() if w.name == "py-worker"]
        assert 0.0 <= worker.devices[0].busy_fraction <= 1.0, worker.devices
        assert client.control_worker(worker.id, "disable").enabled is False
        assert client.control_worker(worker.id, stylefarm.WorkerAction.ENABLE).enabled is True
        with pytest.raises(stylefarm.FailedPrecondition):
            client.forget_worker(worker.id)  # it is connected
        with pytest.raises(ValueError):
            client.control_worker(worker.id, "reboot")


def test_progress_bar_with_and_without_tqdm(farm, samples, capsys, monkeypatch):
    with stylefarm.Client(farm.url) as client:
        batch = client.submit([samples["chelsea"], samples["coffee"]], [samples["gravel"]], **SMALL)
        batch.wait(timeout=120, progress=True)
        assert "2/2" in capsys.readouterr().err
        monkeypatch.setitem(__import__("sys").modules, "tqdm.auto", None)  # as if tqdm were not installed
        batch = client.submit([samples["chelsea"], samples["coffee"]], [samples["hubble_deep_field"]], **SMALL)
        batch.wait(timeout=120, progress=True)
        err = capsys.readouterr().err
        assert "2/2 jobs" in err


def test_wait_times_out(farm, samples):
    with stylefarm.Client(farm.url) as client:
        batch = client.submit([samples["chelsea"]], [samples["retina"]], size=64, iterations=5000)
        try:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                batch.wait(timeout=1.5)
            assert time.monotonic() - started < 10
        finally:
            batch.cancel()


def test_watch_and_wait_carry_on_across_a_coordinator_restart(tmp_path, samples):
    from farmtools import Farm

    own = Farm(tmp_path / "restart")
    try:
        own.start_worker("restart-worker")
        with stylefarm.Client(own.url) as client:
            batch = client.submit([samples["chelsea"]], [samples["retina"]], size=48, iterations=60)
            events = batch.watch()
            kinds = []
            for event in events:
                kinds.append(event.kind)
                if event.kind == EventKind.PROGRESS:
                    own.restart_coordinator()
                    break
            kinds += [e.kind for e in events]  # the same watch, after the restart
            assert kinds[-1] == EventKind.BATCH_FINISHED
            assert kinds.count(EventKind.SNAPSHOT) >= 2, "the reconnected watch starts with the jobs' state again"
            assert batch.wait(timeout=120).state == BatchState.SUCCEEDED
            assert client.batch(batch.id).counts.succeeded == 1
    finally:
        own.stop()


def test_a_video_submit_renders_a_clip(farm, samples, tmp_path):
    from farmtools import ffmpeg

    clip = tmp_path / "clip.mp4"
    subprocess.run([ffmpeg(), "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=4", "-t", "1",
                    "-pix_fmt", "yuv420p", str(clip)], check=True)
    with stylefarm.Client(farm.url) as client:
        with pytest.raises(stylefarm.InvalidArgument) as bad:
            client.submit_video(clip, [samples["retina"]], video_params={"temporal_wieght": 1.0})
        assert bad.value.field == "temporal_wieght"
        batch = client.submit_video(clip, [samples["retina"]], size=32, iterations=3,
                                    video_params={"first_iterations": 3, "frame_iterations": 2})
        assert batch.name == "clip"
        tasks = [j.task for j in batch.jobs]
        assert len(tasks) > 4 and all(tasks), "a clip is planned as decode, frames, flows and an assembly"
        batch.wait(timeout=600)
        files = batch.fetch(tmp_path / "video")
        assert tmp_path / "video" / "clip-stylised.mp4" in files
        assert (tmp_path / "video" / "clip-stylised.mp4").stat().st_size > 1000
