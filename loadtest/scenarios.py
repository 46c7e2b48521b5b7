"""The four load scenarios: what each fills, sends, breaks and records.

* ``burst``: the pool filled to requests + warm-up, then every request at once.
* ``sustained``: an open loop at ``--rate`` with the pool refilling in the
  background (``--pool on``) or switched off (every withdrawal presigns).
* ``shards``: the same burst served by one worker owning every shard, then by
  one worker per shard.
* ``faults``: a closed loop; once a third of the requests are answered, party 2
  is SIGKILLed, and restarted ``--down-for`` seconds later.

Each returns one record per load phase (``shards`` has two), every figure in it
JSON-ready.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio

from handlers import withdrawals as wq
from loadtest.driver import Load, LoadSpec, Pending, Results, pool_level, settled_pool_level, wait_for_pool, warm_up
from loadtest.errors import LoadtestError
from loadtest.progress import Bar
from loadtest.stats import Fate, cpu_per_signature, per_second, phase_summaries, summarise
from loadtest.target import Target, kill_party, restart, split_workers
from loadtest.withdrawals import eth_request
from ops.client import CeremonyFailed, Coordinator
from ops.scheduler import PresignaturePool
from schemas.withdrawal import WithdrawalRequest

__all__ = ["SCENARIOS", "Settings", "Context", "scheduler_options"]

FAULT_PARTY = 2  # in the preferred quorum (1, 2), so the fault hits requests in flight
FILL_PARALLEL = 2  # presigns in flight while a burst's pool fills (setup, not measured)
POOL_LOW = 2  # the worker refills a pool below this many
SPARE = POOL_LOW  # a burst's pool ends at the low watermark: no refill presign competes with the measured burst


@dataclass(frozen=True)
class Settings:
    """A load test's configuration, every default resolved."""

    scenario: str
    requests: int
    warmup: int
    latency_samples: int  # burst: withdrawals sent one at a time before the burst, for the latency targets
    load: LoadSpec
    pool: bool
    down_for: float
    level: str | None  # None until an attached deployment's own is read
    prime_pool: str | None
    shards: int
    refill_parallel: int | None
    nats: str | None
    data_dir: str | None
    key: str | None
    keep: bool
    baselines: bool
    out: Path

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "load": {**asdict(self.load), "mode": self.load.describe()}, "out": str(self.out)}


def scheduler_options(s: Settings) -> dict[str, int | None]:
    """The watermarks a started deployment gets: a burst's whole pool at once, else the deployment's defaults."""
    if s.scenario in ("burst", "shards"):
        return {"shards": s.shards, "pool_low": POOL_LOW, "pool_high": _burst_pool(s),
                "refill_parallel": s.refill_parallel or FILL_PARALLEL}
    return {"shards": s.shards, "pool_high": None if s.pool else 0, "refill_parallel": s.refill_parallel}


@dataclass
class Context:
    """What every scenario works with: the deployment, its wallet, the broker connection."""

    target: Target
    key_id: str
    settings: Settings
    nc: Any
    js: Any
    tag: str = field(default_factory=lambda: secrets.token_hex(3))  # no earlier run's result matches our ids
    made: int = 0  # requests numbered so far: every one gets its own id, nonce and HD path

    def requests(self, prefix: str, count: int) -> list[WithdrawalRequest]:
        first, self.made = self.made, self.made + count
        return [eth_request(self.key_id, f"lt{self.tag}-{prefix}-{n}", n) for n in range(first, first + count)]

    async def submit(self, request: WithdrawalRequest) -> Any:
        return await wq.submit(self.js, request, self.target.shards)


Fault = Callable[[Load], Awaitable[None]]


def _burst_pool(s: Settings) -> int:
    latency = s.latency_samples + s.warmup if s.scenario == "burst" and s.latency_samples else 0
    return latency + s.requests + s.warmup + SPARE


