"""Helpers shared by the protocol tests."""

from __future__ import annotations

from engine.crypto import ecdsa
from engine.crypto.group import Q
from engine.protocols.sign import SignatureResult
from tests.conftest import load_safe_primes
from tests.helpers_openssl import openssl_verify


def prime_pool(bits: int):
    """A prime source that hands out fixture primes without reuse."""
    primes = iter(load_safe_primes(bits))
    return lambda want: next(primes)


def assert_valid_signature(sig: SignatureResult, digest: bytes) -> None:
    """The checks every released signature must pass, by three independent routes."""
    pub = sig.public_key.to_bytes()
    assert sig.digest == digest
    assert 1 <= sig.r < Q and 1 <= sig.s <= Q // 2, "signature must be low-S"
    assert sig.v in (0, 1)
    assert ecdsa.verify_digest(pub, digest, sig.r, sig.s, require_low_s=True)  # libsecp256k1
    assert openssl_verify(pub, digest, sig.der())  # OpenSSL via cryptography
    assert ecdsa.recover(digest, ecdsa.Signature(sig.r, sig.s, sig.v)) == sig.public_key
    wrong = ecdsa.Signature(sig.r, sig.s, sig.v ^ 1)
    assert ecdsa.recover(digest, wrong) != sig.public_key
