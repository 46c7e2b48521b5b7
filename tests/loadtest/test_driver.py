"""Issuing load on schedule and matching results to requests, with the broker faked or private."""

from __future__ import annotations

import time

import anyio
import pytest

from handlers import withdrawals as wq
from handlers.jetstream import PublishError, close, connect
from loadtest.driver import Load, LoadSpec, Pending, Results
from loadtest.withdrawals import eth_request
from schemas.withdrawal import WithdrawalResult

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture
def anyio_backend():
    return "asyncio"  # nats-py is asyncio-only


def pending(count: int) -> list[Pending]:
    return [Pending(eth_request("key-1", f"r{n}", n)) for n in range(count)]


async def answering(load: Load, after: float = 0.0):
    """A submit that answers each request as signed ``after`` seconds later (the worker and parties, faked)."""
    by_id = {p.request.request_id: p for p in load.pending}

    async def submit(request):
        async def answer():
            await anyio.sleep(after)
            by_id[request.request_id].settle(time.perf_counter(), "signed", 1)

        tg.start_soon(answer)

    async with anyio.create_task_group() as tg:
        load.submit = submit
        await load.run()


async def test_an_open_loop_issues_on_schedule_and_not_after_the_duration():
    load = Load(pending(10), LoadSpec(rate=20.0, concurrency=None, duration=0.42, timeout=5.0), None)
    await answering(load)
    fates = [p.fate(load.t0) for p in load.pending]
    issued = [f.issued for f in fates if f.issued is not None]
    assert len(issued) == 9  # due at 0.00, 0.05, ... 0.40; the one due at 0.45 is past the duration
    for k, t in enumerate(issued):
        assert k / 20 - 0.001 <= t <= k / 20 + 0.05, (k, t)
    assert fates[9].issued is None and fates[9].outcome is None
    assert all(f.outcome == "signed" for f in fates[:9])


async def test_rate_zero_sends_everything_at_once():
    load = Load(pending(50), LoadSpec(rate=0.0, concurrency=None, duration=10.0, timeout=5.0), None)
    await answering(load)
    assert max(p.issued for p in load.pending) - load.t0 < 0.05
    assert load.finished == 50


async def test_a_closed_loop_never_has_more_than_its_concurrency_in_flight():
    load = Load(pending(12), LoadSpec(rate=None, concurrency=3, duration=10.0, timeout=5.0), None)
    peak = 0

    async def watch():
        nonlocal peak
        while True:
            peak = max(peak, load.issued - load.finished)
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        await answering(load, after=0.03)
        tg.cancel_scope.cancel()
    assert peak == 3 and load.finished == 12


async def test_requests_without_a_result_in_time_are_lost_and_publish_failures_are_counted():
    load = Load(pending(3), LoadSpec(rate=0.0, concurrency=None, duration=10.0, timeout=0.2), None)

    async def submit(request):
        if request.request_id == "r2":
            raise PublishError("conclave.withdrawals.0", "broker unavailable for 60s")

    load.submit = submit
    t0 = time.monotonic()
    await load.run()
    assert 0.2 <= time.monotonic() - t0 < 1.0
    assert [p.outcome for p in load.pending] == ["lost", "lost", "publish_error"]


async def test_results_and_dead_letters_are_matched_by_request_id(nats_server):
    nc = await connect(nats_server.url, "test")
    try:
        results = Results()
        mine = results.expect(Pending(eth_request("key-1", "mine", 1)))
        failed = results.expect(Pending(eth_request("key-1", "doomed", 2)))
        async with results.listening(nc):
            await nc.publish(wq.result_subject("someone-else"), WithdrawalResult("someone-else", "signed").encode())
            await nc.publish(wq.result_subject("mine"), WithdrawalResult("mine", "signed", attempts=2).encode())
            await nc.publish(wq.result_subject("mine"), WithdrawalResult("mine", "failed").encode())  # not the first
            bad = WithdrawalResult("doomed", "failed", reason="gave up", attempts=4).encode()
            await nc.publish(wq.result_subject("doomed"), bad)
            await nc.publish(wq.deadletter_subject("doomed"), bad)
            await nc.publish(wq.result_subject("garbled"), b"{not json")
            with anyio.fail_after(5):
                await mine.done.wait()
                await failed.done.wait()
                while results.malformed == 0 or not failed.deadlettered:
                    await anyio.sleep(0.01)
        assert (mine.outcome, mine.attempts, mine.deadlettered) == ("signed", 2, False)
        assert (failed.outcome, failed.attempts, failed.reason, failed.deadlettered) == ("failed", 4, "gave up", True)
        assert results.foreign == 1 and results.malformed == 1
    finally:
        await close(nc)
