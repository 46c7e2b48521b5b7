"""``python -m ops.party --data-dir DIR --party I``: one party process.

``conclave up`` starts these; each runs until SIGTERM, then finishes the
message in hand and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

import anyio

from engine.ceremony import tracing
from engine.ceremony.policies import PolicyBook
from engine.ceremony.runtime import PartyRuntime
from engine.ceremony.store import PartyStore
from handlers.party import PartyService
from ops.deploy import Deployment


def prime_source(pool_file: str | None, party: int, parties: int):
    """Safe primes from a pregenerated pool (tests, demos), else None: generate fresh."""
    if not pool_file:
        return None
    pool = {int(bits): [int(p, 16) for p in ps] for bits, ps in json.loads(Path(pool_file).read_text()).items()}
    counter = {"n": 0}

    def take(bits: int) -> int:
        ps = pool.get(bits)
        if not ps:
            raise RuntimeError(f"prime pool has no {bits}-bit safe primes")
        # party i only ever takes primes i-1, i-1+n, i-1+2n, ...: parties never share a modulus
        mine = ps[party - 1::parties]
        if len(mine) < 2:
            raise RuntimeError(f"prime pool has too few {bits}-bit primes for {parties} parties")
        p = mine[counter["n"] % len(mine)]
        counter["n"] += 1
        return p

    return take


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="conclave-party")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--party", type=int, required=True)
    args = ap.parse_args(argv)
    dep = Deployment(Path(args.data_dir))
    cfg = dep.config()
    i = args.party
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s party-{i} %(levelname)s %(name)s: %(message)s")
    tracing.install(f"conclave-party-{i}")
    store = PartyStore(i, dep.store_config(i), dep.kek(i))
    # the development allow-all policy only ever applies to the embedded single-machine deployment
    policies = PolicyBook(dep.policy_dir(i), allow_dev=bool(cfg["nats"].get("embedded")))
    runtime = PartyRuntime(i, dep.identity(i), dep.roster(), store, level=cfg["level"],
                           primes=prime_source(cfg.get("prime_pool"), i, int(cfg["parties"])), policies=policies)
    service = PartyService(runtime, cfg["nats"]["url"], ready_file=dep.party_dir(i) / "party.ready")

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        logging.getLogger("conclave.party").info("party %s stopping", i)
                        service.stop.set()
                        return

            tg.start_soon(on_signals)
            await service.run()
            tg.cancel_scope.cancel()

    try:
        anyio.run(run)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
