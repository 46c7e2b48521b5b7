"""Signed, optionally sealed envelopes for protocol messages on NATS.

Threat model: NATS is an untrusted relay. Anyone with bus access can publish,
replay, drop or reorder. Every envelope is therefore signed (BIP-340) by the
sender's identity key over all header fields and the body, so a message can be
attributed to exactly one roster member and blame is provable to a third party.
Private round messages are sealed to the recipient's X25519 key with a fresh
ephemeral key; the header is bound into the key derivation and the AEAD, so a
ciphertext cannot be moved to another execution, round, sender or recipient.
The NATS subject is derived from the signed header and checked on receipt, so a
validly signed envelope from another execution cannot be replayed onto this one.

The envelope is a plain msgpack map (not the ``@wire`` registry) so any client
can read it; decoding is strict and every failure is an :class:`EnvelopeError`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import coincurve
import msgpack
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas.subjects import EXECUTION_ID, message_id, mpc_subject

__all__ = [
    "ENVELOPE_VERSION", "MAX_ENVELOPE_BYTES", "COORDINATOR", "EnvelopeError", "PeerKeys", "Roster",
    "Identity", "Envelope", "Opened", "seal", "open_envelope", "peek",
]

ENVELOPE_VERSION = 1
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024
COORDINATOR = 0
MAX_PARTY = 10_000

_FIELDS = ("v", "protocol", "execution", "round", "sender", "recipient", "body", "sealed", "trace", "sig")
_EXECUTION_RE = EXECUTION_ID
_TOKEN_RE = re.compile(r"[a-z0-9-]{1,32}")
# Trace context ends up in log and span headers: keep it small and printable.
_TRACE_MAX_ENTRIES = 8
_TRACE_KEY_RE = re.compile(r"[\x21-\x7e]{1,64}")
_TRACE_VALUE_RE = re.compile(r"[\x20-\x7e]{0,512}")
_SIG_TAG = hashlib.sha256(b"conclave/envelope/v1").digest()
_SEAL_LABEL = b"conclave/seal/v1"
_EPH_LEN, _NONCE_LEN, _TAG_LEN = 32, 12, 16


class EnvelopeError(ValueError):
    """Rejected envelope. ``reason`` is short and secret-free; ``sender`` is the claimed sender, if readable."""

    def __init__(self, reason: str, sender: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sender = sender


def _is_int(v: Any) -> bool:
    return type(v) is int  # bool is an int subclass and must not pass as a party id


def _is_party(v: Any) -> bool:
    return _is_int(v) and 0 <= v <= MAX_PARTY


@dataclass(frozen=True)
class PeerKeys:
    """Public keys of one roster member."""

    sign: bytes
    box: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.sign, bytes) or len(self.sign) != 32:
            raise ValueError("sign key must be 32 bytes")
        try:
            coincurve.PublicKeyXOnly(self.sign)
        except ValueError:
            raise ValueError("sign key is not a valid x-only public key") from None
        if self.box is not None and (not isinstance(self.box, bytes) or len(self.box) != 32):
            raise ValueError("box key must be 32 bytes or None")

    def to_json(self) -> dict[str, str | None]:
        return {"sign": self.sign.hex(), "box": None if self.box is None else self.box.hex()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PeerKeys:
        if not isinstance(d, Mapping) or set(d) - {"sign", "box"} or "sign" not in d:
            raise ValueError("peer keys must be an object with 'sign' and optional 'box'")
        try:
            sign = bytes.fromhex(d["sign"])
            box = None if d.get("box") is None else bytes.fromhex(d["box"])
        except (TypeError, ValueError):
            raise ValueError("peer keys must be hex strings") from None
        return cls(sign, box)


Roster = Mapping[int, PeerKeys]


@dataclass(frozen=True, repr=False)
class Identity:
    """A party's (or the coordinator's) private identity keys."""

    party: int
    sign_secret: bytes
    box_secret: bytes

    def __post_init__(self) -> None:
        if not _is_party(self.party):
            raise ValueError("party must be an integer in 0..10000")
        if not isinstance(self.sign_secret, bytes) or len(self.sign_secret) != 32:
            raise ValueError("sign secret must be 32 bytes")
        if not isinstance(self.box_secret, bytes) or len(self.box_secret) != 32:
            raise ValueError("box secret must be 32 bytes")
        try:
            coincurve.PrivateKey(self.sign_secret)
        except ValueError:
            raise ValueError("sign secret is not a valid secp256k1 scalar") from None

    @classmethod
    def generate(cls, party: int) -> Identity:
        if not _is_party(party):
            raise ValueError("party must be an integer in 0..10000")
        while True:
            try:
                return cls(party, os.urandom(32), os.urandom(32))
            except ValueError:
                continue  # scalar zero or >= n: probability ~2^-128, draw again

    def public(self) -> PeerKeys:
        sign = coincurve.PrivateKey(self.sign_secret).public_key_xonly.format()
        box = X25519PrivateKey.from_private_bytes(self.box_secret).public_key().public_bytes_raw()
        return PeerKeys(sign, box)

    def to_bytes(self) -> bytes:
        return msgpack.packb(
            {"v": 1, "party": self.party, "sign": self.sign_secret, "box": self.box_secret}, use_bin_type=True
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Identity:
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) > 256:
            raise ValueError("identity file: expected at most 256 bytes")
        try:
            d = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
        except Exception:
            raise ValueError("identity file: not msgpack") from None
        if not isinstance(d, dict) or set(d) != {"v", "party", "sign", "box"}:
            raise ValueError("identity file: expected fields v, party, sign, box")
        if not _is_int(d["v"]) or d["v"] != 1:
            raise ValueError("identity file: unsupported version")
        if not all(isinstance(d[k], bytes) for k in ("sign", "box")):
            raise ValueError("identity file: keys must be binary")
        return cls(d["party"], d["sign"], d["box"])

    def __repr__(self) -> str:
        pub = self.public()
        return f"Identity(party={self.party}, sign={pub.sign.hex()[:16]}…, box={pub.box.hex()[:16]}…)"  # type: ignore[union-attr]

    __str__ = __repr__


@dataclass(frozen=True)
class Envelope:
    version: int
    protocol: str
    execution: str
    round: str
    sender: int
    recipient: int | None
    body: bytes = field(repr=False)
    sealed: bool
    trace: dict[str, str]
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        reason = _field_problem(self)
        if reason is not None:
            raise EnvelopeError(reason, self.sender if _is_party(self.sender) else None)

    @property
    def subject(self) -> str:
        return mpc_subject(self.execution, self.round, self.recipient)

    @property
    def msg_id(self) -> str:
        return message_id(self.execution, self.round, self.sender, self.recipient)

    def signing_digest(self) -> bytes:
        canonical = msgpack.packb(
            [self.version, self.protocol, self.execution, self.round, self.sender, self.recipient,
             self.body, self.sealed, dict(sorted(self.trace.items()))],
            use_bin_type=True,
        )
        return hashlib.sha256(_SIG_TAG + _SIG_TAG + canonical).digest()


def _field_problem(e: Envelope) -> str | None:
    """The first rule an envelope breaks, or None. Shared by seal and decode."""
    if not _is_int(e.version) or e.version != ENVELOPE_VERSION:
        return "unsupported envelope version"
    if not isinstance(e.protocol, str) or not _TOKEN_RE.fullmatch(e.protocol):
        return "bad protocol token"
    if not isinstance(e.execution, str) or not _EXECUTION_RE.fullmatch(e.execution):
        return "bad execution token"
    if not isinstance(e.round, str) or not _TOKEN_RE.fullmatch(e.round):
        return "bad round token"
    if not _is_party(e.sender):
        return "bad sender"
    if e.recipient is not None and not _is_party(e.recipient):
        return "bad recipient"
    if not isinstance(e.body, bytes):
        return "body must be bytes"
    if type(e.sealed) is not bool:
        return "sealed must be a boolean"
    if e.sealed and e.recipient is None:
        return "sealed envelope without a recipient"
    if not isinstance(e.trace, dict) or len(e.trace) > _TRACE_MAX_ENTRIES:
        return "trace must be a map of at most 8 entries"
    for k, v in e.trace.items():
        if not (isinstance(k, str) and isinstance(v, str) and _TRACE_KEY_RE.fullmatch(k) and _TRACE_VALUE_RE.fullmatch(v)):
            return "bad trace entry"
    if not isinstance(e.signature, bytes) or len(e.signature) != 64:
        return "signature must be 64 bytes"
    return None


def _encode(e: Envelope) -> bytes:
    return msgpack.packb(
        {"v": e.version, "protocol": e.protocol, "execution": e.execution, "round": e.round,
         "sender": e.sender, "recipient": e.recipient, "body": e.body, "sealed": e.sealed,
         "trace": e.trace, "sig": e.signature},
        use_bin_type=True,
    )


def _decode(raw: Any) -> Envelope:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise EnvelopeError("envelope must be bytes")
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError("envelope exceeds size limit")
    try:
        d = msgpack.unpackb(
            raw, raw=False, strict_map_key=True, use_list=True,
            max_str_len=1024, max_bin_len=MAX_ENVELOPE_BYTES, max_array_len=0,
            max_map_len=32, max_ext_len=0,  # generous enough to name an unknown field in the error
        )
    except Exception:  # msgpack raises a zoo of types, including for trailing data
        raise EnvelopeError("not a msgpack envelope") from None
    if not isinstance(d, dict):
        raise EnvelopeError("envelope is not a map")
    claimed = d.get("sender")
    claimed = claimed if _is_party(claimed) else None
    keys = set(d)
    unknown = keys - set(_FIELDS)
    if unknown:
        names = ", ".join(sorted(repr(k)[:40] for k in unknown)[:3])  # attacker-chosen: keep it short
        raise EnvelopeError(f"unknown envelope fields: {names}", claimed)
    if len(keys) != len(_FIELDS):
        missing = ", ".join(f for f in _FIELDS if f not in keys)
        raise EnvelopeError(f"missing envelope fields: {missing}", claimed)
    return Envelope(d["v"], d["protocol"], d["execution"], d["round"], d["sender"], d["recipient"],
                    d["body"], d["sealed"], d["trace"], d["sig"])


def _seal_header(protocol: str, execution: str, round_: str, sender: int, recipient: int) -> bytes:
    # msgpack is self-delimiting, so these fields cannot be shifted into one another
    return msgpack.packb([ENVELOPE_VERSION, protocol, execution, round_, sender, recipient], use_bin_type=True)


def _seal_key(shared: bytes, eph_pub: bytes, recipient_box: bytes, header: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_LABEL + eph_pub + recipient_box + header)
    return hkdf.derive(shared)


def _sign(identity: Identity, e: Envelope) -> Envelope:
    sig = coincurve.PrivateKey(identity.sign_secret).sign_schnorr(e.signing_digest(), os.urandom(32))
    return replace(e, signature=sig)


def seal(identity: Identity, roster: Roster, *, protocol: str, execution: str, round: str,
         recipient: int | None, body: bytes, confidential: bool,
         trace: Mapping[str, str] | None = None) -> bytes:
    """Build, encrypt if ``confidential``, sign and encode an envelope from ``identity``."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError("body must be bytes")
    body = bytes(body)
    sender = identity.party
    if confidential:
        if recipient is None:
            raise ValueError("a confidential message needs a recipient")
        peer = roster.get(recipient)
        if peer is None or peer.box is None:
            raise ValueError(f"recipient {recipient} has no box key in the roster")
        header = _seal_header(protocol, execution, round, sender, recipient)
        eph = X25519PrivateKey.generate()
        eph_pub = eph.public_key().public_bytes_raw()
        shared = eph.exchange(X25519PublicKey.from_public_bytes(peer.box))
        nonce = os.urandom(_NONCE_LEN)
        ct = ChaCha20Poly1305(_seal_key(shared, eph_pub, peer.box, header)).encrypt(nonce, body, header)
        body = eph_pub + nonce + ct
    unsigned = Envelope(ENVELOPE_VERSION, protocol, execution, round, sender, recipient, body,
                        bool(confidential), dict(trace or {}), bytes(64))
    raw = _encode(_sign(identity, unsigned))
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise ValueError("envelope exceeds size limit")
    return raw


