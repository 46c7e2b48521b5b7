"""Fixtures for the ceremony engine tests: party stores, runtimes and a keyed 2-of-3 cluster.

Keygen is the slow part (aux-info proofs), so it runs once per session on SQLite
stores (:func:`keygen_template`). Every test then gets its own copy of that
state (:func:`cluster`): the SQLite files are copied into the test's tmp_path,
or, for the memory backend, the recorded events are inserted into fresh
in-memory stores. The broker's log is copied too, so stream sequences carry on
where the keygen left them (each store's tracking row remembers them).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from eventsourcing.persistence import Tracking

from engine.ceremony.runtime import Command, Outgoing, PartyRuntime, Step, start_envelope
from engine.ceremony.store import PartyStore, StoreConfig
from handlers.memory import MemoryBroker
from schemas.envelope import COORDINATOR, Identity, open_envelope
from tests.conftest import load_safe_primes

LEVEL = "dev-2048"  # 1024-bit fixture primes
PARTIES = (1, 2, 3)
KEY_ID = "kg"
PRIMES = load_safe_primes(1024)


def prime_source(party: int) -> Callable[[int], int]:
    """Party ``party``'s own two fixture primes (one keygen's worth); never searches for primes."""
    pool = iter(PRIMES[2 * (party - 1): 2 * party])
    return lambda bits: next(pool)


class FakeClock:
    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def digest_of(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


@dataclass
class Cluster:
    """Three parties, their stores and runtimes, a coordinator identity and a MemoryBroker."""

    kind: str  # "sqlite" or "memory"
    ids: dict[int, Identity]
    roster: dict[int, Any]
    keks: dict[int, bytes]
    clock: FakeClock
    broker: MemoryBroker
    directory: Path | None = None
    stores: dict[int, PartyStore] = field(default_factory=dict)
    steps: list[tuple[int, int, Step]] = field(default_factory=list)  # (party, seq, step)
    _abandoned: list[PartyStore] = field(default_factory=list)

    # -- building ----------------------------------------------------------
    def config(self, party: int) -> StoreConfig:
        if self.kind == "sqlite":
            return StoreConfig("sqlite", path=str(self.directory / f"party{party}.sqlite"))
        return StoreConfig("memory")

    def open_store(self, party: int) -> PartyStore:
        return PartyStore(party, self.config(party), self.keks[party])

    def make_runtime(self, party: int, store: PartyStore | None = None) -> PartyRuntime:
        store = store or self.open_store(party)
        self.stores[party] = store
        return PartyRuntime(party, self.ids[party], self.roster, store, level=LEVEL, primes=prime_source(party),
                            clock=self.clock)

    def add(self, party: int, store: PartyStore | None = None) -> PartyRuntime:
        rt = self.make_runtime(party, store)
        self.broker.add(rt)
        return rt

    def crash(self, party: int) -> PartyStore:
        """Throw the runtime away as a SIGKILL would: nothing is closed or flushed."""
        self.broker.parties.pop(party)
        old = self.stores.pop(party)
        self._abandoned.append(old)
        return old

    def close(self) -> None:
        for st in list(self.stores.values()) + self._abandoned:
            try:
                st.close()
            except Exception:
                pass

    # -- driving -----------------------------------------------------------
    def rt(self, party: int) -> PartyRuntime:
        return self.broker.parties[party]

    def start(self, execution: str, kind: str, participants: tuple[int, ...], params: dict[str, Any],
              timeout: float = 60.0, level: str = LEVEL) -> Outgoing:
        out = start_envelope(self.ids[COORDINATOR], self.roster, execution,
                             Command(kind, tuple(participants), params, level, timeout))
        self.broker.publish(out)
        return out

    def run(self) -> int:
        return self.broker.run()

    def deliver_next(self, party: int) -> tuple[int, str, Step] | None:
        """Deliver the next message ``party``'s consumer wants, as MemoryBroker.run does; None if none."""
        b = self.broker
        while b.cursors[party] < len(b.log):
            seq, subject, data = b.log[b.cursors[party]]
            b.cursors[party] += 1
            if not b.wants(party, subject):
                continue
            step = b.parties[party].handle(data, subject, seq, b._times.get(seq))
            self.steps.append((party, seq, step))
            b.publish_all(step.outgoing)
            return seq, subject, step
        return None

    def pending(self, party: int) -> list[tuple[int, str, bytes]]:
        b = self.broker
        return [m for m in b.log[b.cursors[party]:] if b.wants(party, m[1])]

    def outcomes(self, execution: str) -> dict[int, dict[str, Any]]:
        return {p: msgpack.unpackb(open_envelope(d, self.roster, self.ids[COORDINATOR]).body, raw=False)
                for p, d in self.broker.outcomes(execution).items()}

    def sign(self, execution: str, signers: tuple[int, ...], digest: bytes, **extra: Any) -> dict[int, dict]:
        self.start(execution, "sign", signers, {"key_id": KEY_ID, "digest": digest, **extra})
        self.run()
        return self.outcomes(execution)


