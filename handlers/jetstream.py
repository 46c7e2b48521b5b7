"""The JetStream edge: connections, streams, consumers, publishing and reading.

Two streams carry everything between parties:

* ``CONCLAVE_MPC`` (``conclave.mpc.<execution>.<round>.<to|all>``): protocol
  messages, read by each party through its durable pull consumer ``party-<id>``.
* ``CONCLAVE_OUT`` (``conclave.out.<execution>.<party>``): ceremony outcomes,
  read by clients through ephemeral ordered consumers.

nats-py is asyncio-only, so everything here must run on the asyncio backend.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from schemas import subjects

__all__ = [
    "MPC_STREAM",
    "MPC_SUBJECTS",
    "OUT_STREAM",
    "OUT_SUBJECTS",
    "MAX_MSG_SIZE",
    "MIN_SERVER_MAX_PAYLOAD",
    "BrokerConfigError",
    "PublishError",
    "PullInbox",
    "OutcomeStream",
    "OutcomeRouter",
    "connect",
    "close",
    "ensure_streams",
    "ensure_party_consumer",
    "rewind_party_consumer",
    "party_consumer_name",
    "publish",
    "heartbeat",
    "subscribe_outcomes",
    "mpc_subject",
    "outcome_subject",
]

log = logging.getLogger(__name__)

MPC_STREAM = "CONCLAVE_MPC"
MPC_SUBJECTS = ["conclave.mpc.>"]
OUT_STREAM = "CONCLAVE_OUT"
OUT_SUBJECTS = ["conclave.out.>"]

MAX_MSG_SIZE = 4 * 1024 * 1024
# Headers and protocol framing ride on top of the payload, hence the slack.
MIN_SERVER_MAX_PAYLOAD = MAX_MSG_SIZE + 64 * 1024
# below this even an aux-info round at the default level (about 0.2 MiB per message) may not fit
MIN_SERVER_FLOOR = 1024 * 1024

_DAY = 24 * 3600.0
MAX_AGE = 7 * _DAY
# Long enough that a party resending after a crash/restart is still deduplicated.
DUPLICATE_WINDOW = 3600.0

ACK_WAIT = 30.0
MAX_ACK_PENDING = 1024

# Room to buffer a few maximum-size publishes while reconnecting (nats-py's
# default of 2 MiB would reject any 4 MiB message until the link is back).
_PENDING_SIZE = 8 * MIN_SERVER_MAX_PAYLOAD

_ERR_STREAM_NAME_IN_USE = 10058

# Failures that go away once the broker is reachable (again). APIError 503 is
# JetStream still recovering after a restart; NoStreamResponseError is "no
# responders" on a JetStream subject (stream not loaded yet).
_TRANSIENT = (
    TimeoutError,  # builtins.TimeoutError == asyncio.TimeoutError; nats.errors.TimeoutError subclasses it
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.UnexpectedEOF,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    ConnectionError,
    OSError,
)


class BrokerConfigError(RuntimeError):
    """The NATS server is reachable but configured unusably for Conclave."""


class PublishError(RuntimeError):
    """A message could not be stored in JetStream (retries exhausted or a permanent error)."""

    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(f"publish to {subject!r} failed: {reason}")
        self.subject = subject


def _token(value: str, what: str) -> str:
    """A single subject token; ValueError if it would change the subject's shape."""
    if not value or any(c in value for c in ".*> \t\r\n"):
        raise ValueError(f"{what} {value!r} is not a valid NATS subject token")
    return value


def _party_id(party: int) -> int:
    if isinstance(party, bool) or not isinstance(party, int) or party < 0:
        raise ValueError(f"party id must be a non-negative int, got {party!r}")
    return party


def mpc_subject(execution: str, round_name: str, to: int | None) -> str:
    """``conclave.mpc.<execution>.<round>.<to|all>``; ``to=None`` means broadcast.

    Raises ValueError for tokens containing ``.``, wildcards or whitespace.
    """
    return subjects.mpc_subject(_token(execution, "execution"), _token(round_name, "round"),
                                None if to is None else _party_id(to))


def outcome_subject(execution: str, party: int) -> str:
    """``conclave.out.<execution>.<party>``. Raises ValueError on a bad token."""
    return subjects.outcome_subject(_token(execution, "execution"), _party_id(party))