async def burst(ctx: Context) -> list[dict[str, Any]]:
    """Latency one withdrawal at a time (what the latency targets mean: no queue), then throughput all at once."""
    s = ctx.settings
    fill = await _fill(ctx, _burst_pool(s))
    runs = []
    if s.latency_samples:
        one_at_a_time = replace(s.load, rate=None, concurrency=1)
        runs.append(await _load(ctx, "one at a time", "lat", fill, count=s.latency_samples, spec=one_at_a_time,
                                kind="latency"))
    runs.append(await _load(ctx, "burst", "b", None if runs else fill, kind="throughput"))
    return runs


async def sustained(ctx: Context) -> list[dict[str, Any]]:
    fill = await _fill(ctx, ctx.target.scheduler().pool_high) if ctx.settings.pool and ctx.target.owned else None
    return [await _load(ctx, f"sustained, pool {'on' if ctx.settings.pool else 'off'}", "s", fill,
                        kind="throughput")]


async def shards(ctx: Context) -> list[dict[str, Any]]:
    count, need = ctx.target.shards, _burst_pool(ctx.settings)
    one = await _load(ctx, f"1 worker, {count} shards", "one", await _fill(ctx, need), kind="throughput")
    fill = await _fill(ctx, need)  # the first burst left the pool at the low watermark: topped up from here
    names = await anyio.to_thread.run_sync(split_workers, ctx.target)
    split = await _load(ctx, f"{count} workers, 1 shard each", "split", fill, kind="throughput")
    split["workers"] = names
    return [one, split]


async def faults(ctx: Context) -> list[dict[str, Any]]:
    fill = await _fill(ctx, ctx.target.scheduler().pool_high)
    return [await _load(ctx, "faults", "f", fill, fault=_party_fault(ctx, FAULT_PARTY), kind="fault")]


SCENARIOS: dict[str, Callable[[Context], Awaitable[list[dict[str, Any]]]]] = {
    "burst": burst, "sustained": sustained, "shards": shards, "faults": faults}
PROCESS_CONTROL = ("shards", "faults")  # scenarios that stop or kill processes: only on a deployment we started


def _party_fault(ctx: Context, party: int) -> Fault:
    async def inject(load: Load) -> None:
        third = len(load.pending) / 3
        while load.finished < third and load.now() < load.spec.duration / 3:  # a third of the work, or of the time
            await anyio.sleep(0.05)
        pid = await anyio.to_thread.run_sync(kill_party, ctx.target, party)
        load.mark("kill", f"SIGKILL party {party} (pid {pid})")
        await anyio.sleep(ctx.settings.down_for)
        load.mark("restart", f"restart party {party} (conclave up)")
        await restart(ctx.target)
        load.mark("ready", f"party {party} ready")

    return inject


async def _fill(ctx: Context, need: int) -> dict[str, Any]:
    """The pool at ``need`` presignatures before a load (setup, not measured).

    The worker fills a deployment this command started from empty to its high
    watermark, which is ``need``; any other pool (an attached deployment's, the
    second burst of ``shards``) is topped up from this process.
    """
    stall = ctx.settings.load.timeout
    sched = ctx.target.scheduler()
    level = await settled_pool_level(ctx.js, ctx.key_id)
    if ctx.target.owned and level < sched.pool_low and sched.pool_high >= need:
        return await wait_for_pool(ctx.js, ctx.key_id, need, stall)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_top_up, ctx, max(0, need - level))
        return await wait_for_pool(ctx.js, ctx.key_id, need, stall)