def assert_no_conflicting_publishes(broker: MemoryBroker) -> None:
    """Every msg_id was only ever published with one payload."""
    seen: dict[str, bytes] = {}
    for o in broker.published:
        assert seen.setdefault(o.msg_id, o.data) == o.data, f"{o.msg_id} published with two different payloads"


def _copy_broker(src: MemoryBroker) -> MemoryBroker:
    return MemoryBroker(log=list(src.log), published=list(src.published), cursors=dict(src.cursors),
                        _ids=set(src._ids))


@dataclass
class Template:
    directory: Path
    ids: dict[int, Identity]
    roster: dict[int, Any]
    keks: dict[int, bytes]
    broker: MemoryBroker
    notifications: dict[int, list[Any]]  # stored (encrypted) events of each party, in commit order
    last_seq: dict[int, int | None]
    outcomes: dict[int, dict[str, Any]]
    keygen_seconds: float


def _new_identities() -> tuple[dict[int, Identity], dict[int, Any]]:
    ids = {i: Identity.generate(i) for i in (COORDINATOR, *PARTIES)}
    return ids, {i: ids[i].public() for i in ids}


def run_keygen(c: Cluster, execution: str = KEY_ID) -> dict[int, dict[str, Any]]:
    c.start(execution, "keygen", PARTIES, {"threshold": 2})
    c.run()
    return c.outcomes(execution)


@pytest.fixture(scope="session")
def keygen_template(tmp_path_factory) -> Iterator[Template]:
    """One real 2-of-3 keygen on SQLite stores, kept as a template for every test."""
    directory = tmp_path_factory.mktemp("keygen-template")
    ids, roster = _new_identities()
    keks = {i: os.urandom(32) for i in PARTIES}
    c = Cluster("sqlite", ids, roster, keks, FakeClock(), MemoryBroker(), directory=directory)
    for i in PARTIES:
        c.add(i)
    t0 = time.perf_counter()
    outcomes = run_keygen(c)
    seconds = time.perf_counter() - t0
    notes, seqs = {}, {}
    for i, st in c.stores.items():
        notes[i] = list(st.app.recorder.select_notifications(start=1, limit=1_000_000))
        seqs[i] = st.last_seq()
    c.close()
    yield Template(directory, ids, roster, keks, _copy_broker(c.broker), notes, seqs, outcomes, seconds)


def clone_cluster(t: Template, kind: str, directory: Path) -> Cluster:
    """A fresh cluster holding the template's post-keygen state, on ``kind`` stores."""
    c = Cluster(kind, t.ids, t.roster, t.keks, FakeClock(), _copy_broker(t.broker), directory=directory)
    for i in PARTIES:
        if kind == "sqlite":
            for f in t.directory.glob(f"party{i}.sqlite*"):
                shutil.copy2(f, directory / f.name)
            c.add(i)
        else:
            store = c.open_store(i)
            tracking = Tracking(store.tracking_name, t.last_seq[i]) if t.last_seq[i] is not None else None
            store.app.recorder.insert_events(t.notifications[i], tracking=tracking)
            c.add(i, store)
    return c


@pytest.fixture(params=["sqlite", "memory"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def cluster(keygen_template, backend, tmp_path) -> Iterator[Cluster]:
    c = clone_cluster(keygen_template, backend, tmp_path)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def sqlite_cluster(keygen_template, tmp_path) -> Iterator[Cluster]:
    c = clone_cluster(keygen_template, "sqlite", tmp_path)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def fresh_cluster(tmp_path) -> Callable[[str], Cluster]:
    """A cluster with no key yet (for keygen-phase tests)."""
    made: list[Cluster] = []

    def make(kind: str) -> Cluster:
        ids, roster = _new_identities()
        directory = tmp_path / f"fresh{len(made)}"
        directory.mkdir()
        c = Cluster(kind, ids, roster, {i: os.urandom(32) for i in PARTIES}, FakeClock(), MemoryBroker(),
                    directory=directory)
        for i in PARTIES:
            c.add(i)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