# --------------------------------------------------------------------------- connect


async def connect(url: str, name: str, **kw: Any) -> NATS:
    """Connect and keep reconnecting forever; waits for a broker that is not up yet.

    ``kw`` overrides any ``nats.connect`` option. Cancel the call (e.g. with
    ``anyio.fail_after``) to bound the initial wait; the half-open client is
    closed. Raises BrokerConfigError if the server's max_payload is below
    ``MIN_SERVER_FLOOR`` (1 MiB, the nats-server default); warns below
    ``MIN_SERVER_MAX_PAYLOAD``.
    """
    nlog = logging.getLogger(f"{__name__}.conn")

    async def error_cb(exc: Exception) -> None:
        # Refused/reset connections are the expected noise of a broker restart.
        level = logging.INFO if isinstance(exc, (OSError, *_TRANSIENT)) else logging.WARNING
        nlog.log(level, "nats %s: %r", name, exc)

    async def disconnected_cb() -> None:
        # nats-py also reports a deliberate close() as a disconnect.
        level = logging.DEBUG if nc.is_closed else logging.WARNING
        nlog.log(level, "nats %s: disconnected from %s", name, url)

    async def reconnected_cb() -> None:
        nlog.warning("nats %s: reconnected to %s", name, nc.connected_url.netloc if nc.connected_url else url)

    async def closed_cb() -> None:
        nlog.info("nats %s: connection closed", name)

    options: dict[str, Any] = dict(
        servers=[url],
        name=name,
        allow_reconnect=True,
        # -1 also makes nats-py's *initial* connect loop forever instead of
        # raising NoServersError, so a party started before the broker waits.
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        pending_size=_PENDING_SIZE,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
        closed_cb=closed_cb,
    )
    options.update(kw)
    nc = NATS()
    try:
        await nc.connect(**options)
    except BaseException:
        await close(nc)
        raise
    if nc.max_payload < MIN_SERVER_FLOOR:
        payload = nc.max_payload
        await close(nc)
        raise BrokerConfigError(
            f"NATS server at {url} has max_payload={payload} bytes; Conclave needs at least "
            f"{MIN_SERVER_FLOOR} (set `max_payload: 8MB` in the server config)"
        )
    if nc.max_payload < MIN_SERVER_MAX_PAYLOAD:
        # every ceremony message today is far below 1 MiB; only the envelope limit is above it
        log.warning("NATS server at %s has max_payload=%d bytes; envelopes above that will be refused "
                    "(set `max_payload: 8MB` to allow the full 4 MiB)", url, nc.max_payload)
    return nc


async def close(nc: NATS) -> None:
    """Close ``nc`` (shielded from cancellation). Never raises.

    Use this rather than ``nc.close()``: with publishes still buffered while the
    broker is gone, nats-py's close() raises ConnectionResetError half-way and
    skips closing the socket and waking pending ``next_msg`` waiters.
    """
    with anyio.CancelScope(shield=True):
        if nc.is_closed:
            return
        if not nc.is_connected:
            # Undeliverable now; their publishers see a timeout and retry with
            # the same Nats-Msg-Id, so nothing is lost by dropping them.
            nc._pending = []
            nc._pending_data_size = 0
        try:
            await nc.close()
        except Exception as exc:
            log.debug("closing nats connection: %r", exc)


# --------------------------------------------------------------------------- streams


def _stream_config(name: str, subjects: list[str]) -> api.StreamConfig:
    return api.StreamConfig(
        name=name,
        subjects=list(subjects),
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        max_age=MAX_AGE,
        duplicate_window=DUPLICATE_WINDOW,
        max_msg_size=MAX_MSG_SIZE,
    )


def _enum_value(v: Any) -> Any:
    return getattr(v, "value", v)


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a == b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def _stream_differs(have: api.StreamConfig, want: api.StreamConfig) -> bool:
    return (
        sorted(have.subjects or []) != sorted(want.subjects or [])
        or _enum_value(have.retention) != _enum_value(want.retention)
        or _enum_value(have.storage) != _enum_value(want.storage)
        or not _close(have.max_age, want.max_age)
        or not _close(have.duplicate_window, want.duplicate_window)
        or have.max_msg_size != want.max_msg_size
    )


