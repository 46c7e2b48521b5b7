"""Fixed-base exponentiation agrees with gmpy2.powmod for every kind of exponent."""

from __future__ import annotations

import secrets

import gmpy2
import pytest
from gmpy2 import mpz

from engine.crypto.fixed_base import FixedBase, fixed_base
from engine.crypto.ring_pedersen import RingPedersenParams
from tests.conftest import paillier_keys


@pytest.fixture(scope="module")
def modulus() -> mpz:
    return mpz(paillier_keys("dev-2048", 1)[0].n)


def test_matches_powmod_on_every_kind_of_exponent(modulus):
    base = mpz(secrets.randbelow(int(modulus) - 2) + 2)
    table = FixedBase(base, modulus, 2048 + 64)
    exponents = [0, 1, 2, 15, 16, 17, 255, 2**64 + 3, modulus - 1, modulus, modulus + 12345,
                 mpz(2) ** table.bits - 1,  # the largest the table covers
                 mpz(2) ** table.bits + 5,  # past it: falls back to powmod
                 *(secrets.randbits(k) for k in (8, 128, 768, 2048, 2112))]
    for e in exponents:
        assert table.pow(e) == gmpy2.powmod(base, e, modulus), e
        assert table.pow(-e) == gmpy2.powmod(base, -e, modulus), -e  # through the inverse


def test_ring_pedersen_commitments_are_unchanged(modulus):
    t = mpz(secrets.randbelow(int(modulus))) ** 2 % modulus
    s = gmpy2.powmod(t, secrets.randbits(256), modulus)
    params = RingPedersenParams(int(modulus), int(s), int(t))
    for x, y in ((0, 0), (5, -7), (-(2**700), 2**2600 + 1), (secrets.randbits(3000), -secrets.randbits(3000))):
        assert params.commit(x, y) == gmpy2.powmod(s, x, modulus) * gmpy2.powmod(t, y, modulus) % modulus


def test_tables_are_built_once_per_base(modulus):
    fixed_base.cache_clear()
    a = fixed_base(7, int(modulus))
    assert fixed_base(7, int(modulus)) is a and fixed_base(11, int(modulus)) is not a
    assert fixed_base.cache_info().misses == 2
