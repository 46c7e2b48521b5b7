"""Load through NATS, the way an exchange sends it: publish requests, match results by request id.

One core-NATS subscription on ``conclave.results.*`` (and one on
``conclave.deadletter.*``) is opened before the first publish; a subscription
per request would cost the broker as much as the load itself. Latency runs from
just before a request's publish to the arrival of its result.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from handlers import withdrawals as wq
from handlers.jetstream import PublishError
from loadtest.errors import EXIT_UNSIGNED, LoadtestError
from loadtest.progress import Bar
from loadtest.stats import LOST, PUBLISH_ERROR, SIGNED, Fate, error_kind, issue_offsets
from schemas.withdrawal import RequestError, WithdrawalRequest, WithdrawalResult

__all__ = ["Pending", "Results", "LoadSpec", "Load", "pool_level", "settled_pool_level", "warm_up", "wait_for_pool"]

SAMPLE_EVERY = 0.5  # seconds between pool / in-flight samples
Submit = Callable[[WithdrawalRequest], Awaitable[Any]]


@dataclass(eq=False)
class Pending:
    """One request on its way: when it went out, and what came back."""

    request: WithdrawalRequest
    issued: float | None = None
    finished: float | None = None
    outcome: str | None = None
    attempts: int | None = None
    reason: str | None = None
    deadlettered: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)

    def settle(self, at: float, outcome: str, attempts: int | None = None, reason: str | None = None) -> None:
        """Record the first answer only: a dead letter repeats the result that came before it."""
        if self.outcome is None:
            self.finished, self.outcome, self.attempts, self.reason = at, outcome, attempts, reason
        self.done.set()

    def fate(self, t0: float) -> Fate:
        rel = lambda t: None if t is None else t - t0  # noqa: E731
        return Fate(self.request.request_id, rel(self.issued), rel(self.finished), self.outcome, self.attempts,
                    self.deadlettered)


class Results:
    """Every result of this process's requests, from one subscription per subject."""

    def __init__(self) -> None:
        self.pending: dict[str, Pending] = {}
        self.foreign = 0  # results of requests this run did not send (another client, an earlier run)
        self.malformed = 0

    def expect(self, pending: Pending) -> Pending:
        self.pending[pending.request.request_id] = pending
        return pending

    @asynccontextmanager
    async def listening(self, nc: Any) -> AsyncIterator[Results]:
        subs = [await nc.subscribe(wq.result_subject("*"), cb=self._on_result),
                await nc.subscribe(wq.deadletter_subject("*"), cb=self._on_deadletter)]
        await nc.flush()  # the broker knows our interest before the first request goes out
        try:
            yield self
        finally:
            for sub in subs:
                await sub.unsubscribe()

    async def _on_result(self, msg: Any) -> None:
        self._record(msg.data, deadletter=False)

    async def _on_deadletter(self, msg: Any) -> None:
        self._record(msg.data, deadletter=True)

    def _record(self, data: bytes, deadletter: bool) -> None:
        now = time.perf_counter()
        try:
            result = WithdrawalResult.from_json(data)
        except RequestError:
            self.malformed += 1
            return
        pending = self.pending.get(result.request_id)
        if pending is None:
            self.foreign += 1
            return
        pending.deadlettered |= deadletter
        pending.settle(now, error_kind(result.status, result.rule), result.attempts, result.reason)


@dataclass(frozen=True)
class LoadSpec:
    """Open loop at ``rate`` requests/s (0: all at once), or closed loop with ``concurrency`` in flight."""

    rate: float | None
    concurrency: int | None
    duration: float  # stop issuing after this many seconds
    timeout: float  # then wait at most this long for outstanding results

    def describe(self) -> str:
        if self.concurrency:
            return f"closed loop, {self.concurrency} in flight"
        return "open loop, all at once" if not self.rate else f"open loop at {self.rate:g} requests/s"