def _unseal(e: Envelope, me: Identity) -> bytes:
    if len(e.body) < _EPH_LEN + _NONCE_LEN + _TAG_LEN:
        raise EnvelopeError("sealed body too short", e.sender)
    eph_pub, nonce, ct = e.body[:_EPH_LEN], e.body[_EPH_LEN:_EPH_LEN + _NONCE_LEN], e.body[_EPH_LEN + _NONCE_LEN:]
    header = _seal_header(e.protocol, e.execution, e.round, e.sender, e.recipient)  # type: ignore[arg-type]
    box = X25519PrivateKey.from_private_bytes(me.box_secret)
    try:
        # exchange() refuses low-order points (all-zero shared secret) with ValueError
        shared = box.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        key = _seal_key(shared, eph_pub, box.public_key().public_bytes_raw(), header)
        return ChaCha20Poly1305(key).decrypt(nonce, ct, header)
    except Exception:
        raise EnvelopeError("sealed body failed authentication", e.sender) from None


@dataclass(frozen=True, repr=False)
class Opened:
    envelope: Envelope
    body: bytes

    def __repr__(self) -> str:
        return f"Opened({self.envelope!r}, body=<{len(self.body)} bytes>)"


def peek(raw: bytes) -> Envelope:
    """Decode and check fields only: no signature check, no decryption."""
    return _decode(raw)


def open_envelope(raw: bytes, roster: Roster, me: Identity, *, subject: str | None = None) -> Opened:
    """Check and open envelope bytes addressed to ``me``; any problem is an :class:`EnvelopeError`."""
    e = _decode(raw)
    peer = roster.get(e.sender)
    if peer is None:
        raise EnvelopeError(f"sender {e.sender} is not in the roster", e.sender)
    if e.recipient is not None and e.recipient != me.party:
        raise EnvelopeError(f"envelope is addressed to party {e.recipient}, not to us", e.sender)
    if subject is not None and subject != e.subject:
        raise EnvelopeError("subject mismatch: envelope belongs to another execution, round or recipient", e.sender)
    try:
        valid = coincurve.PublicKeyXOnly(peer.sign).verify(e.signature, e.signing_digest())
    except Exception:
        valid = False
    if not valid:
        raise EnvelopeError(f"bad signature for claimed sender {e.sender}", e.sender)
    body = _unseal(e, me) if e.sealed else e.body
    return Opened(e, body)
