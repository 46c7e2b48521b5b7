"""Three-round presigning for a quorum of exactly t signers.

CGGMP21 Fig. 7, in the threshold form of the cggmp21 spec ("Threshold
Presigning"): each signer first turns its Shamir share into an additive one,
x_i' = λ_i·x_i and X_j' = λ_j·X_j, then runs the n-of-n protocol among the quorum.

Rounds:

1. k_i, γ_i ← F_q; K_i = enc(k_i; ρ_i), G_i = enc(γ_i; ν_i); broadcast (K_i, G_i),
   send each P_j Πenc for K_i under P_j's ring-Pedersen parameters.
2. verify Πenc; Γ_i = γ_i·G; for each P_j run both MtA halves:
   D_ji = γ_i ⊙ K_j ⊕ enc_j(-β_ij), F_ji = enc_i(-β_ij) with Πaff-g, the same
   with x_i' (D̂, F̂, Πaff-g against X_i'), and Πlog* tying Γ_i to G_i.
3. verify Πaff-g ×2 and Πlog*; Γ = Σ Γ_j, Δ_i = k_i·Γ; decrypt α, α̂;
   δ_i = γ_i k_i + Σ(α_ij + β_ij), χ_i = x_i' k_i + Σ(α̂_ij + β̂_ij);
   broadcast (δ_i, Δ_i, χ_i·Γ) and send each P_j Πlog* for Δ_i against K_i.
4. (output) verify Πlog*; δ = Σ δ_j, check δ·G = Σ Δ_j; R = δ⁻¹·Γ,
   R̄_j = δ⁻¹·Δ_j = k_j·R and S_j = δ⁻¹·(χ_jΓ) = χ_j·R; check Σ S_j = Y.

R̄_j and S_j let the signing round check each partial signature on its own
(σ_j·R = m·R̄_j + r·S_j), so a bad σ_j is always attributed to its sender.

The reliable-broadcast echo of (K_j, G_j) rides on the round-2 broadcast and
is checked in round 3, before any value that depends on it is released.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.crypto import vss
from engine.crypto.group import G, Q, Point, Rng, base_mul, random_scalar, sum_points
from engine.crypto.paillier import InvalidCiphertext, sample_unit
from engine.crypto.security import SecurityLevel, get_level
from engine.crypto.transcript import proof_context
from engine.crypto.zk import aff_g, enc, log_star
from engine.crypto.zk.common import ProofError, sample_pm
from engine.protocols.aux_info import AuxInfo
from engine.protocols.base import Abort, Advance, Blame, Done, Msg, SecretRepr, check_echo, echo_digest, gather
from engine.protocols.keygen import KeyShare
from schemas.codec import packb, wire

PROTOCOL = "presign"

__all__ = ["PresignParams", "Presignature", "round1", "round2", "round3", "output", "PROTOCOL"]


@wire("presign.params")
@dataclass(frozen=True)
class PresignParams:
    eid: bytes
    party: int
    signers: tuple[int, ...]  # exactly t keygen party ids, sorted
    level: str

    @property
    def peers(self) -> tuple[int, ...]:
        return tuple(p for p in self.signers if p != self.party)

    @property
    def security(self) -> SecurityLevel:
        return get_level(self.level)


@wire("presign.r1.bcast")
@dataclass(frozen=True)
class R1Broadcast:
    K: int  # K_i = enc_i(k_i; ρ_i)
    G: int  # G_i = enc_i(γ_i; ν_i)


@wire("presign.r1.direct")
@dataclass(frozen=True)
class R1Direct:
    psi0: enc.EncProof  # ψ⁰_ji


@wire("presign.r2.bcast")
@dataclass(frozen=True)
class R2Broadcast:
    Gamma: Point  # Γ_i
    echo: dict[int, bytes]  # digests of every (K_j, G_j)


@wire("presign.r2.direct")
@dataclass(frozen=True)
class R2Direct:
    D: int  # D_ji
    F: int  # F_ji
    D_hat: int  # D̂_ji
    F_hat: int  # F̂_ji
    psi: aff_g.AffGProof  # ψ_ji
    psi_hat: aff_g.AffGProof  # ψ̂_ji
    psi_prime: log_star.LogStarProof  # ψ'_ji


@wire("presign.r3.bcast")
@dataclass(frozen=True)
class R3Broadcast:
    delta: int  # δ_i
    Delta: Point  # Δ_i = k_i·Γ
    chi_Gamma: Point  # χ_i·Γ


@wire("presign.r3.direct")
@dataclass(frozen=True)
class R3Direct:
    psi_pp: log_star.LogStarProof  # ψ''_ji


@wire("presign.state1")
@dataclass(frozen=True, repr=False)
class State1(SecretRepr):
    eid: bytes
    party: int
    params: PresignParams
    key: KeyShare
    aux: AuxInfo
    k: int  # k_i
    gamma: int  # γ_i
    rho: int  # ρ_i
    nu: int  # ν_i
    K: int
    G: int


@wire("presign.state2")
@dataclass(frozen=True, repr=False)
class State2(SecretRepr):
    eid: bytes
    party: int
    prev: State1
    K_all: dict[int, int]
    G_all: dict[int, int]
    Gamma: Point  # Γ_i
    beta: dict[int, int]  # β_ij
    beta_hat: dict[int, int]  # β̂_ij
    echo: dict[int, bytes]


@wire("presign.state3")
@dataclass(frozen=True, repr=False)
class State3(SecretRepr):
    eid: bytes
    party: int
    params: PresignParams
    aux: AuxInfo
    key_id: bytes
    public_key: Point
    K_all: dict[int, int]
    Gamma: Point  # Γ = Σ Γ_j
    k: int
    chi: int  # χ_i
    delta: int  # δ_i
    Delta: Point  # Δ_i
    chi_Gamma: Point


@wire("presignature")
@dataclass(frozen=True, repr=False)
class Presignature(SecretRepr):
    """One-use presignature. Security: it MUST be consumed at most once and ``k``, ``chi`` kept secret."""

    eid: bytes
    party: int
    key_id: bytes
    signers: tuple[int, ...]
    public_key: Point  # Y
    R: Point
    k: int  # k_i
    chi: int  # χ_i
    R_bar: dict[int, Point]  # R̄_j = k_j·R
    S: dict[int, Point]  # S_j = χ_j·R

    _public_fields = ("eid", "party", "signers")


def additive_shares(key: KeyShare, signers: tuple[int, ...]) -> dict[int, Point]:
    """X_j' = λ_j·X_j for every signer: the public side of the additive sharing."""
    return {j: key.public_shares[j] * vss.lagrange(signers, j) for j in signers}


