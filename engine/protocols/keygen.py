"""Threshold (t-of-n) distributed key generation.

CGGMP21 Fig. 5 with Feldman VSS for the threshold variant, as the cggmp21 spec's
"Threshold Key Generation" describes it. Party ids are 1..n and party ``i``'s
Shamir evaluation point is ``i`` itself.

Rounds:

1. sample f_i of degree t-1, rid_i, Schnorr commitment A_i; broadcast the hash
   commitment V_i = H(sid, n, i, t, rid_i, S_i, A_i, u_i).
2. broadcast the decommitment (rid_i, S_i, A_i, u_i) with an echo of every V_j;
   send σ_ij = f_i(j) to each P_j (confidential).
3. check echoes, decommitments and σ_ji·G = F_j(i); set rid = ⊕ rid_j,
   x_i = Σ_j σ_ji, X_j = F(j); broadcast the Schnorr response for x_i.
4. (output) verify every Schnorr proof; Y = Σ_j S_j0.

No party ever learns the key: only Y = x·G and the public shares X_j.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.crypto import vss
from engine.crypto.group import Q, Point, Rng, base_mul, sum_points
from engine.crypto.transcript import Transcript, proof_context
from engine.crypto.zk import sch
from engine.crypto.zk.common import ProofError
from engine.protocols.base import (
    Abort,
    Advance,
    Blame,
    Done,
    Msg,
    SecretRepr,
    check_echo,
    collect_commitments,
    gather,
)
from schemas.codec import wire

PROTOCOL = "keygen"
RID_BYTES = 32  # 256-bit rid/u, as the cggmp21 crate's keygen uses

__all__ = ["KeygenParams", "KeyShare", "round1", "round2", "round3", "output", "PROTOCOL"]


@wire("keygen.params")
@dataclass(frozen=True)
class KeygenParams:
    eid: bytes
    party: int
    parties: tuple[int, ...]
    threshold: int

    def validate(self) -> None:
        if len(set(self.parties)) != len(self.parties) or any(p < 1 for p in self.parties):
            raise ValueError("party ids must be distinct positive integers")
        if self.party not in self.parties:
            raise ValueError("this party is not in the party list")
        if not 1 <= self.threshold <= len(self.parties):
            raise ValueError("threshold must be between 1 and the number of parties")
        if not self.eid:
            raise ValueError("execution id must not be empty")

    @property
    def peers(self) -> tuple[int, ...]:
        return tuple(p for p in self.parties if p != self.party)


# -- messages ---------------------------------------------------------------


@wire("keygen.commit")
@dataclass(frozen=True)
class Commitment:
    V: bytes  # V_i


@wire("keygen.decommit")
@dataclass(frozen=True)
class Decommitment:
    rid: bytes  # rid_i
    S: tuple[Point, ...]  # Feldman commitments S_i = (a_ik·G)_k
    A: Point  # Schnorr commitment A_i
    u: bytes  # u_i
    echo: dict[int, bytes]  # digest of every V_j this party received


@wire("keygen.share")
@dataclass(frozen=True, repr=False)
class Share:
    """Confidential: the runtime encrypts it to the recipient."""

    sigma: int  # σ_ij = f_i(j)

    def __repr__(self) -> str:
        return "Share(<hidden>)"


@wire("keygen.schnorr")
@dataclass(frozen=True)
class SchnorrResponse:
    z: int


# -- states -----------------------------------------------------------------


@wire("keygen.state1")
@dataclass(frozen=True, repr=False)
class State1(SecretRepr):
    eid: bytes
    party: int
    params: KeygenParams
    coeffs: tuple[int, ...]  # a_i0 … a_i,t-1
    rid: bytes
    S: tuple[Point, ...]
    tau: int  # τ_i, Schnorr nonce
    A: Point
    u: bytes
    V: bytes


@wire("keygen.state2")
@dataclass(frozen=True, repr=False)
class State2(SecretRepr):
    eid: bytes
    party: int
    prev: State1
    V_all: dict[int, bytes]
    echo: dict[int, bytes]


@wire("keygen.state3")
@dataclass(frozen=True, repr=False)
class State3(SecretRepr):
    eid: bytes
    party: int
    params: KeygenParams
    rid: bytes
    A_all: dict[int, Point]
    public_shares: dict[int, Point]  # X_j = F(j)
    public_key: Point  # Y
    x: int  # x_i


@wire("keyshare")
@dataclass(frozen=True, repr=False)
class KeyShare(SecretRepr):
    """Party ``party``'s Shamir share of the key. Security: ``x`` MUST stay encrypted at rest."""

    eid: bytes  # keygen execution id, used as the key id
    party: int
    parties: tuple[int, ...]
    threshold: int
    public_key: Point  # Y
    public_shares: dict[int, Point]  # X_j = x_j·G
    x: int  # x_i

    _public_fields = ("eid", "party", "threshold")


# -- rounds -----------------------------------------------------------------


def _hash_commit(params: KeygenParams, i: int, rid: bytes, S: tuple[Point, ...], A: Point, u: bytes) -> bytes:
    t = Transcript("keygen/hash_com")
    t.append("sid", params.eid).append("n", len(params.parties)).append("i", i).append("t", params.threshold)
    t.append("rid", rid).append("S", list(S)).append("A", A).append("u", u)
    return t.digest()


def _ctx(eid: bytes, i: int, rid: bytes) -> bytes:
    return proof_context(eid, i, b"keygen", rid)


