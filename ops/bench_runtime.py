"""``conclave bench-runtime``: what the event store and NATS add to a ceremony.

Two measurements, both 2-of-3 with the same Paillier primes in every run so
that prime generation (random, seconds) does not drown the signal:

* **store overhead**: the same keygen + aux-info + presign + sign through the
  in-memory broker, once with an in-memory event store and once with the
  SQLite stores (one file per party), alternating, medians and their ratio;
  also a sign with a pooled presignature (the online step, where the store's
  commits weigh most, since nothing else is slow);
* **over NATS** (``--nats``): the embedded broker and three party processes;
  keygen and sign wall times as the coordinator sees them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.ceremony.runtime import Command, PartyRuntime, start_envelope
from engine.ceremony.store import PartyStore, StoreConfig
from engine.crypto.primes import generate_safe_prime
from engine.crypto.security import get_level
from handlers.memory import MemoryBroker
from schemas.envelope import Identity


POOLED_SIGNS = 4  # signs with a pooled presignature per run, timed together (each takes milliseconds)
PHASES = ("keygen", "sign", "total", "pooled_sign")  # total = keygen + sign; a pooled sign is timed on its own


def _primes(level: str, pool: str | None) -> list[int]:
    bits = get_level(level).prime_bits
    if pool:
        data = json.loads(Path(pool).read_text())
        ps = [int(p, 16) for p in data.get(str(bits), [])]
        if len(ps) >= 6:
            return ps[:6]
    print(f"generating 6 safe primes of {bits} bits (once)", file=sys.stderr)
    return [generate_safe_prime(bits) for _ in range(6)]


def _ceremony(kind: str, primes: list[int], level: str, workdir: Path) -> dict[str, float]:
    ids = {i: Identity.generate(i) for i in range(4)}
    roster = {i: ids[i].public() for i in ids}
    broker = MemoryBroker()
    stores = []
    for i in (1, 2, 3):
        cfg = StoreConfig("memory") if kind == "memory" else StoreConfig("sqlite", path=str(workdir / f"p{i}.sqlite"))
        st = PartyStore(i, cfg, os.urandom(32))
        stores.append(st)
        pool = iter(primes[2 * (i - 1): 2 * i])
        broker.add(PartyRuntime(i, ids[i], roster, st, level=level, primes=lambda bits, it=pool: next(it)))
    times = {}
    t0 = time.perf_counter()
    broker.publish(start_envelope(ids[0], roster, "kg", Command("keygen", (1, 2, 3), {"threshold": 2}, level, 600.0)))
    broker.run()
    times["keygen"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    broker.publish(start_envelope(ids[0], roster, "sg", Command("sign", (1, 3), {"key_id": "kg", "digest": b"\x42" * 32},
                                                                 level, 600.0)))
    broker.run()
    times["sign"] = time.perf_counter() - t0
    for k in range(POOLED_SIGNS):  # presignatures for the pooled signs (not timed)
        broker.publish(start_envelope(ids[0], roster, f"pp{k}", Command("presign", (1, 3), {"key_id": "kg"}, level,
                                                                        600.0)))
        broker.run()
    t0 = time.perf_counter()
    for k in range(POOLED_SIGNS):
        params = {"key_id": "kg", "digest": bytes([k]) * 32, "presig_id": f"pp{k}"}
        broker.publish(start_envelope(ids[0], roster, f"ps{k}", Command("sign", (1, 3), params, level, 600.0)))
        broker.run()
    times["pooled_sign"] = (time.perf_counter() - t0) / POOLED_SIGNS
    for st in stores:
        st.close()
    if len(broker.outcomes("sg")) != 2 or any(len(broker.outcomes(f"ps{k}")) != 2 for k in range(POOLED_SIGNS)):
        raise RuntimeError("benchmark ceremony did not complete")
    times["total"] = times["keygen"] + times["sign"]
    return times


def store_overhead(level: str, runs: int, pool: str | None) -> dict[str, Any]:
    primes = _primes(level, pool)
    samples: dict[str, list[dict[str, float]]] = {"memory": [], "sqlite": []}
    for r in range(runs):
        for kind in ("memory", "sqlite") if r % 2 == 0 else ("sqlite", "memory"):
            with tempfile.TemporaryDirectory() as d:
                samples[kind].append(_ceremony(kind, primes, level, Path(d)))
            print(f"  run {r + 1}/{runs} {kind}: {samples[kind][-1]['total']:.3f}s", file=sys.stderr)
    med = {k: {p: statistics.median(s[p] for s in v) for p in PHASES} for k, v in samples.items()}
    return {"level": level, "runs": runs, "median_seconds": med,
            "sqlite_over_memory": {p: med["sqlite"][p] / med["memory"][p] for p in PHASES}}


def over_nats(level: str, runs: int, pool: str | None) -> dict[str, Any]:
    import anyio

    from ops.cli import main as cli_main
    from ops.client import Coordinator
    from ops.deploy import Deployment

    with tempfile.TemporaryDirectory() as d:
        # no background refill: it would presign on the same CPUs while the sign is timed
        up = ["up", "--data-dir", d, "--security-level", level, "--json", "--round-timeout", "300", "--pool-high", "0"]
        if pool:
            up += ["--prime-pool", pool]
        with contextlib.redirect_stdout(io.StringIO()):
            if cli_main(up) != 0:
                raise RuntimeError("conclave up failed")
        try:
            dep = Deployment(Path(d))

            async def go() -> dict[str, list[float]]:
                out: dict[str, list[float]] = {"keygen": [], "sign": []}
                async with Coordinator(dep) as c:
                    key = None
                    for r in range(runs):
                        kg = await c.run("keygen", (1, 2, 3), {"threshold": 2})
                        out["keygen"].append(kg.seconds)
                        key = kg.result["key_id"]
                        print(f"  nats keygen {r + 1}/{runs}: {kg.seconds:.3f}s", file=sys.stderr)
                    for r in range(runs):
                        sg = await c.run("sign", (1, 3), {"key_id": key, "digest": os.urandom(32)})
                        out["sign"].append(sg.seconds)
                return out

            samples = anyio.run(go)
        finally:
            with contextlib.redirect_stdout(io.StringIO()):
                cli_main(["down", "--data-dir", d])
    return {"level": level, "runs": runs, "median_seconds": {k: statistics.median(v) for k, v in samples.items()},
            "samples": samples}


def cmd_bench_runtime(args) -> int:
    result: dict[str, Any] = {"store": store_overhead(args.security_level, args.runs, args.prime_pool)}
    if args.nats:
        result["nats"] = over_nats(args.security_level, args.runs, args.prime_pool)
    if args.json:
        print(json.dumps(result))
        return 0
    s = result["store"]
    print(f"2-of-3 keygen+aux-info then presign+sign, {s['level']}, medians of {s['runs']} runs (fixed primes)")
    print(f"{'':12}{'memory':>10}{'sqlite':>10}{'ratio':>8}")
    for p in PHASES:
        m, q = s["median_seconds"]["memory"][p], s["median_seconds"]["sqlite"][p]
        print(f"{p:12}{m:>9.4f}s{q:>9.4f}s{q / m:>8.3f}")
    if "nats" in result:
        n = result["nats"]["median_seconds"]
        print(f"over NATS (3 processes): keygen {n['keygen']:.3f}s, sign {n['sign']:.3f}s (medians)")
    return 0


def configure(sub) -> None:
    p = sub.add_parser("bench-runtime", help="event-store overhead (SQLite vs memory) and ceremony times over NATS")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--security-level", default="cggmp21-128")
    p.add_argument("--prime-pool", metavar="FILE", help="pregenerated safe primes (default: generate 6 once)")
    p.add_argument("--nats", action="store_true", help="also time keygen and sign over NATS with 3 processes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_runtime)