def _ctx(eid: bytes, i: int) -> bytes:
    return proof_context(eid, i, b"presign")


def _msg(state, round_: int, body, recipient: int | None = None) -> Msg:
    return Msg(PROTOCOL, state.eid, round_, state.party, recipient, body)


def round1(params: PresignParams, key: KeyShare, aux: AuxInfo, rng: Rng) -> Advance:
    """Fig. 7 round 1: encrypt k_i and γ_i; prove K_i in range to every peer."""
    if len(params.signers) != key.threshold or len(set(params.signers)) != len(params.signers):
        raise ValueError(f"presigning needs exactly {key.threshold} distinct signers")
    if not set(params.signers) <= set(key.parties) or params.party not in params.signers:
        raise ValueError("signers must be key holders, including this party")
    if aux.party != key.party or set(aux.parties) != set(key.parties):
        raise ValueError("aux info does not belong to this key's parties")
    level = params.security
    sk = aux.sk
    k, gamma = random_scalar(rng), random_scalar(rng)
    rho, nu = sample_unit(sk.n, rng), sample_unit(sk.n, rng)
    K = sk.encrypt_with(k, rho)
    Gc = sk.encrypt_with(gamma, nu)
    state = State1(params.eid, params.party, params, key, aux, k, gamma, int(rho), int(nu), int(K), int(Gc))
    out = [_msg(state, 1, R1Broadcast(int(K), int(Gc)))]
    ctx = _ctx(params.eid, params.party)
    for j in params.peers:
        psi0 = enc.prove(ctx, level, aux.rped[j], sk.public, K, k, rho, rng, sk=sk)
        out.append(_msg(state, 1, R1Direct(psi0), recipient=j))
    return Advance(state, tuple(out))