async def _top_up(ctx: Context, missing: int) -> None:
    """``missing`` presignatures made from this process, as the worker's refill makes them."""
    async with Coordinator(ctx.target.dep) as c:
        pool = PresignaturePool(c, await wq.presigs_bucket(c.js), ctx.target.scheduler())
        quorum = tuple(ctx.target.dep.party_ids()[: int(ctx.target.config["threshold"])])  # the worker's, all healthy

        async def lane(share: int) -> None:
            for _ in range(share):
                try:
                    await pool.make(ctx.key_id, quorum)
                except CeremonyFailed as exc:
                    raise LoadtestError(f"a presign for the pool failed: {exc}; see `conclave status`") from None

        lanes = ctx.settings.refill_parallel or FILL_PARALLEL
        async with anyio.create_task_group() as tg:
            for k in range(lanes):
                tg.start_soon(lane, missing // lanes + (1 if k < missing % lanes else 0))


async def _load(ctx: Context, name: str, slug: str, fill: dict[str, Any] | None, fault: Fault | None = None, *,
                count: int | None = None, spec: LoadSpec | None = None, kind: str | None = None) -> dict[str, Any]:
    """Warm up, then one measured load phase with the pool and in-flight count sampled throughout.

    ``kind`` says which targets the phase is judged on: ``latency`` (p50, p99: one withdrawal at a time),
    ``throughput`` (signatures/s), ``fault`` (neither: it shows what a failure costs); None, both.
    """
    s = replace(ctx.settings, requests=count or ctx.settings.requests, load=spec or ctx.settings.load)
    results = Results()
    async with results.listening(ctx.nc):
        await warm_up(results, ctx.submit, ctx.requests(f"{slug}-warm", s.warmup), s.load.timeout)
        pending = [results.expect(Pending(r)) for r in ctx.requests(slug, s.requests)]
        level = functools.partial(pool_level, ctx.js, ctx.key_id)
        before = await level()
        cpu_before = ctx.target.cpu_seconds()
        with Bar(name, s.requests) as bar:
            async with anyio.create_task_group() as tg:
                load = Load(pending, s.load, ctx.submit)
                tg.start_soon(load.sample_every, level)
                tg.start_soon(load.show, bar)
                fault_over = anyio.Event()
                tg.start_soon(_run_fault, fault, load, fault_over)
                await load.run()
                await fault_over.wait()  # the deployment is whole again before the next phase or teardown
                tg.cancel_scope.cancel()
            await load.sample(level)
            bar.update(load.finished, load.note())
    record = _record(name, load, before, fill, results)
    record["cpu"] = cpu_per_signature(cpu_before, ctx.target.cpu_seconds(), record["signed"])
    return {**record, "judged_on": kind}


async def _run_fault(fault: Fault | None, load: Load, over: anyio.Event) -> None:
    try:
        if fault is not None:
            await fault(load)
    finally:
        over.set()


def _record(name: str, load: Load, pool_before: int | None, fill: dict[str, Any] | None,
            results: Results) -> dict[str, Any]:
    fates = [p.fate(load.t0) for p in load.pending]
    until = max([load.ended or 0.0, *(s["t"] for s in load.samples)])
    levels = [s["pool"] for s in load.samples if s["pool"] is not None]
    record = {
        "name": name, "load": load.spec.describe(), **summarise(fates),
        "issuing_s": round(load.issuing_ended or 0.0, 3), "ended_s": round(load.ended or 0.0, 3),
        "pool": {"fill": fill, "before_load": pool_before, "after_load": levels[-1] if levels else None,
                 "min": min(levels, default=None), "max": max(levels, default=None)},
        "events": load.events, "foreign_results": results.foreign, "malformed_results": results.malformed,
        "timeline": per_second(fates, load.samples, until), "samples": load.samples,
        "request_log": [_fate_json(f) for f in fates],
    }
    times = {e["kind"]: e["t"] for e in load.events}
    if "kill" in times:
        ready = times.get("ready", float("inf"))
        record["phases"] = phase_summaries(fates, [("before", float("-inf"), times["kill"]),
                                                   ("during", times["kill"], ready), ("after", ready, float("inf"))])
    return record


def _fate_json(f: Fate) -> dict[str, Any]:
    r3 = lambda x: None if x is None else round(x, 4)  # noqa: E731
    return {"id": f.request_id, "issued_s": r3(f.issued), "finished_s": r3(f.finished), "outcome": f.outcome,
            "attempts": f.attempts, "deadlettered": f.deadlettered}