def _msg(state, round_: int, body, recipient: int | None = None, confidential: bool = False) -> Msg:
    return Msg(PROTOCOL, state.eid, round_, state.party, recipient, body, confidential)


def round1(params: KeygenParams, rng: Rng) -> Advance:
    """Fig. 5 round 1: sample the polynomial, rid_i, A_i; broadcast V_i."""
    params.validate()
    coeffs = vss.sample_polynomial(params.threshold, rng)
    S = vss.commitments(coeffs)
    rid = rng.randbytes(RID_BYTES)
    tau, A = sch.commit(rng)
    u = rng.randbytes(RID_BYTES)
    V = _hash_commit(params, params.party, rid, S, A, u)
    state = State1(params.eid, params.party, params, coeffs, rid, S, tau, A, u, V)
    return Advance(state, (_msg(state, 1, Commitment(V)),))


def round2(state: State1, inbound: tuple[Msg, ...], rng: Rng) -> Advance | Abort:
    """Round 2: echo the commitments; reveal the decommitment; send σ_ij privately."""
    p = state.params
    got = collect_commitments(
        protocol=PROTOCOL, eid=p.eid, me=p.party, peers=p.peers, inbound=inbound, body_type=Commitment, mine=state.V
    )
    if isinstance(got, Abort):
        return got
    V_all, echo = got
    out = [_msg(state, 2, Decommitment(state.rid, state.S, state.A, state.u, echo))]
    for j in p.peers:
        out.append(_msg(state, 2, Share(vss.evaluate(state.coeffs, j)), recipient=j, confidential=True))
    return Advance(State2(state.eid, state.party, state, V_all, echo), tuple(out))


def round3(state: State2, inbound: tuple[Msg, ...], rng: Rng) -> Advance | Abort:
    """Round 3: check echoes, decommitments and VSS shares; prove knowledge of x_i."""
    s1 = state.prev
    p = s1.params
    got = gather(
        protocol=PROTOCOL, eid=p.eid, round_=2, me=p.party, peers=p.peers, inbound=inbound,
        broadcast_type=Decommitment, direct_type=Share,
    )
    if isinstance(got, Abort):
        return got
    bad = check_echo(PROTOCOL, 2, state.party, state.echo, {j: (r.broadcast.echo, r.broadcast_id) for j, r in got.items()})
    if bad is not None:
        return bad
    blames: list[Blame] = []
    for j, r in got.items():
        d: Decommitment = r.broadcast
        if len(d.S) != p.threshold or len(d.rid) != RID_BYTES:
            blames.append(Blame(j, "decommitment has the wrong shape", r.broadcast_id))
        elif _hash_commit(p, j, d.rid, d.S, d.A, d.u) != state.V_all[j]:
            blames.append(Blame(j, "decommitment does not open the round-1 commitment", r.broadcast_id))
        elif vss.evaluate_commitments(d.S, p.party) != base_mul(r.direct.sigma):
            blames.append(Blame(j, "VSS share does not match the Feldman commitments", r.direct_id))
    if blames:
        return Abort.blame(PROTOCOL, 2, blames)

    all_S = {j: r.broadcast.S for j, r in got.items()}
    all_S[p.party] = s1.S
    A_all = {j: r.broadcast.A for j, r in got.items()}
    A_all[p.party] = s1.A
    rid = bytes(RID_BYTES)
    for d_rid in [r.broadcast.rid for r in got.values()] + [s1.rid]:
        rid = bytes(a ^ b for a, b in zip(rid, d_rid))
    # F(x) = Σ_j F_j(x): combine the commitments coefficient-wise once
    F = tuple(sum_points(all_S[j][k] for j in p.parties) for k in range(p.threshold))
    public_shares = {j: vss.evaluate_commitments(F, j) for j in p.parties}
    public_key = F[0]
    if public_key.is_identity or any(X.is_identity for X in public_shares.values()):
        return Abort((), "the combined key or a public share is the identity", 2, PROTOCOL, (), False)
    x = (vss.evaluate(s1.coeffs, p.party) + sum(r.direct.sigma for r in got.values())) % Q
    z = sch.respond(_ctx(p.eid, p.party, rid), public_shares[p.party], s1.A, s1.tau, x)
    nxt = State3(p.eid, p.party, p, rid, A_all, public_shares, public_key, x)
    return Advance(nxt, (_msg(nxt, 3, SchnorrResponse(z)),))


def output(state: State3, inbound: tuple[Msg, ...], rng: Rng | None = None) -> Done | Abort:
    """Output: verify every Schnorr proof and return the key share."""
    p = state.params
    got = gather(
        protocol=PROTOCOL, eid=p.eid, round_=3, me=p.party, peers=p.peers, inbound=inbound,
        broadcast_type=SchnorrResponse, direct_type=None,
    )
    if isinstance(got, Abort):
        return got
    blames = []
    for j, r in got.items():
        try:
            sch.verify_response(_ctx(p.eid, j, state.rid), state.public_shares[j], state.A_all[j], r.broadcast.z)
        except ProofError as exc:
            blames.append(Blame(j, str(exc), r.broadcast_id))
    if blames:
        return Abort.blame(PROTOCOL, 3, blames)
    return Done(KeyShare(p.eid, p.party, p.parties, p.threshold, state.public_key, state.public_shares, state.x))


ROUNDS = (round2, round3, output)
