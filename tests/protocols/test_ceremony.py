"""Honest ceremonies over several (t, n), checked from the outside."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from engine.crypto import vss
from engine.crypto.group import base_mul, sum_points
from engine.protocols.base import Abort
from engine.simulation import Simulation
from schemas.codec import packb, unpackb
from tests.conftest import SeededRng
from tests.protocols.support import assert_valid_signature, prime_pool


def digest_of(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


@pytest.fixture(scope="module")
def two_of_three():
    sim = Simulation(3, 2, level="dev-2048", primes=prime_pool(1024))
    shares = sim.keygen()
    aux = sim.aux_info()
    return sim, shares, aux


def test_key_shares_are_consistent_without_rebuilding_the_key(two_of_three):
    sim, shares, aux = two_of_three
    Y = shares[1].public_key
    for i, share in shares.items():
        assert share.public_key == Y
        assert share.public_shares == shares[1].public_shares
        assert base_mul(share.x) == share.public_shares[i]
    # every t-subset of public shares interpolates to Y in the exponent
    for quorum in itertools.combinations(sim.party_ids, 2):
        assert sum_points(shares[1].public_shares[j] * vss.lagrange(quorum, j) for j in quorum) == Y


@pytest.mark.parametrize("signers", list(itertools.combinations((1, 2, 3), 2)))
def test_every_pair_of_three_can_sign(two_of_three, signers):
    sim, shares, aux = two_of_three
    digest = digest_of(f"pair {signers}")
    presigs = sim.presign(shares, aux, signers)
    sig = sim.sign(presigs, digest)
    assert sig.signers == signers
    assert sig.public_key == shares[1].public_key
    assert_valid_signature(sig, digest)


def test_fresh_presignature_per_signature(two_of_three):
    sim, shares, aux = two_of_three
    a = sim.presign(shares, aux, (1, 2))
    b = sim.presign(shares, aux, (1, 2))
    assert a[1].R != b[1].R
    for presigs, text in ((a, "first"), (b, "second")):
        assert_valid_signature(sim.sign(presigs, digest_of(text)), digest_of(text))


def test_two_of_two():
    sim = Simulation(2, 2, level="dev-2048", primes=prime_pool(1024))
    digest = digest_of("2-of-2")
    ceremony = sim.run(digest)
    assert_valid_signature(ceremony.signature, digest)
    assert set(ceremony.timings) == {"keygen", "aux_info", "presign", "sign"}


@pytest.mark.parametrize("signers", [(1, 3, 5), (2, 3, 4), (1, 2, 5)])
def test_three_of_five(three_of_five, signers):
    sim, shares, aux = three_of_five
    digest = digest_of(f"3-of-5 {signers}")
    sig = sim.sign(sim.presign(shares, aux, signers), digest)
    assert sig.signers == signers
    assert_valid_signature(sig, digest)


def test_default_level_3072_bit(request):
    """One full run at the production level (3072-bit moduli)."""
    sim = Simulation(3, 2, level="cggmp21-128", primes=prime_pool(1536))
    digest = digest_of("production level")
    ceremony = sim.run(digest, (2, 3))
    assert_valid_signature(ceremony.signature, digest)
    assert all(a.sk.n.bit_length() >= 3071 for a in ceremony.aux.values())


def test_every_round_state_survives_msgpack_and_the_run_resumes_from_it():
    """Each state is encoded, decoded, compared, and the next round runs on the decoded copy."""
    seen: list[type] = []

    def persist(state):
        decoded = unpackb(packb(state))
        assert decoded == state
        assert type(decoded) is type(state)
        seen.append(type(state))
        return decoded

    sim = Simulation(3, 2, level="dev-2048", primes=prime_pool(1024), rng=SeededRng(7), persist=persist)
    digest = digest_of("resume")
    ceremony = sim.run(digest, (1, 3))
    assert_valid_signature(ceremony.signature, digest)
    names = {f"{t.__module__.rsplit('.', 1)[-1]}.{t.__name__}" for t in seen}
    expected = {f"{m}.State{k}" for m in ("keygen", "aux_info", "presign") for k in (1, 2, 3)} | {"sign.State1"}
    assert names == expected
    # outputs travel too: key shares, aux info and presignatures
    for obj in (*ceremony.key_shares.values(), *ceremony.aux.values(), *ceremony.presignatures.values()):
        assert unpackb(packb(obj)) == obj


def test_secrets_stay_out_of_repr(two_of_three):
    sim, shares, aux = two_of_three
    presigs = sim.presign(shares, aux, (1, 2))
    share, info, presig = shares[1], aux[1], presigs[1]
    secrets_ = [share.x, info.sk.p, info.sk.q, presig.k, presig.chi]
    for obj in (share, info, info.sk, presig):
        text = repr(obj) + str(obj)
        for secret in secrets_:
            assert str(secret) not in text and f"{secret:x}" not in text


def test_round_rejects_message_from_wrong_round_before_any_crypto(two_of_three):
    from engine.protocols import keygen

    params = {i: keygen.KeygenParams(b"e1", i, (1, 2, 3), 2) for i in (1, 2, 3)}
    firsts = {i: keygen.round1(p, SeededRng(i)) for i, p in params.items()}
    msg_from_2 = firsts[2].outbox[0]
    stale = type(msg_from_2)(msg_from_2.protocol, msg_from_2.eid, 7, 2, None, msg_from_2.body)
    result = keygen.round2(firsts[1].state, (stale, firsts[3].outbox[0]), SeededRng(0))
    assert isinstance(result, Abort) and result.culprits == (2,)
    assert "round 7" in result.reason


def test_signs_for_an_hd_child_key_with_an_additive_tweak(two_of_three):
    sim, shares, aux = two_of_three
    tweak = int.from_bytes(digest_of("child tweak"), "big") % (2**255)
    digest = digest_of("child key")
    sig = sim.sign(sim.presign(shares, aux, (1, 3)), digest, tweak=tweak)
    assert sig.public_key == shares[1].public_key + base_mul(tweak)
    assert_valid_signature(sig, digest)


def test_a_partial_that_ignores_the_tweak_is_blamed(two_of_three):
    from engine.protocols import sign

    sim, shares, aux = two_of_three
    presigs = sim.presign(shares, aux, (1, 2))
    digest, tweak = digest_of("tweaked"), 12345
    honest = sign.round1(sign.SignParams(b"eid", 1, digest, tweak), presigs[1])
    lazy = sign.round1(sign.SignParams(b"eid", 2, digest, 0), presigs[2])  # party 2 signs for the parent key
    out = sign.output(honest.state, lazy.outbox)
    assert isinstance(out, Abort) and out.culprits == (2,)
    assert "σ_j" in out.reason
