"""The JetStream edge against a real, private nats-server (see the ``nats_server`` fixture)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest
from nats.js import api

from handlers.jetstream import (
    OutcomeRouter,
    MAX_MSG_SIZE,
    MPC_STREAM,
    OUT_STREAM,
    BrokerConfigError,
    close,
    PublishError,
    PullInbox,
    connect,
    ensure_party_consumer,
    ensure_streams,
    heartbeat,
    mpc_subject,
    outcome_subject,
    party_consumer_name,
    publish,
    subscribe_outcomes,
)
from ops.broker import EmbeddedNats, free_port, nats_server_binary, stop_pid

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend():
    return "asyncio"  # nats-py is asyncio-only


async def _setup(url: str, name: str = "test", parties=(1, 2)):
    nc = await connect(url, name)
    js = nc.jetstream()
    await ensure_streams(js)
    for p in parties:
        await ensure_party_consumer(js, p)
    return nc, js


async def _drain(inbox: PullInbox, want: int, timeout: float = 5.0) -> list:
    """Fetch and ack until ``want`` messages arrived (or the time is up)."""
    got = []
    with anyio.move_on_after(timeout):
        while len(got) < want:
            for m in await inbox.fetch(timeout=0.5):
                await m.ack()
                got.append(m)
    return got


def test_nats_server_binary_is_found():
    assert os.access(nats_server_binary(), os.X_OK)


async def test_ensure_is_idempotent(nats_server):
    nc = await connect(nats_server.url, "idem")
    try:
        js = nc.jetstream()
        for _ in range(2):
            await ensure_streams(js)
            await ensure_party_consumer(js, 1)
        for name in (MPC_STREAM, OUT_STREAM):
            cfg = (await js.stream_info(name)).config
            assert cfg.storage == api.StorageType.FILE
            assert cfg.retention == api.RetentionPolicy.LIMITS
            assert cfg.duplicate_window == pytest.approx(3600)
            assert cfg.max_age == pytest.approx(7 * 24 * 3600)
            assert cfg.max_msg_size == MAX_MSG_SIZE
        ci = await js.consumer_info(MPC_STREAM, party_consumer_name(1))
        assert sorted(ci.config.filter_subjects) == ["conclave.mpc.*.*.1", "conclave.mpc.*.*.all"]
        assert ci.config.ack_policy == api.AckPolicy.EXPLICIT
        assert ci.config.ack_wait == pytest.approx(30)
        assert ci.config.max_deliver == -1
        assert ci.config.max_ack_pending == 1024
        assert not ci.config.backoff
        assert len(await js.consumers_info(MPC_STREAM)) == 1
    finally:
        await close(nc)


async def test_ensure_updates_a_drifted_stream(nats_server):
    nc = await connect(nats_server.url, "drift")
    try:
        js = nc.jetstream()
        await js.add_stream(name=MPC_STREAM, subjects=["conclave.mpc.>"], storage=api.StorageType.FILE,
                            duplicate_window=120)
        await ensure_streams(js)
        assert (await js.stream_info(MPC_STREAM)).config.duplicate_window == pytest.approx(3600)
    finally:
        await close(nc)


async def test_ensure_concurrently_from_three_connections(nats_server):
    conns = [await connect(nats_server.url, f"c{i}") for i in range(3)]
    try:
        async def one(i, nc):
            js = nc.jetstream()
            await ensure_streams(js)
            await ensure_party_consumer(js, 1)  # all three race on the same consumer
            await ensure_party_consumer(js, 10 + i)

        async with anyio.create_task_group() as tg:
            for i, nc in enumerate(conns):
                tg.start_soon(one, i, nc)
        js = conns[0].jetstream()
        names = sorted(c.name for c in await js.consumers_info(MPC_STREAM))
        assert names == ["party-1", "party-10", "party-11", "party-12"]
    finally:
        for nc in conns:
            await close(nc)


async def test_publish_same_msg_id_is_stored_once(nats_server):
    nc, js = await _setup(nats_server.url)
    try:
        subject = mpc_subject("ex1", "r1", 1)
        first = await publish(js, subject, b"hello", "ex1/r1/0->1")
        again = await publish(js, subject, b"hello", "ex1/r1/0->1")
        assert not first.duplicate
        assert again.duplicate and again.seq == first.seq
        assert (await js.stream_info(MPC_STREAM)).state.messages == 1
        with pytest.raises(ValueError):
            await publish(js, subject, b"x", "")
    finally:
        await close(nc)


async def test_party_gets_direct_and_broadcast_only(nats_server):
    nc, js = await _setup(nats_server.url)
    try:
        await publish(js, mpc_subject("ex", "r1", 1), b"to-1", "a")
        await publish(js, mpc_subject("ex", "r1", 2), b"to-2", "b")
        await publish(js, mpc_subject("ex", "r1", None), b"all", "c")
        inbox1, inbox2 = PullInbox(js, 1), PullInbox(js, 2)
        await inbox1.bind()
        await inbox2.bind()
        got1 = await _drain(inbox1, 2)
        assert sorted(m.data for m in got1) == [b"all", b"to-1"]
        assert await inbox1.fetch(timeout=0.3) == []  # nothing else for party 1
        got2 = await _drain(inbox2, 2)
        assert sorted(m.data for m in got2) == [b"all", b"to-2"]
    finally:
        await close(nc)


async def test_bind_without_consumer_raises(nats_server):
    import nats.js.errors

    nc, js = await _setup(nats_server.url, parties=())
    try:
        with pytest.raises(nats.js.errors.NotFoundError):
            await PullInbox(js, 7).bind()
        with pytest.raises(RuntimeError):
            await PullInbox(js, 7).fetch()
    finally:
        await close(nc)


async def test_fetch_on_empty_consumer_returns_empty_list(nats_server):
    nc, js = await _setup(nats_server.url)
    try:
        inbox = PullInbox(js, 1)
        await inbox.bind()
        for batch_timeout in (0.3, 0.3):  # twice: no orphaned pull request stalls the next one
            t0 = time.monotonic()
            assert await inbox.fetch(timeout=batch_timeout) == []
            assert time.monotonic() - t0 < batch_timeout + 0.7
        await publish(js, mpc_subject("ex", "r", 1), b"late", "late")
        t0 = time.monotonic()
        got = await inbox.fetch(timeout=2.0)
        assert [m.data for m in got] == [b"late"]
        assert time.monotonic() - t0 < 1.5
    finally:
        await close(nc)


async def test_three_mib_message_round_trips(nats_server):
    nc, js = await _setup(nats_server.url)
    try:
        big = os.urandom(3 * 1024 * 1024)
        await publish(js, mpc_subject("ex", "big", 1), big, "big")
        inbox = PullInbox(js, 1, batch=4)
        await inbox.bind()
        got = await _drain(inbox, 1)
        assert len(got) == 1 and got[0].data == big
    finally:
        await close(nc)


async def test_oversized_message_fails_fast(nats_server):
    nc, js = await _setup(nats_server.url)
    try:
        t0 = time.monotonic()
        with pytest.raises(PublishError, match="conclave.mpc.ex.huge.1"):
            await publish(js, mpc_subject("ex", "huge", 1), b"x" * (MAX_MSG_SIZE + 1024), "huge")
        assert time.monotonic() - t0 < 3.0  # permanent error: not retried
    finally:
        await close(nc)


async def test_publish_gives_up_with_publish_error(nats_server):
    nc, js = await _setup(nats_server.url)
    try:
        nats_server.kill()
        with pytest.raises(PublishError, match="conclave.mpc.ex.r.1"):
            await publish(js, mpc_subject("ex", "r", 1), b"x", "gone", timeout=0.3, retry_for=1.0)
    finally:
        await close(nc)


async def test_connect_rejects_a_tiny_max_payload(tmp_path):
    server = EmbeddedNats(tmp_path / "store", max_payload=512 * 1024)
    server.start()
    try:
        with pytest.raises(BrokerConfigError, match="max_payload"):
            await connect(server.url, "small")
    finally:
        server.stop()


async def test_connect_warns_on_the_default_max_payload(tmp_path, caplog):
    server = EmbeddedNats(tmp_path / "store", max_payload=1024 * 1024)
    server.start()
    try:
        with caplog.at_level("WARNING"):
            nc = await connect(server.url, "default-sized")
        await close(nc)
        assert "max_payload=1048576" in caplog.text
    finally:
        server.stop()


async def test_connect_waits_for_a_late_broker(tmp_path):
    server = EmbeddedNats(tmp_path / "store", port=free_port(), log_file=tmp_path / "log")

    async def start_later():
        await anyio.sleep(0.8)
        await anyio.to_thread.run_sync(server.start)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(start_later)
            with anyio.fail_after(10):
                nc = await connect(server.url, "early")
        assert nc.is_connected
        await close(nc)
    finally:
        server.stop()


async def test_broker_restart_keeps_messages_and_publish_rides_it_out(nats_server):
    nc, js = await _setup(nats_server.url)
    try:
        subject = mpc_subject("ex", "r1", 1)
        await publish(js, subject, b"before", "m-before")
        port = nats_server.port

        nats_server.kill()
        assert not nats_server.running()

        async def restart_later():
            await anyio.sleep(1.0)
            await anyio.to_thread.run_sync(nats_server.start)

        async with anyio.create_task_group() as tg:
            tg.start_soon(restart_later)
            # Issued while the broker is down: publish() must retry until it is back.
            ack = await publish(js, subject, b"during", "m-during", timeout=1.0)
        assert nats_server.port == port
        assert ack.seq == 2 and not ack.duplicate
        assert nc.is_connected and nc.stats["reconnects"] >= 1

        # File storage kept the first message, and dedup state survived the restart.
        again = await publish(js, subject, b"before", "m-before")
        assert again.duplicate
        assert (await js.stream_info(MPC_STREAM)).state.messages == 2

        inbox = PullInbox(js, 1)
        await inbox.bind()
        got = await _drain(inbox, 2)
        assert [m.data for m in got] == [b"before", b"during"]
    finally:
        await close(nc)


async def test_heartbeat_marks_in_progress_until_stopped():
    class FakeMsg:
        subject = "conclave.mpc.ex.r.1"
        _ackd = False

        def __init__(self):
            self.calls = 0

        async def in_progress(self):
            self.calls += 1
            if self.calls == 2:
                raise ConnectionError("best effort: swallowed")

    for stop in (anyio.Event(), asyncio.Event()):
        msg = FakeMsg()
        with anyio.fail_after(1):  # heartbeat returns promptly once stop is set
            async with anyio.create_task_group() as tg:
                tg.start_soon(heartbeat, msg, stop, 0.05)
                await anyio.sleep(0.3)
                stop.set()
        assert msg.calls >= 3


async def test_heartbeat_extends_ack_wait(nats_server):
    """A real in_progress resets the ack timer (consumer with a short ack_wait)."""
    nc, js = await _setup(nats_server.url, parties=())
    try:
        await js.add_consumer(MPC_STREAM, durable_name="hb", ack_wait=1.0, filter_subject="conclave.mpc.>")
        await publish(js, mpc_subject("ex", "r", 1), b"slow", "slow")
        sub = await js.pull_subscribe_bind(durable="hb", stream=MPC_STREAM)
        (msg,) = await sub.fetch(1, timeout=2)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeat, msg, stop, 0.2)
            await anyio.sleep(2.2)  # > 2 x ack_wait
            info = await js.consumer_info(MPC_STREAM, "hb")
            stop.set()
        assert info.num_redelivered == 0 and info.num_ack_pending == 1
        await msg.ack()
    finally:
        await close(nc)


async def test_outcomes_published_before_and_after_subscribing_arrive(nats_server):
    nc, js = await _setup(nats_server.url, parties=())
    try:
        await publish(js, outcome_subject("ex9", 1), b"one", "o1")
        await publish(js, outcome_subject("ex9", 2), b"two", "o2")
        await publish(js, outcome_subject("other", 3), b"wrong-execution", "ox")

        async def late():
            await anyio.sleep(0.3)
            await publish(js, outcome_subject("ex9", 3), b"three", "o3")

        async with anyio.create_task_group() as tg, subscribe_outcomes(js, "ex9") as outcomes:
            tg.start_soon(late)
            got = [await outcomes.next(timeout=5) for _ in range(3)]
        assert got == [(1, b"one"), (2, b"two"), (3, b"three")]

        async with subscribe_outcomes(js, "ex9") as outcomes:
            for _ in range(3):
                await outcomes.next(timeout=5)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await outcomes.next(timeout=0.5)
            assert time.monotonic() - t0 < 2.0
        with pytest.raises(ValueError):
            async with subscribe_outcomes(js, "bad.id"):
                pass
    finally:
        await close(nc)


async def test_outcome_subscription_survives_broker_restart(nats_server):
    nc, js = await _setup(nats_server.url, parties=())
    try:
        await publish(js, outcome_subject("exr", 1), b"one", "r1")
        async with subscribe_outcomes(js, "exr") as outcomes:
            assert await outcomes.next(timeout=2) == (1, b"one")
            nats_server.kill()
            await anyio.to_thread.run_sync(nats_server.start)
            await publish(js, outcome_subject("exr", 2), b"two", "r2")
            # nats-py alone would take 10-20 s (missed heartbeats) to notice the
            # ordered consumer vanished with the broker's memory.
            t0 = time.monotonic()
            assert await outcomes.next(timeout=5) == (2, b"two")
            assert time.monotonic() - t0 < 3
            with pytest.raises(TimeoutError):
                await outcomes.next(timeout=0.3)  # resumed after seq 1: no replay of "one"
    finally:
        await close(nc)


async def test_routed_outcomes_arrive_live_and_fall_back_to_the_stream(nats_server):
    nc, js = await _setup(nats_server.url, parties=())
    try:
        router = OutcomeRouter(js, fallback_after=0.5)
        await router.start()
        await publish(js, outcome_subject("old", 1), b"before the watch", "p1")
        async with router.watch("new") as live, router.watch("old") as late:
            await publish(js, outcome_subject("new", 2), b"live", "n2")
            await publish(js, outcome_subject("other", 3), b"someone else's", "x3")
            t0 = time.monotonic()
            assert await live.next() == (2, b"live")
            assert live._stream is None  # straight off the shared subscription, no stream consumer opened
            # published before anyone listened: only the stream has it, after the fallback delay
            assert await late.next() == (1, b"before the watch")
            assert time.monotonic() - t0 >= 0.4
            # once on the stream, later outcomes come from it too, and nothing twice
            await publish(js, outcome_subject("old", 2), b"after", "p2")
            assert await late.next() == (2, b"after")
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.3):
                    await late.next()
        with pytest.raises(ValueError):
            async with router.watch("bad.id"):
                pass
    finally:
        await close(nc)


async def test_routed_outcomes_switch_to_the_stream_after_a_reconnect(nats_server):
    nc, js = await _setup(nats_server.url, parties=())
    try:
        router = OutcomeRouter(js, fallback_after=60)
        await router.start()
        async with router.watch("exr") as outcomes:
            nats_server.kill()
            await anyio.to_thread.run_sync(nats_server.start)
            await publish(js, outcome_subject("exr", 1), b"maybe missed live", "q1")
            with anyio.fail_after(5):  # not the 60 s fallback: the reconnect is noticed
                assert await outcomes.next() == (1, b"maybe missed live")
    finally:
        await close(nc)


def test_detached_server_outlives_its_starter_and_stop_pid_stops_it(tmp_path):
    port = free_port()
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from ops.broker import EmbeddedNats
        s = EmbeddedNats(Path({str(tmp_path / 'store')!r}), port={port})
        s.start(detach=True)
        print(s.pid)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.strip())
    try:
        assert EmbeddedNats.pid_alive(pid)

        async def check():
            nc = await connect(f"nats://127.0.0.1:{port}", "after-exit")
            await nc.jetstream().account_info()
            await close(nc)

        asyncio.run(check())
    finally:
        stopped = stop_pid(pid, timeout=5)
    assert stopped
    assert not EmbeddedNats.pid_alive(pid)
    assert stop_pid(pid) is False  # already gone: idempotent


def test_embedded_nats_lifecycle(tmp_path):
    server = EmbeddedNats(tmp_path / "store")
    assert server.pid is None and not server.running()
    url = server.start()
    try:
        assert url == f"nats://127.0.0.1:{server.port}" and server.running()
        assert (tmp_path / "store" / "nats-server.conf").read_text().count("max_payload: 8388608") == 1
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
    finally:
        server.stop()
    server.stop()  # idempotent
    server.kill()
    assert not server.running() and server.pid is None
