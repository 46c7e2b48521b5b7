"""Adversaries for the simulator: one party deviates in one specific way.

Each cheat is the smallest deviation that a particular check exists to catch,
including the known attacks on older threshold-ECDSA protocols:

* ``small-factor-modulus`` is the BitForge modulus (a Paillier N with a small
  prime factor); Πfac must catch it.
* ``non-blum-modulus`` is an N that is not a Paillier-Blum modulus; Πmod must
  catch it.
* ``bad-ring-pedersen`` publishes an s whose discrete log to base t it does
  not know (the precondition of the TSSHOCK "c-guess" family); Πprm with
  m = 128 binary challenges must catch it.
* ``bad-enc-proof`` / ``bad-affg-proof`` / ``bad-logstar-proof`` corrupt the
  range proofs whose absence enabled Alpha-Rays style key extraction.
* ``replay-other-session`` sends a message recorded in another execution.

A cheat never changes honest code: it rewrites its own party's state or
outgoing messages between rounds (``tamper``), or supplies its own Paillier key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from engine.crypto.group import Q
from engine.crypto.paillier import PaillierSecretKey
from engine.crypto.primes import generate_blum_prime
from engine.crypto.security import SecurityLevel
from engine.protocols import aux_info, keygen, presign
from engine.protocols.base import Msg

__all__ = ["Cheat", "CHEATS", "parse_cheat", "describe"]

CHEATS: dict[str, tuple[str, str]] = {
    # kind: (phase it hits, what it does)
    "bad-schnorr-proof": ("keygen", "sends a Schnorr response that does not prove knowledge of its share"),
    "bad-vss-share": ("keygen", "sends one peer a share that does not match its Feldman commitments"),
    "equivocate-broadcast": ("keygen", "broadcasts a different commitment to one peer"),
    "replay-other-session": ("keygen", "sends a round-1 message recorded in another execution"),
    "small-factor-modulus": ("aux_info", "uses a Paillier modulus with a small prime factor (BitForge)"),
    "non-blum-modulus": ("aux_info", "uses a Paillier modulus with a factor p ≡ 1 mod 4"),
    "bad-ring-pedersen": ("aux_info", "publishes a ring-Pedersen s whose discrete log to base t it cannot prove"),
    "bad-enc-proof": ("presign", "sends one peer a corrupted Πenc proof"),
    "bad-affg-proof": ("presign", "sends one peer a corrupted Πaff-g proof"),
    "bad-logstar-proof": ("presign", "sends one peer a corrupted Πlog* proof for Δ_i"),
    "bad-sigma-share": ("sign", "broadcasts a wrong partial signature σ_i"),
}

SMALL_FACTOR_BITS = 128


def describe() -> list[dict[str, str]]:
    return [{"kind": k, "phase": ph, "effect": eff} for k, (ph, eff) in CHEATS.items()]


def parse_cheat(spec: str) -> Cheat:
    """Parse ``PARTY:KIND``."""
    party, sep, kind = spec.partition(":")
    if not sep or not party.strip().isdigit():
        raise ValueError("--cheat takes PARTY:KIND, for example 2:bad-enc-proof")
    if kind not in CHEATS:
        raise ValueError(f"unknown cheat {kind!r}; see --list-cheats")
    return Cheat(int(party), kind)


def _first_to(deliveries, victim_filter) -> int | None:
    for idx, (to, msg) in enumerate(deliveries):
        if victim_filter(msg):
            return idx
    return None


@dataclass(frozen=True)
class Cheat:
    party: int
    kind: str

    @property
    def phase(self) -> str:
        return CHEATS[self.kind][0]

    # aux-info cheats choose their own modulus ---------------------------------
    def paillier_key(self, level: SecurityLevel) -> PaillierSecretKey | None:
        bits = level.prime_bits
        if self.kind == "small-factor-modulus":
            small = generate_blum_prime(SMALL_FACTOR_BITS)
            big = generate_blum_prime(2 * bits - SMALL_FACTOR_BITS)
            return PaillierSecretKey(small, big)
        if self.kind == "non-blum-modulus":
            return PaillierSecretKey(generate_blum_prime(bits, residue=1), generate_blum_prime(bits))
        return None

    # message and state rewriting ------------------------------------------------
    def tamper(self, protocol: str, round_no: int, party: int, state, deliveries):
        if party != self.party:
            return state, deliveries
        handler = _HANDLERS.get((self.kind, protocol, round_no))
        if handler is None:
            return state, deliveries
        return handler(state, list(deliveries))


def _replace_body(deliveries, index, **changes):
    to, msg = deliveries[index]
    deliveries[index] = (to, dataclasses.replace(msg, body=dataclasses.replace(msg.body, **changes)))
    return deliveries


def _bump_proof(deliveries, body_type, proof_field, component):
    idx = _first_to(deliveries, lambda m: isinstance(m.body, body_type))
    to, msg = deliveries[idx]
    proof = getattr(msg.body, proof_field)
    proof = dataclasses.replace(proof, **{component: getattr(proof, component) + 1})
    return _replace_body(deliveries, idx, **{proof_field: proof})


def _bad_schnorr(state, deliveries):
    for idx, (to, msg) in enumerate(deliveries):
        deliveries = _replace_body(deliveries, idx, z=msg.body.z + 1)
    return state, deliveries


def _bad_vss(state, deliveries):
    idx = _first_to(deliveries, lambda m: isinstance(m.body, keygen.Share))
    return state, _replace_body(deliveries, idx, sigma=deliveries[idx][1].body.sigma + 1)


def _equivocate(state, deliveries):
    to, msg = deliveries[0]
    forged = bytes([msg.body.V[0] ^ 1]) + msg.body.V[1:]
    return state, _replace_body(deliveries, 0, V=forged)


def _replay(state, deliveries):
    # The same party's round-1 message from an earlier execution of the ceremony.
    other = b"replayed:" + state.eid
    replayed = []
    for to, msg in deliveries:
        body = keygen.Commitment(bytes(reversed(msg.body.V)))
        replayed.append((to, Msg(msg.protocol, other, msg.round, msg.sender, msg.recipient, body)))
    return state, replayed


def _bad_ring_pedersen(state: aux_info.State1, deliveries):
    rp = state.rped
    forged = dataclasses.replace(rp, s=rp.s * rp.t % rp.n)  # s' = s·t: λ no longer opens it
    V = aux_info._hash_commit(state.params, state.party, forged, state.prm_proof, state.rho, state.u)
    state = dataclasses.replace(state, rped=forged, V=V)
    for idx in range(len(deliveries)):
        deliveries = _replace_body(deliveries, idx, V=V)
    return state, deliveries


def _bad_sigma(state, deliveries):
    for idx, (to, msg) in enumerate(deliveries):
        deliveries = _replace_body(deliveries, idx, sigma=(msg.body.sigma + 1) % Q)
    return state, deliveries


_HANDLERS = {
    ("bad-schnorr-proof", "keygen", 3): _bad_schnorr,
    ("bad-vss-share", "keygen", 2): _bad_vss,
    ("equivocate-broadcast", "keygen", 1): _equivocate,
    ("replay-other-session", "keygen", 1): _replay,
    ("bad-ring-pedersen", "aux", 1): _bad_ring_pedersen,
    ("bad-enc-proof", "presign", 1): lambda s, d: (s, _bump_proof(d, presign.R1Direct, "psi0", "z1")),
    ("bad-affg-proof", "presign", 2): lambda s, d: (s, _bump_proof(d, presign.R2Direct, "psi", "z2")),
    ("bad-logstar-proof", "presign", 3): lambda s, d: (s, _bump_proof(d, presign.R3Direct, "psi_pp", "z1")),
    ("bad-sigma-share", "sign", 1): _bad_sigma,
}