async def _ensure_stream(js: JetStreamContext, want: api.StreamConfig) -> None:
    assert want.name is not None
    for _ in range(5):
        try:
            info = await js.stream_info(want.name)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(want)
                return
            except nats.js.errors.BadRequestError as exc:
                # Another process created it between our lookup and add (with a
                # config that is not byte-identical): look again and update.
                if exc.err_code == _ERR_STREAM_NAME_IN_USE:
                    continue
                raise
        if _stream_differs(info.config, want):
            log.info("updating stream %s to the expected configuration", want.name)
            await js.update_stream(want)
        return
    raise RuntimeError(f"stream {want.name} kept changing while being ensured")


async def ensure_streams(js: JetStreamContext) -> None:
    """Create or update both streams; idempotent and safe to run concurrently.

    Raises nats.js.errors.APIError for a conflict JetStream cannot resolve (for
    example a stream of the same name on memory storage), and nats errors if
    the broker is unreachable.
    """
    await _ensure_stream(js, _stream_config(MPC_STREAM, MPC_SUBJECTS))
    await _ensure_stream(js, _stream_config(OUT_STREAM, OUT_SUBJECTS))


# --------------------------------------------------------------------------- consumers


def party_consumer_name(party: int) -> str:
    return f"party-{party}"


def _party_consumer_config(party: int) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=party_consumer_name(party),
        filter_subjects=[f"conclave.mpc.*.*.{party}", "conclave.mpc.*.*.all"],
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT,
        # Never give up on a message: a party that is down for a while must
        # still get every round once it is back. No `backoff` either: it would
        # override ack_wait.
        max_deliver=-1,
        deliver_policy=api.DeliverPolicy.ALL,
        max_ack_pending=MAX_ACK_PENDING,
    )


def _consumer_differs(have: api.ConsumerConfig, want: api.ConsumerConfig) -> bool:
    have_filters = sorted(have.filter_subjects or ([have.filter_subject] if have.filter_subject else []))
    # a consumer rewound by rewind_party_consumer starts "by start sequence"; where it
    # started only mattered when it was created
    rewound = _enum_value(have.deliver_policy) == _enum_value(api.DeliverPolicy.BY_START_SEQUENCE)
    return (
        have_filters != sorted(want.filter_subjects or [])
        or _enum_value(have.ack_policy) != _enum_value(want.ack_policy)
        or (_enum_value(have.deliver_policy) != _enum_value(want.deliver_policy) and not rewound)
        or not _close(have.ack_wait, want.ack_wait)
        or (have.max_deliver or -1) != want.max_deliver
        or have.max_ack_pending != want.max_ack_pending
        or bool(have.backoff)
    )


async def ensure_party_consumer(js: JetStreamContext, party: int) -> bool:
    """Create (or update) the durable pull consumer ``party-<party>`` on the MPC stream.

    Returns True when the server applied the subject filters. Servers before
    2.10 ignore ``filter_subjects`` without an error; the consumer then gets
    every MPC subject and the caller must skip what is not addressed to it.
    Idempotent and safe to run concurrently. Raises ValueError for a bad party
    id, nats.js.errors.APIError if the existing consumer cannot be changed to
    the expected config (e.g. its deliver policy differs) or the stream is missing.
    """
    want = _party_consumer_config(_party_id(party))
    name = party_consumer_name(party)
    try:
        info = await js.consumer_info(MPC_STREAM, name)
    except nats.js.errors.NotFoundError:
        info = None
    if info is None or _consumer_differs(info.config, want):
        # The server's durable-create is create-or-update, and returns the existing
        # consumer for an identical config, so racing creators all succeed.
        info = await js.add_consumer(MPC_STREAM, config=want)
    filtered = bool(info.config.filter_subjects)
    if not filtered:
        log.warning("NATS server ignores filter_subjects (older than 2.10): party %d reads every MPC subject "
                    "and skips the ones not addressed to it", party)
    return filtered


