"""One-round signing from a presignature.

CGGMP21 Fig. 8. Each signer broadcasts σ_i = k_i·m + r·χ_i with r = R.x mod q.

Every partial is checked on its own before combining:
σ_j·R = m·R̄_j + r·S_j. Presigning guarantees Σ R̄_j = G and Σ S_j = Y, so if
every partial passes, σ = Σ σ_j is a valid signature; a failing partial names
its sender. The combined signature is verified against Y before release,
low-S normalised, and given the matching recovery id.

HD-derived keys: a child key Y' = Y + t·G (BIP-32 public derivation) is signed
with the same presignature by shifting each χ_i by k_i·t, since Σ k_i·t = k·t.
The per-partial check then uses S_j' = S_j + t·R̄_j, the combined check Y'.

Security: a presignature MUST be used for at most one message. The caller
records it as consumed before the σ_i message leaves the party.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.crypto import ecdsa
from engine.crypto.group import Q, Point, Rng, base_mul
from engine.protocols.base import Abort, Advance, Blame, Done, InternalError, Msg, SecretRepr, gather
from engine.protocols.presign import Presignature
from schemas.codec import wire

PROTOCOL = "sign"

__all__ = ["SignParams", "SignatureResult", "round1", "output", "PROTOCOL", "digest_scalar"]


@wire("sign.params")
@dataclass(frozen=True)
class SignParams:
    eid: bytes
    party: int
    digest: bytes  # 32-byte message hash m
    tweak: int = 0  # additive key tweak t of an HD-derived child key, 0 for the group key itself

    def validate(self) -> None:
        if len(self.digest) != 32:
            raise ValueError("digest must be 32 bytes")
        if not 0 <= self.tweak < Q:
            raise ValueError("tweak out of range")


@wire("sign.partial")
@dataclass(frozen=True)
class PartialSignature:
    sigma: int  # σ_i


@wire("sign.state1")
@dataclass(frozen=True, repr=False)
class State1(SecretRepr):
    eid: bytes
    party: int
    params: SignParams
    presig: Presignature
    sigma: int


@wire("sign.result")
@dataclass(frozen=True)
class SignatureResult:
    public_key: Point
    digest: bytes
    r: int
    s: int
    v: int
    signers: tuple[int, ...]

    def der(self) -> bytes:
        return ecdsa.der_encode(self.r, self.s)


def digest_scalar(digest: bytes) -> int:
    """The message representative m: the 32-byte digest as an integer mod q."""
    return int.from_bytes(digest, "big") % Q


def _peers(presig: Presignature) -> tuple[int, ...]:
    return tuple(j for j in presig.signers if j != presig.party)


def round1(params: SignParams, presig: Presignature, rng: Rng | None = None) -> Advance:
    """Compute and broadcast σ_i = k_i·m + r·χ_i."""
    params.validate()
    if presig.party != params.party:
        raise ValueError("presignature belongs to another party")
    r = presig.R.x() % Q
    if r == 0:
        raise InternalError("presignature has r = 0")
    m = digest_scalar(params.digest)
    sigma = (presig.k * m + r * (presig.chi + presig.k * params.tweak)) % Q
    state = State1(params.eid, params.party, params, presig, sigma)
    msg = Msg(PROTOCOL, params.eid, 1, params.party, None, PartialSignature(sigma))
    return Advance(state, (msg,))


def output(state: State1, inbound: tuple[Msg, ...], rng: Rng | None = None) -> Done | Abort:
    """Check every σ_j, combine, verify against Y, normalise."""
    presig = state.presig
    p = state.params
    got = gather(
        protocol=PROTOCOL, eid=p.eid, round_=1, me=p.party, peers=_peers(presig), inbound=inbound,
        broadcast_type=PartialSignature, direct_type=None,
    )
    if isinstance(got, Abort):
        return got
    R = presig.R
    r = R.x() % Q
    m = digest_scalar(p.digest)
    t = p.tweak
    public_key = presig.public_key + base_mul(t) if t else presig.public_key
    blames = []
    for j, rec in got.items():
        sigma_j = rec.broadcast.sigma
        S_j = presig.S[j] + presig.R_bar[j] * t if t else presig.S[j]
        if not 0 <= sigma_j < Q or R * sigma_j != presig.R_bar[j] * m + S_j * r:
            blames.append(Blame(j, "partial signature σ_j fails σ_j·R = m·R̄_j + r·S_j", rec.broadcast_id))
    if blames:
        return Abort.blame(PROTOCOL, 1, blames)
    s = (state.sigma + sum(rec.broadcast.sigma for rec in got.values())) % Q
    if s == 0:
        raise InternalError("combined signature has s = 0")
    sig = ecdsa.normalize(r, s, ecdsa.recovery_id(R, False))
    if not ecdsa.verify_digest(public_key, p.digest, sig.r, sig.s, require_low_s=True):
        raise InternalError("combined signature does not verify although every partial did")
    return Done(SignatureResult(public_key, p.digest, sig.r, sig.s, sig.v, presig.signers))


ROUNDS = (output,)
