"""Auxiliary info: each party's Paillier key and ring-Pedersen parameters, proven sound.

CGGMP21 Fig. 6 (the aux-info half of key refresh), as the cggmp21 spec's
"Provisioning Protocol" describes it. The Paillier modulus N_i doubles as the
ring-Pedersen modulus N̂_i.

Rounds:

1. from the safe primes p_i, q_i: N_i, t_i = r², s_i = t_i^λ and Πprm for
   (N_i, s_i, t_i); broadcast the hash commitment V_i.
2. broadcast the decommitment (N_i, s_i, t_i, ψ̂_i, ρ_i, u_i) with an echo of every V_j.
3. check echoes, decommitments, modulus sizes and Πprm; ρ = ⊕ ρ_j;
   broadcast Πmod for N_i and send each P_j a Πfac under P_j's parameters.
4. (output) verify Πmod and Πfac from every peer.

Πmod rejects non-Blum moduli and Πfac rejects moduli with a small factor (the
BitForge modulus); both are bound to ρ, which no party controls alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.crypto import ring_pedersen
from engine.crypto.group import Rng
from engine.crypto.paillier import PaillierPublicKey, PaillierSecretKey
from engine.crypto.ring_pedersen import InvalidRingPedersen, RingPedersenParams, RingPedersenSecret
from engine.crypto.security import SecurityLevel, get_level
from engine.crypto.transcript import Transcript, proof_context
from engine.crypto.zk import fac, mod, prm
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

PROTOCOL = "aux"
RHO_BYTES = 32

__all__ = ["AuxParams", "AuxInfo", "round1", "round2", "round3", "output", "PROTOCOL"]


@wire("aux.params")
@dataclass(frozen=True)
class AuxParams:
    eid: bytes
    party: int
    parties: tuple[int, ...]
    level: str

    @property
    def peers(self) -> tuple[int, ...]:
        return tuple(p for p in self.parties if p != self.party)

    @property
    def security(self) -> SecurityLevel:
        return get_level(self.level)


@wire("aux.commit")
@dataclass(frozen=True)
class Commitment:
    V: bytes


@wire("aux.decommit")
@dataclass(frozen=True)
class Decommitment:
    N: int
    s: int
    t: int
    prm_proof: prm.PrmProof  # ψ̂_i
    rho: bytes  # ρ_i
    u: bytes
    echo: dict[int, bytes]


@wire("aux.mod")
@dataclass(frozen=True)
class ModulusProof:
    mod_proof: mod.ModProof  # ψ_i


@wire("aux.fac")
@dataclass(frozen=True)
class FactorProof:
    fac_proof: fac.FacProof  # φ_i^j


@wire("aux.state1")
@dataclass(frozen=True, repr=False)
class State1(SecretRepr):
    eid: bytes
    party: int
    params: AuxParams
    sk: PaillierSecretKey
    rped: RingPedersenParams
    rped_secret: RingPedersenSecret
    prm_proof: prm.PrmProof
    rho: bytes
    u: bytes
    V: bytes


@wire("aux.state2")
@dataclass(frozen=True, repr=False)
class State2(SecretRepr):
    eid: bytes
    party: int
    prev: State1
    V_all: dict[int, bytes]
    echo: dict[int, bytes]


@wire("aux.state3")
@dataclass(frozen=True, repr=False)
class State3(SecretRepr):
    eid: bytes
    party: int
    params: AuxParams
    sk: PaillierSecretKey
    rho: bytes
    rped_all: dict[int, RingPedersenParams]


@wire("auxinfo")
@dataclass(frozen=True, repr=False)
class AuxInfo(SecretRepr):
    """This party's Paillier secret key and every party's (N_j, s_j, t_j).

    Security: ``sk`` holds the Paillier factors and MUST stay encrypted at rest.
    """

    eid: bytes
    party: int
    parties: tuple[int, ...]
    level: str
    sk: PaillierSecretKey
    rped: dict[int, RingPedersenParams]  # R_j; the Paillier key of P_j is N_j = R_j.n

    _public_fields = ("eid", "party", "level")

    def paillier(self, j: int) -> PaillierPublicKey:
        return PaillierPublicKey(self.rped[j].n)


def _hash_commit(p: AuxParams, i: int, d: RingPedersenParams, proof: prm.PrmProof, rho: bytes, u: bytes) -> bytes:
    t = Transcript("aux/hash_com")
    t.append("sid", p.eid).append("n", len(p.parties)).append("i", i)
    t.append("N", d.n).append("s", d.s).append("t", d.t)
    t.append("prm.A", list(proof.A)).append("prm.z", list(proof.z))
    t.append("rho", rho).append("u", u)
    return t.digest()


def _msg(state, round_: int, body, recipient: int | None = None) -> Msg:
    return Msg(PROTOCOL, state.eid, round_, state.party, recipient, body)


def round1(params: AuxParams, sk: PaillierSecretKey, rng: Rng) -> Advance:
    """Fig. 6 round 1. ``sk`` comes from two fresh 4κ-bit safe primes."""
    level = params.security
    if sk.n.bit_length() < level.min_modulus_bits:
        raise ValueError(f"Paillier modulus below the {level.name} level")
    rped, rsecret = ring_pedersen.generate(sk, rng)
    proof = prm.prove(proof_context(params.eid, params.party, b"aux"), level, rped, rsecret, rng, sk=sk)
    rho = rng.randbytes(RHO_BYTES)
    u = rng.randbytes(RHO_BYTES)
    V = _hash_commit(params, params.party, rped, proof, rho, u)
    state = State1(params.eid, params.party, params, sk, rped, rsecret, proof, rho, u, V)
    return Advance(state, (_msg(state, 1, Commitment(V)),))


def round2(state: State1, inbound: tuple[Msg, ...], rng: Rng) -> Advance | Abort:
    """Round 2: echo the commitments and open ours."""
    p = state.params
    got = collect_commitments(
        protocol=PROTOCOL, eid=p.eid, me=p.party, peers=p.peers, inbound=inbound, body_type=Commitment, mine=state.V
    )
    if isinstance(got, Abort):
        return got
    V_all, echo = got
    body = Decommitment(state.rped.n, state.rped.s, state.rped.t, state.prm_proof, state.rho, state.u, echo)
    return Advance(State2(state.eid, state.party, state, V_all, echo), (_msg(state, 2, body),))


def round3(state: State2, inbound: tuple[Msg, ...], rng: Rng) -> Advance | Abort:
    """Round 3: check every peer's parameters and Πprm; prove Πmod and Πfac."""
    s1 = state.prev
    p = s1.params
    level = p.security
    got = gather(
        protocol=PROTOCOL, eid=p.eid, round_=2, me=p.party, peers=p.peers, inbound=inbound,
        broadcast_type=Decommitment, direct_type=None,
    )
    if isinstance(got, Abort):
        return got
    bad = check_echo(PROTOCOL, 2, state.party, state.echo, {j: (r.broadcast.echo, r.broadcast_id) for j, r in got.items()})
    if bad is not None:
        return bad
    blames: list[Blame] = []
    rped_all = {p.party: s1.rped}
    for j, r in got.items():
        d: Decommitment = r.broadcast
        params_j = RingPedersenParams(d.N, d.s, d.t)
        if len(d.rho) != RHO_BYTES:
            blames.append(Blame(j, "ρ has the wrong length", r.broadcast_id))
            continue
        if _hash_commit(p, j, params_j, d.prm_proof, d.rho, d.u) != state.V_all[j]:
            blames.append(Blame(j, "decommitment does not open the round-1 commitment", r.broadcast_id))
            continue
        try:
            params_j.validate(level.min_modulus_bits, level.max_modulus_bits)
        except InvalidRingPedersen as exc:
            blames.append(Blame(j, f"Paillier/ring-Pedersen parameters rejected: {exc}", r.broadcast_id))
            continue
        try:
            prm.verify(proof_context(p.eid, j, b"aux"), level, params_j, d.prm_proof)
        except ProofError as exc:
            blames.append(Blame(j, str(exc), r.broadcast_id))
            continue
        rped_all[j] = params_j
    if blames:
        return Abort.blame(PROTOCOL, 2, blames)
    rho = s1.rho
    for r in got.values():
        rho = bytes(a ^ b for a, b in zip(rho, r.broadcast.rho))
    ctx = proof_context(p.eid, p.party, b"aux", rho)
    out = [_msg(state, 3, ModulusProof(mod.prove(ctx, level, s1.sk, rng)))]
    for j in p.peers:
        out.append(_msg(state, 3, FactorProof(fac.prove(ctx, level, rped_all[j], s1.sk, rng)), recipient=j))
    return Advance(State3(p.eid, p.party, p, s1.sk, rho, rped_all), tuple(out))


