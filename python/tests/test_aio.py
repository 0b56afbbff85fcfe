"""The asyncio client: the same flow as the blocking one, awaited."""

from __future__ import annotations

import asyncio

import pytest

import stylefarm
from stylefarm import BatchState, EventKind
from stylefarm.aio import Client

from farmtools import PROGRESSING, SMALL


def test_aio_submit_watch_wait_fetch(farm, samples, tmp_path):
    async def main():
        async with Client(farm.url) as client:
            batch = await client.submit([samples["coffee"]], [samples["retina"], samples["gravel"]], name="aio", **PROGRESSING)
            assert batch.counts.total == 2
            kinds = [event.kind async for event in batch.watch()]
            assert kinds[-1] == EventKind.BATCH_FINISHED and EventKind.PROGRESS in kinds
            await batch.wait(timeout=60)
            assert batch.state == BatchState.SUCCEEDED
            files = await batch.fetch(tmp_path / "aio")
            assert sum(p.name == "output.png" for p in files) == 2
            listed = await client.batches(limit=5)
            assert batch.id in {b.id for b in listed}
            with pytest.raises(stylefarm.NotFound):
                await client.batch("b999999")
            with pytest.raises(stylefarm.InvalidArgument) as bad:
                await client.submit([samples["coffee"]], [samples["retina"]], size=9000)
            assert bad.value.field == "jobs[0].settings.size"
            workers = await client.workers()
            assert any(w.name == "py-worker" for w in workers)

    asyncio.run(main())


def test_aio_many_batches_at_once(farm, samples):
    """Three submits and waits in flight together on one channel."""

    async def main():
        async with Client(farm.url) as client:
            batches = await asyncio.gather(
                *(client.submit([samples["chelsea"]], [samples[s]], **SMALL) for s in ("retina", "gravel", "coffee"))
            )
            done = await asyncio.gather(*(b.wait(timeout=120) for b in batches))
            assert [b.state for b in done] == [BatchState.SUCCEEDED] * 3

    asyncio.run(main())


def test_aio_cancel(farm, samples):
    async def main():
        async with Client(farm.url) as client:
            batch = await client.submit([samples["chelsea"]], [samples["retina"]], size=64, iterations=5000)
            async for event in batch.watch():
                if event.kind == EventKind.PROGRESS:
                    break
            await batch.cancel()
            with pytest.raises(stylefarm.BatchCancelled):
                await batch.wait(timeout=120)

    asyncio.run(main())
