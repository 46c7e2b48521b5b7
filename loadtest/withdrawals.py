"""``conclave bench-withdrawals``: latency and burst throughput of the withdrawal service with a full pool.

It starts its own deployment (embedded broker, 3 party processes, the
withdrawal worker with background refill switched off), runs a 2-of-3 keygen,
fills the presignature pool for quorum (1, 2) from this process, and then

* sends ``--latency-samples`` withdrawals one at a time: submit → result latency;
* publishes ``--burst`` withdrawals at once and waits for every result:
  burst throughput, and each request's latency within the burst.

Pool filling is not timed. Every request is bounded by ``--timeout``, and the
pool must hold enough presignatures for every request, so no measured
withdrawal runs a presign.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from handlers import withdrawals as wq
from loadtest.stats import percentile
from ops.client import Coordinator
from ops.deploy import Deployment
from ops.output import emit, say
from schemas.withdrawal import WithdrawalRequest

__all__ = ["configure", "eth_request", "percentile"]

TO = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


def eth_request(key_id: str, rid: str, n: int) -> WithdrawalRequest:
    """An Ethereum transfer the development policy (or any permissive one) signs; ``n`` varies nonce and path."""
    return WithdrawalRequest.from_json({
        "request_id": rid, "key_id": key_id, "path": f"m/0/{n % 1000}", "chain": "ethereum",
        "tx": {"chain_id": 1, "nonce": n, "to": TO, "value": "1000", "gas": 21000,
               "max_fee_per_gas": "30000000000", "max_priority_fee_per_gas": "1000000000", "data": "0x"},
        "initiator": "loadtest", "approvals": [], "metadata": {}})


async def _fill(c: Coordinator, key_id: str, target: int, parallel: int) -> float:
    from ops.scheduler import PresignaturePool, SchedulerConfig

    pool = PresignaturePool(c, await wq.presigs_bucket(c.js), SchedulerConfig())
    t0 = time.perf_counter()
    have = await pool.count(key_id, (1, 2))
    todo = max(0, target - have)
    done = 0

    async def worker(share: int) -> None:
        nonlocal done
        for _ in range(share):
            await pool.make(key_id, (1, 2))
            done += 1
            if done % 25 == 0 or done == todo:
                say(f"  pool {have + done}/{target} ({time.perf_counter() - t0:.0f}s)")

    async with anyio.create_task_group() as tg:
        for w in range(parallel):
            tg.start_soon(worker, todo // parallel + (1 if w < todo % parallel else 0))
    return time.perf_counter() - t0


async def _one(c: Coordinator, request: WithdrawalRequest, shards: int, timeout: float) -> tuple[float, str]:
    t0 = time.perf_counter()
    await wq.submit(c.js, request, shards)
    result = await wq.wait_result(c.js, request.request_id, timeout)
    return time.perf_counter() - t0, result.status


async def _measure(dep: Deployment, args) -> dict[str, Any]:
    shards = int(dep.config()["scheduler"].get("shards", 2))
    async with Coordinator(dep) as c:
        await wq.ensure_withdrawal_streams(c.js)
        say("2-of-3 keygen ...")
        key = (await c.run("keygen", dep.party_ids(), {"threshold": 2})).result
        kid = key["key_id"]
        need = args.latency_samples + args.burst + args.warmup
        say(f"filling the pool with {need} presignatures (not timed) ...")
        fill_seconds = await _fill(c, kid, need, args.fill_parallel)
        for n in range(args.warmup):
            await _one(c, eth_request(kid, f"warm-{n}", n), shards, args.timeout)
        say(f"latency: {args.latency_samples} withdrawals one at a time ...")
        lat: list[float] = []
        for n in range(args.latency_samples):
            seconds, status = await _one(c, eth_request(kid, f"lat-{n}", n), shards, args.timeout)
            if status != "signed":
                raise RuntimeError(f"latency request {n} was {status}")
            lat.append(seconds)
        say(f"burst: {args.burst} withdrawals at once ...")
        burst_lat: list[float] = []
        statuses: list[str] = []
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for n in range(args.burst):
                async def go(n: int = n) -> None:
                    seconds, status = await _one(c, eth_request(kid, f"burst-{n}", 10_000 + n), shards, args.timeout)
                    burst_lat.append(seconds)
                    statuses.append(status)

                tg.start_soon(go)
        burst_seconds = time.perf_counter() - t0
        left = await _pool_left(c, kid)
    return {
        "level": dep.config()["level"], "shards": shards, "pool_fill_seconds": round(fill_seconds, 1),
        "latency": {"samples": len(lat), "median_ms": round(statistics.median(lat) * 1000, 1),
                    "p99_ms": round(percentile(lat, 99) * 1000, 1), "min_ms": round(min(lat) * 1000, 1),
                    "max_ms": round(max(lat) * 1000, 1)},
        "burst": {"requests": args.burst, "signed": statuses.count("signed"), "seconds": round(burst_seconds, 2),
                  "per_second": round(args.burst / burst_seconds, 1),
                  "median_ms": round(statistics.median(burst_lat) * 1000, 1),
                  "p99_ms": round(percentile(burst_lat, 99) * 1000, 1)},
        "pool_left": left,
    }


async def _pool_left(c: Coordinator, key_id: str) -> int:
    from ops.scheduler import PresignaturePool, SchedulerConfig

    return await PresignaturePool(c, await wq.presigs_bucket(c.js), SchedulerConfig()).count(key_id, (1, 2))


def cmd_bench_withdrawals(args) -> int:
    from ops.cli import main as conclave

    home = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="conclave-bench-"))
    up = ["up", "--data-dir", str(home), "--security-level", args.security_level, "--pool-high", "0",
          "--shards", str(args.shards)]
    if args.prime_pool:
        up += ["--prime-pool", args.prime_pool]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # with --json, stdout holds only this command's object
        if conclave(up) != 0:
            return 4
        try:
            out = anyio.run(_measure, Deployment(home), args)
        finally:
            conclave(["down", "--data-dir", str(home)])
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    lat, burst = out["latency"], out["burst"]
    emit(args, out, "\n".join([
        f"level {out['level']}, {out['shards']} shards, pool filled in {out['pool_fill_seconds']}s (not timed)",
        f"one withdrawal at a time: median {lat['median_ms']} ms, p99 {lat['p99_ms']} ms ({lat['samples']} samples)",
        f"burst of {burst['requests']}: {burst['signed']} signed in {burst['seconds']} s = {burst['per_second']}/s; "
        f"latency median {burst['median_ms']} ms, p99 {burst['p99_ms']} ms",
    ]))
    return 0 if burst["signed"] == burst["requests"] else 3


def configure(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-withdrawals", help="withdrawal latency and burst throughput with a full pool")
    p.add_argument("--data-dir", help="where to put the deployment (default: a new temp directory)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--security-level", default="cggmp21-128")
    p.add_argument("--prime-pool", metavar="FILE", help="pregenerated safe primes (keygen without prime search)")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--latency-samples", type=int, default=200)
    p.add_argument("--burst", type=int, default=500)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--fill-parallel", type=int, default=2, help="presigns in flight while filling the pool")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds any one request may take")
    p.set_defaults(func=cmd_bench_withdrawals)