def output(state: State3, inbound: tuple[Msg, ...], rng: Rng | None = None) -> Done | Abort:
    """Output: verify Πmod and Πfac from every peer."""
    p = state.params
    level = p.security
    got = gather(
        protocol=PROTOCOL, eid=p.eid, round_=3, me=p.party, peers=p.peers, inbound=inbound,
        broadcast_type=ModulusProof, direct_type=FactorProof,
    )
    if isinstance(got, Abort):
        return got
    blames = []
    mine = state.rped_all[p.party]
    for j, r in got.items():
        ctx = proof_context(p.eid, j, b"aux", state.rho)
        n_j = state.rped_all[j].n
        try:
            mod.verify(ctx, level, n_j, r.broadcast.mod_proof)
        except ProofError as exc:
            blames.append(Blame(j, str(exc), r.broadcast_id))
            continue
        try:
            fac.verify(ctx, level, mine, n_j, r.direct.fac_proof, aux_sk=state.sk)
        except ProofError as exc:
            blames.append(Blame(j, str(exc), r.direct_id))
    if blames:
        return Abort.blame(PROTOCOL, 3, blames)
    return Done(AuxInfo(p.eid, p.party, p.parties, p.level, state.sk, dict(state.rped_all)))


ROUNDS = (round2, round3, output)
