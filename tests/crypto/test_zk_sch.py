"""Πsch: completeness, the split commit/respond flow, binding, malformed input."""

from __future__ import annotations

import dataclasses

import pytest

from engine.crypto.group import G, Q, Point, base_mul, random_scalar
from engine.crypto.transcript import proof_context
from engine.crypto.zk import sch
from engine.crypto.zk.common import ProofError
from schemas.codec import packb, unpackb
from tests.conftest import SeededRng

CTX = proof_context(b"exec-sch-1", 3)


@pytest.fixture(scope="module")
def stmt():
    x = random_scalar(SeededRng(1))
    return x, base_mul(x)


@pytest.fixture(scope="module")
def proof(stmt):
    x, X = stmt
    return sch.prove(CTX, X, x, SeededRng(2))


def test_honest_proof_verifies(stmt, proof):
    sch.verify(CTX, stmt[1], proof)


def test_split_flow_matches_prove(stmt, proof):
    x, X = stmt
    tau, A = sch.commit(SeededRng(2))
    assert tau != 0 and A == base_mul(tau)
    z = sch.respond(CTX, X, A, tau, x)
    sch.verify_response(CTX, X, A, z)
    assert sch.SchProof(A, z) == proof
    e = sch.challenge(CTX, X, A)
    assert 0 <= e < Q and z == (tau + e * x) % Q


def test_tampered_fields_rejected(stmt, proof):
    X = stmt[1]
    for bad in (
        dataclasses.replace(proof, z=(proof.z + 1) % Q),
        dataclasses.replace(proof, A=proof.A + G),
        dataclasses.replace(proof, A=-proof.A),
    ):
        with pytest.raises(ProofError, match="Πsch"):
            sch.verify(CTX, X, bad)


@pytest.mark.parametrize(
    "ctx",
    [proof_context(b"exec-sch-2", 3), proof_context(b"exec-sch-1", 4), proof_context(b"exec-sch-1", 3, b"rid")],
)
def test_other_context_rejected(stmt, proof, ctx):
    with pytest.raises(ProofError):
        sch.verify(ctx, stmt[1], proof)


def test_other_statement_rejected(stmt, proof):
    x, X = stmt
    for other in (X + G, -X, base_mul(x + 1)):
        with pytest.raises(ProofError):
            sch.verify(CTX, other, proof)


def test_z_not_reduced_rejected(stmt, proof):
    """z + q satisfies the group equation but is not in Z_q, so it is refused."""
    with pytest.raises(ProofError, match="z is not in Z_q"):
        sch.verify(CTX, stmt[1], dataclasses.replace(proof, z=proof.z + Q))
    with pytest.raises(ProofError, match="z is not in Z_q"):
        sch.verify(CTX, stmt[1], dataclasses.replace(proof, z=proof.z - Q))


def test_zero_secret_and_edge_values():
    # x = 0 (X the identity) still proves and verifies; z = 0 is a legal response value
    p = sch.prove(CTX, Point.identity(), 0, SeededRng(5))
    sch.verify(CTX, Point.identity(), p)


def test_malformed_rejected(stmt, proof):
    X = stmt[1]
    for z in (True, False, "1", None, 1.0, -1, Q, Q + 1, -Q):
        with pytest.raises(ProofError):
            sch.verify(CTX, X, dataclasses.replace(proof, z=z))
    for A in (None, 0, b"\x02" * 33, proof.A.to_bytes(), Point.identity()):
        with pytest.raises(ProofError):
            sch.verify(CTX, X, dataclasses.replace(proof, A=A))
    for bad_X in (None, 1, X.to_bytes()):
        with pytest.raises(ProofError):
            sch.verify(CTX, bad_X, proof)
    for obj in (None, (proof.A, proof.z), "proof"):
        with pytest.raises(ProofError):
            sch.verify(CTX, X, obj)


def test_codec_round_trip(proof):
    assert unpackb(packb(proof)) == proof


def test_fresh_nonces():
    rng = SeededRng(7)
    assert sch.commit(rng)[0] != sch.commit(rng)[0]