async def rewind_party_consumer(js: JetStreamContext, party: int, start_seq: int) -> bool:
    """If ``party-<party>`` holds delivered but unacknowledged messages, re-create it to deliver
    again, in stream order, everything from stream sequence ``start_seq`` on. Returns True if it did.

    For a party starting up: what its previous process fetched but never acked (it crashed or
    stopped with a batch in hand) would otherwise come back only after ``ack_wait``, *behind*
    newer messages, and a party that records only its highest processed sequence would then
    skip it as already processed. ``start_seq`` is one past the last sequence it committed.
    Raises nats errors like ensure_party_consumer.
    """
    name = party_consumer_name(_party_id(party))
    info = await js.consumer_info(MPC_STREAM, name)
    if not (info.num_ack_pending or info.num_redelivered):
        return False
    want = _party_consumer_config(party)
    want.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
    want.opt_start_seq = max(1, int(start_seq))
    log.info("party %d: %d unacknowledged message(s) pending; redelivering from stream sequence %d",
             party, info.num_ack_pending, want.opt_start_seq)
    # (a crash in between leaves no consumer: the next start creates one delivering everything,
    # and the already processed part is recognised by its sequence)
    await js.delete_consumer(MPC_STREAM, name)
    await js.add_consumer(MPC_STREAM, config=want)
    return True


# --------------------------------------------------------------------------- publish


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.info(
        "publish attempt %d failed (%r); retrying in %.2fs",
        state.attempt_number,
        exc,
        state.next_action.sleep if state.next_action else 0.0,
    )


