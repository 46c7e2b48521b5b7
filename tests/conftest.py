"""Shared fixtures: pregenerated safe primes, so no test searches for primes."""

from __future__ import annotations

import json
import pathlib
import random

import pytest

from engine.crypto.paillier import PaillierSecretKey
from engine.crypto.security import LEVELS

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def load_safe_primes(bits: int) -> list[int]:
    data = json.loads((FIXTURES / "safe_primes.json").read_text())
    return [int(p, 16) for p in data[str(bits)]]


def paillier_keys(level_name: str, count: int) -> list[PaillierSecretKey]:
    """``count`` distinct Paillier secret keys from fixture primes for the level."""
    level = LEVELS[level_name]
    primes = load_safe_primes(level.prime_bits)
    if 2 * count > len(primes):
        raise ValueError("not enough fixture primes")
    return [PaillierSecretKey(primes[2 * i], primes[2 * i + 1]) for i in range(count)]


class SeededRng:
    """Deterministic randomness for reproducible tests (never used outside tests)."""

    def __init__(self, seed: int) -> None:
        self._r = random.Random(seed)

    def randbelow(self, n: int) -> int:
        return self._r.randrange(n)

    def randbits(self, k: int) -> int:
        return self._r.getrandbits(k)

    def randbytes(self, n: int) -> bytes:
        return self._r.randbytes(n)


@pytest.fixture
def rng() -> SeededRng:
    return SeededRng(1234)


@pytest.fixture(scope="session")
def dev_keys() -> list[PaillierSecretKey]:
    return paillier_keys("dev-2048", 6)


def _ceremony(parties: int, threshold: int):
    from engine.simulation import Simulation
    from tests.protocols.support import prime_pool

    sim = Simulation(parties, threshold, level="dev-2048", primes=prime_pool(1024))
    shares = sim.keygen()
    aux = sim.aux_info()
    return sim, shares, aux


@pytest.fixture(scope="session")
def three_of_five():
    """Key shares and aux info for a 3-of-5 key at dev-2048 (shared: aux-info is the slow part)."""
    return _ceremony(5, 3)


@pytest.fixture
def nats_server(tmp_path):
    """A private nats-server with JetStream on a free loopback port (never the system one on 4222)."""
    from ops.broker import EmbeddedNats

    server = EmbeddedNats(tmp_path / "nats-store", log_file=tmp_path / "nats-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
