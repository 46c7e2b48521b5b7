"""Identifiable abort inside a 3-of-5 quorum: the culprit is named wherever it sits."""

from __future__ import annotations

import pytest

from engine.cheats import Cheat
from engine.simulation import Aborted, Simulation


@pytest.mark.parametrize(
    "kind, cheater, signers",
    [
        ("bad-enc-proof", 5, (1, 3, 5)),
        ("bad-affg-proof", 4, (2, 3, 4)),
        ("bad-logstar-proof", 1, (1, 2, 5)),
        ("bad-sigma-share", 3, (1, 3, 4)),
    ],
)
def test_presign_and_sign_cheaters_are_named(three_of_five, kind, cheater, signers):
    base, shares, aux = three_of_five
    sim = Simulation(5, 3, level="dev-2048", cheat=Cheat(cheater, kind))
    with pytest.raises(Aborted) as caught:
        presigs = sim.presign(shares, aux, signers)
        sim.sign(presigs, b"\x42" * 32)
    abort = caught.value.abort
    assert abort.culprits == (cheater,)
    assert abort.attributable
    # every honest signer that saw the fault blamed the cheater, and only the cheater
    honest_reports = {i: a for i, a in caught.value.reports.items() if i != cheater}
    assert honest_reports and set(honest_reports) <= set(signers) - {cheater}
    assert all(a.culprits == (cheater,) for a in honest_reports.values())
    assert all(f":{cheater}:" in m for m in abort.messages)


@pytest.mark.parametrize("kind, cheater", [("bad-vss-share", 4), ("equivocate-broadcast", 5), ("bad-schnorr-proof", 1)])
def test_keygen_cheaters_are_named(kind, cheater):
    sim = Simulation(5, 3, level="dev-2048", cheat=Cheat(cheater, kind))
    with pytest.raises(Aborted) as caught:
        sim.keygen()
    assert caught.value.abort.culprits == (cheater,)


def _echo_round(lie_about: int | None, equivocator: int | None):
    """Round 3 of keygen for parties 1..3 where one party lies in its echo or equivocates."""
    import dataclasses

    from engine.protocols import keygen
    from tests.conftest import SeededRng

    params = {i: keygen.KeygenParams(b"echo", i, (1, 2, 3), 2) for i in (1, 2, 3)}
    r1 = {i: keygen.round1(p, SeededRng(i)) for i, p in params.items()}

    def inbox(i, results):
        return tuple(m for j, res in results.items() if j != i for m in res.outbox if m.recipient in (None, i))

    def r1_inbox(i):
        msgs = list(inbox(i, r1))
        if equivocator is not None and i == 1:  # party 1 gets a different commitment
            msgs = [dataclasses.replace(m, body=keygen.Commitment(b"\x00" * 32)) if m.sender == equivocator else m
                    for m in msgs]
        return tuple(msgs)

    r2 = {i: keygen.round2(r1[i].state, r1_inbox(i), SeededRng(10 + i)) for i in (1, 2, 3)}
    if lie_about is not None:  # party 3 misreports party `lie_about`'s commitment
        out = []
        for m in r2[3].outbox:
            if m.recipient is None:
                echo = dict(m.body.echo)
                echo[lie_about] = b"\xff" * 32
                m = dataclasses.replace(m, body=dataclasses.replace(m.body, echo=echo))
            out.append(m)
        r2[3] = dataclasses.replace(r2[3], outbox=tuple(out))
    return {i: keygen.round3(r2[i].state, inbox(i, r2), SeededRng(20 + i)) for i in (1, 2, 3)}


def test_lying_echo_never_frames_the_honest_sender():
    results = _echo_round(lie_about=1, equivocator=None)
    # party 1 knows what it broadcast: it blames the liar; party 2 cannot tell and blames nobody
    assert results[1].culprits == (3,)
    assert results[2].culprits == () and not results[2].attributable
    assert all(1 not in getattr(r, "culprits", ()) for r in results.values())


def test_equivocating_sender_is_named_by_its_victim():
    results = _echo_round(lie_about=None, equivocator=2)
    assert results[1].culprits == (2,)
    assert results[3].culprits == ()  # the bystander cannot tell who lied, so blames nobody


def test_receivers_refuse_a_modulus_below_their_level():
    """Parties at cggmp21-128 blame a peer that brings a 2048-bit Paillier modulus."""
    from engine.crypto.paillier import PaillierSecretKey
    from engine.protocols import aux_info
    from engine.simulation import run_rounds
    from tests.conftest import SeededRng, load_safe_primes

    big, small = load_safe_primes(1536), load_safe_primes(1024)
    keys = {1: PaillierSecretKey(big[0], big[1]), 2: PaillierSecretKey(big[2], big[3]),
            3: PaillierSecretKey(small[0], small[1])}
    levels = {1: "cggmp21-128", 2: "cggmp21-128", 3: "dev-2048"}  # party 3 claims the weaker level
    rng = SeededRng(3)
    firsts = {
        i: aux_info.round1(aux_info.AuxParams(b"aux-level", i, (1, 2, 3), levels[i]), keys[i], rng) for i in keys
    }
    with pytest.raises(Aborted) as caught:
        run_rounds("aux", firsts, aux_info.ROUNDS, rng, honest=lambda i: i != 3)
    assert caught.value.abort.culprits == (3,)
    assert "below the required 3071" in caught.value.abort.reason
