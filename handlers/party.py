"""The JetStream edge of one party: pull, handle, commit, publish, ack.

For every message of the party's durable consumer, in stream order:

1. :meth:`PartyRuntime.handle` runs in a worker thread (rounds can take
   seconds); meanwhile ``in_progress()`` keeps JetStream from redelivering;
2. the runtime has committed the events and the stream sequence;
3. the recorded envelopes are published, each with its ``Nats-Msg-Id``;
4. only then is the message acked.

A crash between any two steps is safe: before 2 the message is redelivered
and handled afresh; after 2 the redelivery is recognised by its sequence and
:meth:`PartyRuntime.recover` re-sends the recorded envelopes at start-up.

Status requests are answered on ``conclave.status.<party>`` (core NATS
request/reply) from a snapshot taken between messages.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import msgpack
import nats.errors

from engine.ceremony.runtime import Outgoing, PartyRuntime, Step
from handlers.jetstream import (
    PublishError,
    PullInbox,
    close,
    connect,
    ensure_party_consumer,
    ensure_streams,
    heartbeat,
    publish,
    rewind_party_consumer,
)

__all__ = ["PartyService", "status_subject", "CRASH_ENV"]

log = logging.getLogger("conclave.party")

CRASH_ENV = "CONCLAVE_CRASH_AT"  # fault injection for tests: "<round token>:<after-commit|after-publish>"
EXPIRE_EVERY = 1.0
POISON_AFTER = 5  # failed attempts at one message before it is recorded as rejected and skipped


def _published_at(msg) -> float | None:
    try:
        return msg.metadata.timestamp.timestamp()
    except (AttributeError, TypeError, ValueError):
        return None


def status_subject(party: int) -> str:
    return f"conclave.status.{party}"


class PartyService:
    """Runs one :class:`PartyRuntime` against a NATS JetStream server until stopped."""

    def __init__(self, runtime: PartyRuntime, url: str, *, ready_file: Path | None = None,
                 crash_at: str | None = None) -> None:
        self.runtime = runtime
        self.url = url
        self.ready_file = ready_file
        self.crash_at = crash_at if crash_at is not None else os.environ.get(CRASH_ENV) or None
        self.stop = anyio.Event()
        self.ready = anyio.Event()  # set once connected, recovered and bound
        self._snapshot: dict[str, Any] = {}
        self._busy: str | None = None
        self._started = time.time()
        self._me = str(runtime.party)
        self._failures: dict[int, int] = {}  # stream sequence -> failed attempts

    # -- fault injection --
    def _maybe_crash(self, step: Step, point: str) -> None:
        if not self.crash_at:
            return
        token, _, where = self.crash_at.rpartition(":")
        if where == point and token in step.reached:
            log.warning("party %s: injected crash at %s:%s", self.runtime.party, token, point)
            os.kill(os.getpid(), signal.SIGKILL)

    async def _publish_all(self, js, outs: list[Outgoing]) -> None:
        """Publish recorded envelopes, pipelined: all are sent before any acknowledgement is awaited."""
        failed: list[tuple[int, Outgoing]] = []

        async def first_try(k: int, out: Outgoing) -> None:
            try:
                await publish(js, out.subject, out.data, out.msg_id)
            except PublishError:
                failed.append((k, out))

        if len(outs) == 1:
            await first_try(0, outs[0])
        elif outs:
            async with anyio.create_task_group() as tg:
                for k, out in enumerate(outs):
                    tg.start_soon(first_try, k, out)  # started in order, so they reach the stream in order
        for _, out in sorted(failed, key=lambda f: f[0]):
            while True:
                try:
                    await publish(js, out.subject, out.data, out.msg_id)
                    break
                except PublishError as exc:
                    # recorded envelopes must go out eventually; keep trying while we live
                    log.error("party %s: publish of %s failed, retrying: %s", self.runtime.party, out.msg_id, exc)
                    if self.stop.is_set():
                        raise
                    await anyio.sleep(1.0)

    def _refresh(self) -> None:
        snap = self.runtime.status()
        snap["pid"] = os.getpid()
        self._snapshot = snap

    async def _on_status(self, msg) -> None:
        body = dict(self._snapshot, state="busy" if self._busy else "idle", busy_with=self._busy,
                    uptime=round(time.time() - self._started, 1))
        try:
            await msg.respond(msgpack.packb(body, use_bin_type=True))
        except Exception as exc:
            log.debug("status reply failed: %r", exc)

    async def run(self) -> None:
        party = self.runtime.party
        nc = await connect(self.url, name=f"conclave-party-{party}")
        try:
            js = nc.jetstream()
            await ensure_streams(js)
            await ensure_party_consumer(js, party)
            last = await anyio.to_thread.run_sync(self.runtime.store.last_seq)
            await rewind_party_consumer(js, party, (last or 0) + 1)
            step = await anyio.to_thread.run_sync(self.runtime.recover)
            self._refresh()
            await self._publish_all(js, step.outgoing)
            inbox = PullInbox(js, party)
            await inbox.bind()
            await nc.subscribe(status_subject(party), cb=self._on_status)
            if self.ready_file is not None:
                self.ready_file.write_text(str(os.getpid()))
            self.ready.set()
            log.info("party %s ready on %s (resent %d recorded envelopes)", party, self.url, len(step.outgoing))
            await self._loop(js, inbox)
        finally:
            if self.ready_file is not None:
                self.ready_file.unlink(missing_ok=True)
            with anyio.CancelScope(shield=True):
                await close(nc)

    async def _loop(self, js, inbox: PullInbox) -> None:
        last_expire = 0.0
        drained = False  # deadlines only count once the backlog from downtime is read
        while not self.stop.is_set():
            try:
                msgs = await inbox.fetch(timeout=0.5)
            except nats.errors.ConnectionClosedError:
                log.error("party %s: connection closed; stopping", self.runtime.party)
                return
            if not msgs:
                drained = True
            elif not await self._batch(js, msgs):
                # later messages must wait for the failed one (sequence order matters):
                # have the consumer deliver again from the first uncommitted sequence
                await self._resync(js, inbox)
            now = time.monotonic()
            if drained and now - last_expire >= EXPIRE_EVERY:
                last_expire = now
                step = await anyio.to_thread.run_sync(self.runtime.expire)
                if step.outgoing:
                    await self._publish_all(js, step.outgoing)
                self._refresh()  # also picks up a newly installed policy file

    async def _resync(self, js, inbox: PullInbox) -> None:
        """Re-create the consumer from the first uncommitted sequence and bind to it again."""
        while not self.stop.is_set():
            try:
                last = await anyio.to_thread.run_sync(self.runtime.store.last_seq)
                await inbox.unsubscribe()
                await rewind_party_consumer(js, self.runtime.party, (last or 0) + 1)
                await inbox.bind()
                return
            except Exception:
                log.exception("party %s: could not rewind its consumer; retrying", self.runtime.party)
                await anyio.sleep(1.0)

    def _handle_some(self, msgs: list) -> tuple[list[tuple[Any, Step]], Exception | None]:
        """Handle messages in stream order in one worker thread, up to and including the first whose step
        has envelopes to send: recovery re-sends only a ceremony's current round, so no other step's
        envelopes may wait unpublished behind a later commit. Stops at the first failure."""
        done: list[tuple[Any, Step]] = []
        for msg in msgs:
            if self.stop.is_set():
                break  # unhandled and unacked: redelivered to the next run
            try:
                step = self.runtime.handle(msg.data, msg.subject, msg.metadata.sequence.stream, _published_at(msg),
                                           (msg.headers or {}).get("Nats-Msg-Id"))
            except Exception as exc:
                return done, exc
            done.append((msg, step))
            if step.outgoing:
                break
        return done, None

    async def _batch(self, js, msgs: list) -> bool:
        """Handle, commit, publish and ack a fetched batch; False if a message failed and must be retried.

        Messages that send nothing (echoes of our own broadcasts, ceremonies we are not part of) share
        a thread hop with the next one that does. Every message's events are committed before its
        envelopes leave and its ack follows them, so a crash anywhere is recovered as before.
        """
        mine = []
        for msg in msgs:
            if msg.subject.rsplit(".", 1)[-1] in ("all", self._me):
                mine.append(msg)
            else:  # another party's direct message: only a server without filter_subjects delivers these
                await msg.ack()
        while mine and not self.stop.is_set():
            handled, failure = await self._in_thread(mine)
            if any(step.reached or step.rejected for _, step in handled):
                self._refresh()  # before the outcome leaves: whoever reads it then sees this state
            for _, step in handled:
                self._maybe_crash(step, "after-commit")
                await self._publish_all(js, step.outgoing)
                self._maybe_crash(step, "after-publish")
            for msg, _ in handled:
                self._failures.pop(msg.metadata.sequence.stream, None)
                try:
                    await msg.ack()
                except Exception as exc:  # redelivery is harmless: the sequence is recorded
                    log.info("party %s: ack of seq %s failed: %r", self.runtime.party,
                             msg.metadata.sequence.stream, exc)
            if failure is not None:
                return await self._failed(mine[len(handled)], failure)
            mine = mine[len(handled):]
        return True

    async def _in_thread(self, msgs: list) -> tuple[list[tuple[Any, Step]], Exception | None]:
        """:meth:`_handle_some` in a worker thread (rounds can take seconds), heartbeating the messages."""
        self._busy = msgs[0].subject
        done = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(heartbeat, msgs, done)
                try:
                    return await anyio.to_thread.run_sync(self._handle_some, msgs)
                finally:
                    done.set()
        finally:
            self._busy = None

    async def _failed(self, msg, failure: Exception) -> bool:
        """A store failure on ``msg``: do not ack, do not read past it; after repeated failures, quarantine it."""
        seq = msg.metadata.sequence.stream
        log.error("party %s: could not process %s (seq %s); will retry", self.runtime.party, msg.subject, seq,
                  exc_info=failure)
        self.runtime.reset_cache()
        # counted here: a rewound consumer starts its own delivery counts afresh
        self._failures[seq] = self._failures.get(seq, 0) + 1
        if self._failures[seq] >= POISON_AFTER:
            # the same message keeps failing: record it and move on rather than stall every ceremony
            try:
                await anyio.to_thread.run_sync(self.runtime.quarantine, msg.data, msg.subject, seq,
                                               type(failure).__name__)
                await msg.ack()
                self._failures.pop(seq, None)
                return False  # the consumer still holds the unacked rest of the batch: re-read from here
            except Exception:
                log.exception("party %s: could not record seq %s as rejected either", self.runtime.party, seq)
        await anyio.sleep(1.0)
        return False