class Load:
    """One load phase: issue every request on schedule, wait for the results, sample what happens meanwhile."""

    def __init__(self, pending: list[Pending], spec: LoadSpec, submit: Submit) -> None:
        self.pending = pending
        self.spec = spec
        self.submit = submit
        self.t0 = time.perf_counter()  # set again when the load starts
        self.samples: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.issuing_ended: float | None = None
        self.ended: float | None = None

    # -- what the progress bar, the sampler and a fault injector read --
    def now(self) -> float:
        return time.perf_counter() - self.t0

    def mark(self, kind: str, label: str) -> None:
        """A fault event on the timeline: ``kind`` for the phase split, ``label`` for people."""
        self.events.append({"t": round(self.now(), 3), "kind": kind, "label": label})

    @property
    def issued(self) -> int:
        return sum(1 for p in self.pending if p.issued is not None)

    @property
    def finished(self) -> int:
        return sum(1 for p in self.pending if p.outcome is not None)

    def note(self) -> str:
        signed = sum(1 for p in self.pending if p.outcome == SIGNED)
        failed = self.finished - signed
        return f"signed {signed}, errors {failed}, in flight {self.issued - self.finished}"

    # -- the run --
    async def run(self) -> None:
        self.t0 = time.perf_counter()
        if self.spec.concurrency:
            await self._closed_loop(self.spec.concurrency)
        else:
            await self._open_loop(self.spec.rate or 0.0)
        self.issuing_ended = self.now()
        with anyio.move_on_after(self.spec.timeout):
            for p in self.pending:
                if p.issued is not None:
                    await p.done.wait()
        for p in self.pending:
            if p.issued is not None and p.outcome is None:
                p.outcome = LOST
        self.ended = self.now()

    async def _open_loop(self, rate: float) -> None:
        async with anyio.create_task_group() as tg:
            for p, due in zip(self.pending, issue_offsets(len(self.pending), rate)):
                if due >= self.spec.duration:
                    break
                await anyio.sleep(max(0.0, due - self.now()))
                tg.start_soon(self._publish, p)

    async def _closed_loop(self, concurrency: int) -> None:
        queue = iter(self.pending)

        async def lane() -> None:
            for p in queue:  # shared by every lane: each request is taken once
                if self.now() >= self.spec.duration:
                    return
                await self._publish(p)
                with anyio.move_on_after(min(self.spec.timeout, self.spec.duration - self.now())):
                    await p.done.wait()  # past the duration, the drain in run() waits for it instead

        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(lane)

    async def _publish(self, p: Pending) -> None:
        p.issued = time.perf_counter()
        try:
            await self.submit(p.request)
        except PublishError as exc:
            p.settle(time.perf_counter(), PUBLISH_ERROR, reason=str(exc))

    async def sample(self, level: Callable[[], Awaitable[int | None]]) -> None:
        """Pool level and requests in flight now (call once more at the end: a burst can be over between samples)."""
        pool = await level()
        self.samples.append({"t": round(self.now(), 3), "pool": pool, "in_flight": self.issued - self.finished,
                             "finished": self.finished})

    async def sample_every(self, level: Callable[[], Awaitable[int | None]]) -> None:
        """``sample`` every SAMPLE_EVERY s, until cancelled."""
        while True:
            await self.sample(level)
            await anyio.sleep(SAMPLE_EVERY)

    async def show(self, bar: Bar) -> None:
        while True:
            bar.update(self.finished, self.note())
            await anyio.sleep(0.25)


async def pool_level(js: Any, key_id: str) -> int | None:
    """Ready presignatures for the wallet over every quorum; None while the broker does not answer."""
    try:
        levels = await wq.pool_levels(js)
    except Exception:  # a sample missed during a broker hiccup is a gap in the series, not a failed run
        return None
    return sum(n for name, n in levels.items() if name.rsplit("/", 1)[0] == key_id)


async def settled_pool_level(js: Any, key_id: str, reads: int = 3, every: float = 0.2) -> int:
    """The highest of a few readings. Under load one listing of the bucket has come back empty while presignatures
    were there (seen right after a burst), and a fill that trusts it waits for a refill that never starts."""
    best = 0
    for k in range(reads):
        best = max(best, await pool_level(js, key_id) or 0)
        if k + 1 < reads:
            await anyio.sleep(every)
    return best


async def warm_up(results: Results, submit: Submit, requests: list[WithdrawalRequest], timeout: float) -> None:
    """Send a few requests one at a time before measuring; any that does not sign stops the run."""
    for request in requests:
        p = results.expect(Pending(request))
        await submit(request)
        with anyio.move_on_after(timeout):
            await p.done.wait()
        if p.outcome != SIGNED:
            why = "no result" if p.outcome is None else f"{p.outcome}: {p.reason}"
            raise LoadtestError(f"warm-up withdrawal {request.request_id} did not sign ({why} within {timeout:g}s); "
                                "check `conclave status` and the worker log", EXIT_UNSIGNED)


async def wait_for_pool(js: Any, key_id: str, need: int, stall: float) -> dict[str, Any]:
    """Wait until the wallet's pool holds ``need`` presignatures; LoadtestError if it stops rising for ``stall`` s."""
    t0 = last_change = time.monotonic()
    start = level = await settled_pool_level(js, key_id)
    with Bar("filling the presignature pool", need) as bar:
        while level < need:
            if time.monotonic() - last_change > stall:
                raise LoadtestError(f"the presignature pool stopped filling at {level}/{need} for {stall:g}s; "
                                    "see <data dir>/worker/*.log and `conclave status`")
            await anyio.sleep(0.5)
            new = await pool_level(js, key_id)
            if new is not None and new > level:  # only a rise is progress: a misread low must not reset the clock
                level, last_change = new, time.monotonic()
            bar.update(level)
    return {"start": start, "level": level, "seconds": round(time.monotonic() - t0, 1)}