async def publish(
    js: JetStreamContext,
    subject: str,
    data: bytes,
    msg_id: str,
    *,
    timeout: float = 5.0,
    retry_for: float = 60.0,
) -> api.PubAck:
    """Store ``data`` on ``subject`` exactly once (deduplicated by ``msg_id``).

    Transient failures (timeouts, no responders, broker restarting) are retried
    with jittered exponential backoff for about ``retry_for`` s. A duplicate ack
    counts as success. Raises ValueError for an empty msg_id; PublishError when
    retries run out or on a permanent error (message over 4 MiB, closed
    connection). A subject no stream captures is retried like an outage:
    JetStream answers both with "no responders".
    """
    if not msg_id:
        raise ValueError("msg_id is required: it is what makes retries safe")
    headers = {api.Header.MSG_ID.value: msg_id}
    retrying = AsyncRetrying(
        wait=wait_random_exponential(multiplier=0.1, max=5),
        stop=stop_after_delay(retry_for),
        retry=retry_if_exception_type(_TRANSIENT),
        sleep=anyio.sleep,
        before_sleep=_log_retry,
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                # Not publish_async: its ack futures are never resolved if the
                # reply is lost in a reconnect, so they can hang forever.
                ack = await js.publish(subject, data, timeout=timeout, headers=dict(headers))
    except _TRANSIENT as exc:
        raise PublishError(subject, f"broker unavailable for {retry_for:.0f}s: {exc!r}") from exc
    except nats.errors.Error as exc:  # includes nats.js.errors.APIError, MaxPayloadError, ConnectionClosedError
        raise PublishError(subject, repr(exc)) from exc
    if ack.duplicate:
        log.debug("publish to %s: msg id %s was a duplicate (already stored)", subject, msg_id)
    return ack


# --------------------------------------------------------------------------- pull inbox


class PullInbox:
    """Pull-consumer reader for one party."""

    def __init__(self, js: JetStreamContext, party: int, batch: int = 64) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self._js = js
        self.party = _party_id(party)
        self._batch = batch
        self._sub: JetStreamContext.PullSubscription | None = None

    async def bind(self) -> None:
        """Bind to the durable ``party-<party>``. Raises nats.js.errors.NotFoundError
        if ensure_party_consumer has not created it (binding itself does not check,
        so the lookup is done first)."""
        name = party_consumer_name(self.party)
        await self._js.consumer_info(MPC_STREAM, name)
        self._sub = await self._js.pull_subscribe_bind(durable=name, stream=MPC_STREAM)

    async def fetch(self, timeout: float = 1.0) -> list[Msg]:
        """Up to ``batch`` messages, waiting at most about ``timeout`` s; ``[]`` if none.

        Timeouts and transient connection trouble return ``[]`` (callers loop).
        Raises RuntimeError before bind(), nats.errors.ConnectionClosedError once
        the connection is closed, nats.js.errors.APIError for consumer errors
        (e.g. the consumer was deleted).
        """
        if self._sub is None:
            raise RuntimeError("PullInbox.bind() must be awaited before fetch()")
        try:
            return await self._sub.fetch(self._batch, timeout=timeout)
        except nats.errors.ConnectionClosedError:
            raise
        except TimeoutError:
            # nats-py raises on an empty fetch: nats.errors.TimeoutError,
            # nats.js.errors.FetchTimeoutError, or a bare asyncio.TimeoutError
            # (all builtins.TimeoutError).
            return []
        except _TRANSIENT as exc:
            log.debug("party %d fetch: transient %r", self.party, exc)
            # Do not spin while the link is down.
            await anyio.sleep(min(timeout, 0.5))
            return []

    async def unsubscribe(self) -> None:
        """Drop the subscription (the durable consumer stays). Never raises."""
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.debug("party %d unsubscribe: %r", self.party, exc)


async def heartbeat(msgs: Msg | list[Msg], stop: Any, every: float = 5.0) -> None:
    """Tell JetStream each of ``msgs`` is still being worked on every ``every`` s until ``stop`` is set.

    ``stop`` is an anyio.Event or asyncio.Event. Best effort: never raises
    (except cancellation); a message that is acked meanwhile is left alone.
    """
    msgs = msgs if isinstance(msgs, list) else [msgs]
    while not stop.is_set():
        with anyio.move_on_after(every):
            await stop.wait()
        if stop.is_set():
            return
        for msg in msgs:
            if getattr(msg, "_ackd", False):
                continue
            try:
                await msg.in_progress()
            except Exception as exc:  # e.g. reconnecting; ack_wait gives us slack
                log.debug("in_progress for %s failed: %r", msg.subject, exc)


# --------------------------------------------------------------------------- outcomes


class OutcomeStream:
    """Outcome messages ``(party, payload)`` of one execution, oldest first.

    Backed by an ordered ephemeral push consumer. That consumer lives in the
    server's memory, so a broker restart deletes it; nats-py only notices after
    two missed idle heartbeats (10-20 s). This class instead re-creates it as
    soon as the client reports a reconnect, resuming after the last stream
    sequence it delivered, so no outcome is lost or repeated.
    """

    _SLICE = 1.0  # how often a waiting next() checks for a reconnect

    def __init__(self, js: JetStreamContext, execution: str) -> None:
        self._js = js
        # JetStreamContext exposes no public handle on its connection; the
        # reconnect counter lives there.
        self._nc: NATS = js._nc
        self.execution = _token(execution, "execution")
        self._subject = f"conclave.out.{self.execution}.*"
        self._sub: JetStreamContext.PushSubscription | None = None
        self._next_seq: int | None = None  # first stream sequence not yet delivered
        self._reconnects = -1

    async def open(self) -> None:
        """(Re)create the consumer. Raises nats errors if JetStream does not answer."""
        await self._drop()
        reconnects = self._nc.stats["reconnects"]
        if self._next_seq is None:
            extra: dict[str, Any] = dict(deliver_policy=api.DeliverPolicy.ALL)
        else:
            extra = dict(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                config=api.ConsumerConfig(opt_start_seq=self._next_seq),
            )
        self._sub = await self._js.subscribe(self._subject, stream=OUT_STREAM, ordered_consumer=True, **extra)
        self._reconnects = reconnects

    async def _drop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is None:
            return
        try:
            await sub.unsubscribe()
        except Exception as exc:
            # unsubscribe raises (before cancelling its heartbeat/flow-control
            # tasks) when the connection is closed; those tasks end with it.
            log.debug("outcome unsubscribe for %s: %r", self.execution, exc)

    async def aclose(self) -> None:
        """Drop the consumer. Never raises."""
        with anyio.CancelScope(shield=True):
            await self._drop()

    async def next(self, timeout: float | None = None) -> tuple[int, bytes]:
        """The next outcome. Raises TimeoutError after ``timeout`` s (None: wait forever),
        nats.errors.ConnectionClosedError if the connection is closed."""
        deadline = None if timeout is None else anyio.current_time() + timeout
        while True:
            remaining = math.inf if deadline is None else deadline - anyio.current_time()
            if remaining <= 0:
                raise TimeoutError(f"no outcome for execution {self.execution} within {timeout:.1f}s")
            if self._nc.is_closed:
                raise nats.errors.ConnectionClosedError
            if self._sub is None or self._nc.stats["reconnects"] != self._reconnects:
                try:
                    await self.open()
                except _TRANSIENT as exc:  # broker still coming back
                    log.debug("outcome consumer for %s: %r; retrying", self.execution, exc)
                    await anyio.sleep(min(0.25, remaining))
                    continue
            assert self._sub is not None
            try:
                msg = await self._sub.next_msg(timeout=min(self._SLICE, remaining))
            except nats.errors.TimeoutError:
                continue
            seq = msg.metadata.sequence.stream
            if self._next_seq is not None and seq < self._next_seq:
                continue  # replay overlap after a re-create
            self._next_seq = seq + 1
            token = msg.subject.rsplit(".", 1)[-1]
            try:
                return int(token), msg.data
            except ValueError:
                log.warning("ignoring outcome on malformed subject %r", msg.subject)

    def __aiter__(self) -> OutcomeStream:
        return self

    async def __anext__(self) -> tuple[int, bytes]:
        return await self.next()


class OutcomeRouter:
    """One core-NATS subscription on ``conclave.out.*.*`` shared by every ceremony a coordinator runs.

    A fresh execution has no outcome in the stream yet, so listening live from before its ``start``
    misses nothing, and it spares the broker an ephemeral consumer per ceremony. Live delivery is at
    most once, though: if the connection drops, or no outcome comes for ``fallback_after`` s, the
    watch switches to an :class:`OutcomeStream`, which replays the execution's outcomes from the
    stream (the caller drops the ones it already has).
    """

    def __init__(self, js: JetStreamContext, fallback_after: float = 5.0) -> None:
        self._js = js
        self._nc: NATS = js._nc
        self._fallback_after = fallback_after
        self._waiting: dict[str, Any] = {}  # execution -> memory stream sender
        self._sub = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe("conclave.out.*.*", cb=self._deliver)

    async def _deliver(self, msg: Msg) -> None:
        _, _, execution, party = msg.subject.split(".", 3)
        send = self._waiting.get(execution)
        if send is None:
            return
        try:
            send.send_nowait((int(party), msg.data))
        except (ValueError, anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # malformed party token, or a flood: the stream fallback still has it

    @asynccontextmanager
    async def watch(self, execution: str) -> AsyncIterator[_RoutedOutcomes]:
        """Outcomes of ``execution`` from now on; enter it before publishing the ``start``."""
        execution = _token(execution, "execution")
        send, receive = anyio.create_memory_object_stream(64)
        self._waiting[execution] = send
        watch = _RoutedOutcomes(self._js, execution, receive, self._nc.stats["reconnects"], self._fallback_after)
        try:
            yield watch
        finally:
            self._waiting.pop(execution, None)
            send.close()
            await watch.aclose()


class _RoutedOutcomes:
    """What :meth:`OutcomeRouter.watch` yields: ``next()`` like :class:`OutcomeStream`."""

    def __init__(self, js: JetStreamContext, execution: str, receive: Any, reconnects: int,
                 fallback_after: float) -> None:
        self._js = js
        self._nc: NATS = js._nc
        self.execution = execution
        self._receive = receive
        self._reconnects = reconnects
        self._fallback_at = anyio.current_time() + fallback_after
        self._stream: OutcomeStream | None = None

    async def next(self) -> tuple[int, bytes]:
        while self._stream is None:
            if self._nc.stats["reconnects"] != self._reconnects or anyio.current_time() >= self._fallback_at:
                self._stream = OutcomeStream(self._js, self.execution)  # opened (and re-opened) by next()
                break
            with anyio.move_on_after(min(OutcomeStream._SLICE, self._fallback_at - anyio.current_time())):
                return await self._receive.receive()
        return await self._stream.next()

    async def aclose(self) -> None:
        self._receive.close()
        if self._stream is not None:
            await self._stream.aclose()


@asynccontextmanager
async def subscribe_outcomes(js: JetStreamContext, execution: str) -> AsyncIterator[OutcomeStream]:
    """Ordered ephemeral consumer over ``conclave.out.<execution>.*`` from the start of the stream,
    so outcomes published before subscribing are delivered too.

    Raises ValueError for a bad execution id, nats errors if the consumer cannot be created.
    """
    stream = OutcomeStream(js, execution)
    await stream.open()
    try:
        yield stream
    finally:
        await stream.aclose()
