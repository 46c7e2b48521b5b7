"""The JetStream edge (:class:`handlers.party.PartyService`) in one process.

Three services share one event loop and a private nats-server; their stores
are in memory. This lets a test make one party's store fail at a chosen moment
and check that the edge neither loses nor reorders what the consumer
delivered.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from engine.ceremony.runtime import PartyRuntime
from engine.ceremony.store import PartyStore, StoreConfig
from engine.crypto import ecdsa
from handlers.party import PartyService
from ops.client import CeremonyFailed, Coordinator
from ops.deploy import Deployment
from ops.party import prime_source

POOL = Path(__file__).resolve().parents[1] / "fixtures" / "safe_primes.json"

pytestmark = pytest.mark.timeout(180)


class FlakyStore(PartyStore):
    """Fails the n-th commits of a stream message listed in ``fail_at`` (counting from 1), like a database blip."""

    fail_at: set[int]
    commits = 0

    def save(self, *aggregates, seq=None):
        if seq is not None:
            self.commits += 1
            if self.commits in self.fail_at:
                self.fail_at.discard(self.commits)
                raise OSError("simulated database outage")
        return super().save(*aggregates, seq=seq)


def _deployment(tmp_path: Path, url: str, round_timeout: float = 30.0) -> Deployment:
    dep = Deployment(tmp_path / "home")
    dep.init(parties=3, threshold=2, level="dev-2048", nats_url=url, store={"kind": "memory"},
             round_timeout=round_timeout, prime_pool=str(POOL))
    return dep


def _service(dep: Deployment, i: int, store_cls=PartyStore) -> PartyService:
    store = store_cls(i, StoreConfig("memory"), dep.kek(i))
    runtime = PartyRuntime(i, dep.identity(i), dep.roster(), store, level="dev-2048",
                           primes=prime_source(str(POOL), i, 3))
    return PartyService(runtime, dep.config()["nats"]["url"])


@asynccontextmanager
async def running(services: dict[int, PartyService]):
    """The services, started and ready; stopped when the block ends."""
    async with anyio.create_task_group() as tg:
        for s in services.values():
            tg.start_soon(s.run)
        try:
            for s in services.values():
                await s.ready.wait()
            yield
        finally:
            for s in services.values():
                s.stop.set()


def test_a_failed_commit_is_retried_in_order_and_nothing_is_lost(tmp_path, nats_server):
    dep = _deployment(tmp_path, nats_server.url)
    services = {i: _service(dep, i, FlakyStore if i == 2 else PartyStore) for i in (1, 2, 3)}
    # party 2's commits fail at several points during the keygen and the sign; every time, the
    # messages already fetched behind the failed one must come back after it, not be skipped
    services[2].runtime.store.fail_at = {2, 5, 9, 14}

    async def main():
        async with running(services), Coordinator(dep) as c:
            kg = await c.run("keygen", (1, 2, 3), {"threshold": 2}, timeout=120)
            digest = os.urandom(32)
            sg = await c.run("sign", (1, 2), {"key_id": kg.result["key_id"], "digest": digest}, timeout=60)
        return kg, sg, digest

    kg, sg, digest = anyio.run(main)
    assert services[2].runtime.store.fail_at == set(), "the injected failures did not all happen"
    pub = bytes.fromhex(kg.result["public_key"])
    assert ecdsa.verify_digest(pub, digest, int(sg.result["r"], 16), int(sg.result["s"], 16), require_low_s=True)
    assert services[2].runtime.status()["finished"] == {"completed": 2, "aborted": 0}


def test_a_message_that_always_fails_is_recorded_and_skipped(tmp_path, nats_server):
    """A message the party can never process (a bug, say) must not wedge it: after a few attempts
    it is recorded as rejected, that ceremony runs into its deadline, and later ones work."""
    dep = _deployment(tmp_path, nats_server.url, round_timeout=4.0)
    services = {i: _service(dep, i) for i in (1, 2, 3)}
    victim = services[2].runtime
    real_handle = victim.handle
    poisoned: list[int] = []

    def handle(raw, subject, seq, published_at=None, msg_id=None):
        if ".keygen-2." in subject and (not poisoned or poisoned[0] == seq):
            poisoned[:1] = [seq]
            raise RuntimeError("cannot process this one")
        return real_handle(raw, subject, seq, published_at, msg_id)

    victim.handle = handle

    async def main():
        async with running(services), Coordinator(dep) as c:
            with pytest.raises(CeremonyFailed) as first:
                await c.run("keygen", (1, 2, 3), {"threshold": 2}, timeout=60)
            second = await c.run("keygen", (1, 2, 3), {"threshold": 2}, timeout=60)
        return first.value, second

    first, second = anyio.run(main)
    assert first.status == "aborted" and "timed out" in first.reason
    assert second.result["parties"] == [1, 2, 3]
    reasons = [e.reason for e in victim.store.all_events() if type(e).__qualname__ == "Rejection.Recorded"]
    assert reasons.count("could not be processed: RuntimeError") == 1, reasons
    assert victim.store.processed(poisoned[0])