def round2(state: State1, inbound: tuple[Msg, ...], rng: Rng) -> Advance | Abort:
    """Round 2: verify Πenc; run both MtA halves towards every peer with Πaff-g and Πlog*."""
    p = state.params
    level = p.security
    aux = state.aux
    sk = aux.sk
    got = gather(
        protocol=PROTOCOL, eid=p.eid, round_=1, me=p.party, peers=p.peers, inbound=inbound,
        broadcast_type=R1Broadcast, direct_type=R1Direct,
    )
    if isinstance(got, Abort):
        return got
    blames = []
    for j, r in got.items():
        pk_j = aux.paillier(j)
        try:
            pk_j.validate_ciphertext(r.broadcast.K)
            pk_j.validate_ciphertext(r.broadcast.G)
        except InvalidCiphertext as exc:
            blames.append(Blame(j, f"K_j/G_j rejected: {exc}", r.broadcast_id))
            continue
        try:
            enc.verify(_ctx(p.eid, j), level, aux.rped[p.party], pk_j, r.broadcast.K, r.direct.psi0, aux_sk=sk)
        except ProofError as exc:
            blames.append(Blame(j, str(exc), r.direct_id))
    if blames:
        return Abort.blame(PROTOCOL, 1, blames)

    K_all = {j: r.broadcast.K for j, r in got.items()} | {p.party: state.K}
    G_all = {j: r.broadcast.G for j, r in got.items()} | {p.party: state.G}
    echo = echo_digest([(j, packb((K_all[j], G_all[j]))) for j in sorted(K_all)])
    Gamma = base_mul(state.gamma)
    x_add = state.key.x * vss.lagrange(p.signers, p.party) % Q  # x_i' = λ_i·x_i
    X_add = base_mul(x_add)  # X_i' = λ_i·X_i
    ctx = _ctx(p.eid, p.party)
    pk_i = sk.public
    beta, beta_hat = {}, {}
    out = [_msg(state, 2, R2Broadcast(Gamma, echo))]
    for j in p.peers:
        pk_j = aux.paillier(j)
        aux_j = aux.rped[j]
        b, bh = sample_pm(level.ell_prime, rng), sample_pm(level.ell_prime, rng)  # β_ij, β̂_ij
        s, sh = sample_unit(pk_j.n, rng), sample_unit(pk_j.n, rng)
        r, rh = sample_unit(pk_i.n, rng), sample_unit(pk_i.n, rng)
        D = pk_j.add(pk_j.mul(state.gamma, K_all[j]), pk_j.encrypt_with(-b, s))
        F = sk.encrypt_with(-b, r)
        Dh = pk_j.add(pk_j.mul(x_add, K_all[j]), pk_j.encrypt_with(-bh, sh))
        Fh = sk.encrypt_with(-bh, rh)
        psi = aff_g.prove(ctx, level, aux_j, pk_j, pk_i, K_all[j], D, F, Gamma, state.gamma, -b, s, r, rng, sk1=sk)
        psi_hat = aff_g.prove(ctx, level, aux_j, pk_j, pk_i, K_all[j], Dh, Fh, X_add, x_add, -bh, sh, rh, rng, sk1=sk)
        psi_prime = log_star.prove(ctx, level, aux_j, pk_i, state.G, Gamma, G, state.gamma, state.nu, rng, sk=sk)
        beta[j], beta_hat[j] = int(b), int(bh)
        body = R2Direct(int(D), int(F), int(Dh), int(Fh), psi, psi_hat, psi_prime)
        out.append(_msg(state, 2, body, recipient=j))
    nxt = State2(state.eid, state.party, state, K_all, G_all, Gamma, beta, beta_hat, echo)
    return Advance(nxt, tuple(out))


