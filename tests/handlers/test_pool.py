"""The presignature pool against a real broker: the bucket mirror, reservations, counts."""

from __future__ import annotations

import anyio
import pytest

from handlers import withdrawals as wq
from handlers.jetstream import close, connect
from ops.scheduler import PresignaturePool, SchedulerConfig

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture
def anyio_backend():
    return "asyncio"  # nats-py is asyncio-only


async def _pool(url: str):
    nc = await connect(url, "pool-test")
    js = nc.jetstream()
    await wq.ensure_withdrawal_streams(js)
    kv = await wq.presigs_bucket(js)
    return nc, kv, PresignaturePool(None, kv, SchedulerConfig())  # no ceremonies here: nothing is made


async def _mirrored(pool: PresignaturePool, key: str, quorum: tuple[int, ...], n: int) -> None:
    with anyio.fail_after(5):
        while pool._known is None or await pool.count(key, quorum) != n:
            await anyio.sleep(0.02)


async def test_mirror_reserves_each_presignature_once_and_counts_without_listing(nats_server):
    nc, kv, pool = await _pool(nats_server.url)
    try:
        for pid in ("a", "b", "c", "d"):
            await kv.put(f"key1.1-2.{pid}", b"ready")
        await kv.put("key1.1-3.e", b"ready")  # another quorum's
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.watch)
            await _mirrored(pool, "key1", (1, 2), 4)
            assert await pool.count("key1", (1, 3)) == 1

            taken: list[str | None] = []

            async def take() -> None:
                taken.append(await pool.reserve("key1", (1, 2)))

            async with anyio.create_task_group() as many:  # concurrent reservations never share one
                for _ in range(6):
                    many.start_soon(take)
            assert sorted(t for t in taken if t) == ["a", "b", "c", "d"] and taken.count(None) == 2
            await _mirrored(pool, "key1", (1, 2), 0)
            assert sorted(await kv.keys()) == ["key1.1-3.e"]

            await pool.give_back("key1", (1, 2), "b")  # seen through the watch
            await _mirrored(pool, "key1", (1, 2), 1)
            assert await pool.reserve("key1", (1, 2)) == "b"
            tg.cancel_scope.cancel()
        assert pool._known is None  # stopped: back to listing the bucket
        assert await pool.count("key1", (1, 3)) == 1
    finally:
        await close(nc)


async def test_a_stale_mirror_entry_is_skipped(nats_server):
    nc, kv, pool = await _pool(nats_server.url)
    other = PresignaturePool(None, kv, SchedulerConfig())  # another worker, listing the bucket
    try:
        await kv.put("key1.1-2.a", b"ready")
        await kv.put("key1.1-2.b", b"ready")
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.watch)
            await _mirrored(pool, "key1", (1, 2), 2)
            first = await other.reserve("key1", (1, 2))
            # whichever the mirror tries first, it never returns the one the other worker holds
            mine = [await pool.reserve("key1", (1, 2)), await pool.reserve("key1", (1, 2))]
            assert first not in mine and sorted(filter(None, mine)) == sorted({"a", "b"} - {first})
            tg.cancel_scope.cancel()
    finally:
        await close(nc)
