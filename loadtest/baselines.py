"""What the load figures are divided by, measured in the same run on the same machine and broker.

* the NATS request/reply round trip: the floor any withdrawal latency sits on;
* one single-key secp256k1 signature (coincurve): what a signature costs without a threshold;
* the primitive costs G, N, N² and a measured presign per party, against the
  CGGMP21 cost model n·(12G + 56N + 33N²): how far the presignatures the pool
  holds are from their textbook price.

Load figures are only comparable with baselines taken in the same run: the
machine may be shared, and its speed changes from run to run.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import nats.errors

from handlers.jetstream import close, connect
from loadtest.errors import EXIT_USAGE, LoadtestError
from loadtest.stats import percentile

__all__ = ["nats_round_trip", "coincurve_sign", "presign_cost", "connect_or_fail"]

RTT_REQUESTS = 1000
RTT_PAYLOAD = 256
CONNECT_TIMEOUT = 10.0


async def connect_or_fail(url: str, name: str) -> Any:
    """A NATS connection, or LoadtestError saying the broker is unreachable (the client would retry forever)."""
    try:
        with anyio.fail_after(CONNECT_TIMEOUT):
            return await connect(url, name=name)
    except TimeoutError:
        raise LoadtestError(f"cannot reach the NATS server at {url} within {CONNECT_TIMEOUT:g}s: "
                            "is it running, with JetStream enabled?") from None


async def nats_round_trip(url: str, count: int = RTT_REQUESTS, size: int = RTT_PAYLOAD) -> dict[str, Any]:
    """Sequential request/reply round trips to a responder on a private subject, over a second connection."""
    responder = await connect_or_fail(url, "conclave-loadtest-echo")
    try:
        requester = await connect_or_fail(url, "conclave-loadtest-rtt")
    except BaseException:
        await close(responder)
        raise
    try:
        subject = f"conclave.loadtest.echo.{secrets.token_hex(8)}"  # captured by no stream: plain core NATS

        async def echo(msg: Any) -> None:
            await msg.respond(msg.data)

        await responder.subscribe(subject, cb=echo)
        await responder.flush()
        payload = os.urandom(size)
        await _until_answered(requester, subject, payload)
        for _ in range(20):  # connections and buffers warm before the clock starts
            await requester.request(subject, payload, timeout=5)
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            await requester.request(subject, payload, timeout=5)
            times.append(time.perf_counter() - t0)
    finally:
        await close(requester)
        await close(responder)
    return {"requests": count, "payload_bytes": size, "p50_ms": round(percentile(times, 50) * 1000, 4),
            "p99_ms": round(percentile(times, 99) * 1000, 4)}


async def _until_answered(nc: Any, subject: str, payload: bytes, attempts: int = 50) -> None:
    """The first request, repeated while the broker still reports no responder (seen once on a busy machine)."""
    for _ in range(attempts - 1):
        try:
            await nc.request(subject, payload, timeout=5)
            return
        except nats.errors.NoRespondersError:
            await anyio.sleep(0.1)
    await nc.request(subject, payload, timeout=5)


def coincurve_sign(batches: int = 7, per_batch: int = 500) -> dict[str, Any]:
    """Median seconds of one ``sign_recoverable`` of a 32-byte digest with a single ordinary key."""
    import coincurve

    key = coincurve.PrivateKey()
    per_op = []
    for _ in range(batches):
        digests = [os.urandom(32) for _ in range(per_batch)]
        t0 = time.perf_counter()
        for d in digests:
            key.sign_recoverable(d, hasher=None)
        per_op.append((time.perf_counter() - t0) / per_batch)
    return {"median_us": round(statistics.median(per_op) * 1e6, 3), "batches": batches, "per_batch": per_batch}


def presign_cost(level: str, prime_pool: str | None, runs: int = 3) -> dict[str, Any]:
    """G, N, N², the cost model and a measured presign per party, at the deployment's modulus size."""
    from ops.bench import measure_presign

    if prime_pool:
        stored = json.loads(Path(prime_pool).read_text())
        pool = {int(bits): iter(int(p, 16) for p in ps) for bits, ps in stored.items()}
        source, origin = (lambda bits: next(pool.get(bits, iter(())))), f"pregenerated, from {prime_pool}"
    else:
        print("presign baseline: generating 4 safe primes (no --prime-pool given)", file=sys.stderr, flush=True)
        source, origin = None, "generated for this run (no --prime-pool)"
    try:
        out = measure_presign(level, source, runs, progress=sys.stderr)
    except StopIteration:
        raise LoadtestError(f"{prime_pool} holds too few safe primes of the {level} size for the presign baseline "
                            "(4 are needed); give a fuller --prime-pool, or none to generate them",
                            EXIT_USAGE) from None
    return {**out, "runs": runs, "primes": origin}