def round3(state: State2, inbound: tuple[Msg, ...], rng: Rng) -> Advance | Abort:
    """Round 3: verify the MtA proofs, compute δ_i and χ_i, prove Δ_i."""
    s1 = state.prev
    p = s1.params
    level = p.security
    aux = s1.aux
    sk = aux.sk
    pk_i = sk.public
    got = gather(
        protocol=PROTOCOL, eid=p.eid, round_=2, me=p.party, peers=p.peers, inbound=inbound,
        broadcast_type=R2Broadcast, direct_type=R2Direct,
    )
    if isinstance(got, Abort):
        return got
    bad = check_echo(PROTOCOL, 2, state.party, state.echo, {j: (r.broadcast.echo, r.broadcast_id) for j, r in got.items()})
    if bad is not None:
        return bad
    X_add = additive_shares(s1.key, p.signers)
    mine = aux.rped[p.party]
    blames = []
    for j, r in got.items():
        d: R2Direct = r.direct
        pk_j = aux.paillier(j)
        ctx = _ctx(p.eid, j)
        try:
            pk_i.validate_ciphertext(d.D)
            pk_i.validate_ciphertext(d.D_hat)
            pk_j.validate_ciphertext(d.F)
            pk_j.validate_ciphertext(d.F_hat)
        except InvalidCiphertext as exc:
            blames.append(Blame(j, f"MtA ciphertext rejected: {exc}", r.direct_id))
            continue
        try:
            aff_g.verify(ctx, level, mine, pk_i, pk_j, s1.K, d.D, d.F, r.broadcast.Gamma, d.psi, sk0=sk)
            aff_g.verify(ctx, level, mine, pk_i, pk_j, s1.K, d.D_hat, d.F_hat, X_add[j], d.psi_hat, sk0=sk)
            log_star.verify(ctx, level, mine, pk_j, state.G_all[j], r.broadcast.Gamma, G, d.psi_prime, aux_sk=sk)
        except ProofError as exc:
            blames.append(Blame(j, str(exc), r.direct_id))
    if blames:
        return Abort.blame(PROTOCOL, 2, blames)

    Gamma = sum_points([state.Gamma] + [r.broadcast.Gamma for r in got.values()])  # Γ = Σ Γ_j
    if Gamma.is_identity:
        return Abort((), "Γ is the identity", 2, PROTOCOL, (), False)
    Delta = Gamma * s1.k  # Δ_i = k_i·Γ
    x_add = s1.key.x * vss.lagrange(p.signers, p.party) % Q
    delta = s1.gamma * s1.k
    chi = x_add * s1.k
    for j, r in got.items():
        delta += int(sk.decrypt(r.direct.D)) + state.beta[j]  # α_ij + β_ij
        chi += int(sk.decrypt(r.direct.D_hat)) + state.beta_hat[j]  # α̂_ij + β̂_ij
    delta %= Q
    chi %= Q
    chi_Gamma = Gamma * chi
    ctx = _ctx(p.eid, p.party)
    out = [_msg(state, 3, R3Broadcast(delta, Delta, chi_Gamma))]
    for j in p.peers:
        proof = log_star.prove(ctx, level, aux.rped[j], pk_i, s1.K, Delta, Gamma, s1.k, s1.rho, rng, sk=sk)
        out.append(_msg(state, 3, R3Direct(proof), recipient=j))
    nxt = State3(
        state.eid, state.party, p, aux, s1.key.eid, s1.key.public_key, state.K_all, Gamma, s1.k, chi, delta, Delta, chi_Gamma
    )
    return Advance(nxt, tuple(out))


def output(state: State3, inbound: tuple[Msg, ...], rng: Rng | None = None) -> Done | Abort:
    """Output: verify Πlog* for Δ_j, check δ·G = ΣΔ_j and Σ S_j = Y, emit the presignature."""
    p = state.params
    level = p.security
    aux = state.aux
    got = gather(
        protocol=PROTOCOL, eid=p.eid, round_=3, me=p.party, peers=p.peers, inbound=inbound,
        broadcast_type=R3Broadcast, direct_type=R3Direct,
    )
    if isinstance(got, Abort):
        return got
    mine = aux.rped[p.party]
    blames = []
    for j, r in got.items():
        b: R3Broadcast = r.broadcast
        if not 0 <= b.delta < Q:
            blames.append(Blame(j, "δ_j is not a scalar", r.broadcast_id))
            continue
        try:
            log_star.verify(
                _ctx(p.eid, j), level, mine, aux.paillier(j), state.K_all[j], b.Delta, state.Gamma,
                r.direct.psi_pp, aux_sk=aux.sk,
            )
        except ProofError as exc:
            blames.append(Blame(j, str(exc), r.direct_id))
    if blames:
        return Abort.blame(PROTOCOL, 3, blames)

    delta = (state.delta + sum(r.broadcast.delta for r in got.values())) % Q
    Deltas = {j: r.broadcast.Delta for j, r in got.items()} | {p.party: state.Delta}
    if delta == 0 or base_mul(delta) != sum_points(Deltas.values()):
        # Πlog* proved every Δ_j; so some δ_j is inconsistent with its MtA
        # values. Naming the liar needs the paper's Πdec/Πmul identification
        # round, which is not implemented: abort without blame.
        return Abort((), "δ·G ≠ ΣΔ_j: some party sent an inconsistent δ_j", 3, PROTOCOL, (), False)
    delta_inv = pow(delta, -1, Q)
    R = state.Gamma * delta_inv
    R_bar = {j: D * delta_inv for j, D in Deltas.items()}
    chi_Gammas = {j: r.broadcast.chi_Gamma for j, r in got.items()} | {p.party: state.chi_Gamma}
    S = {j: cg * delta_inv for j, cg in chi_Gammas.items()}
    if sum_points(S.values()) != state.public_key:
        return Abort((), "Σ S_j ≠ Y: some party sent an inconsistent χ_j·Γ", 3, PROTOCOL, (), False)
    return Done(
        Presignature(p.eid, p.party, state.key_id, p.signers, state.public_key, R, state.k, state.chi, R_bar, S)
    )


ROUNDS = (round2, round3, output)
