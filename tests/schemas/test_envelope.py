"""Envelope signing, sealing and strict decoding."""

from __future__ import annotations

import random

import msgpack
import pytest

from schemas import envelope as env_mod
from schemas.envelope import (
    COORDINATOR,
    MAX_ENVELOPE_BYTES,
    Envelope,
    EnvelopeError,
    Identity,
    PeerKeys,
    open_envelope,
    peek,
    seal,
)

EXEC = "exec-A_1"


@pytest.fixture(scope="module")
def ids() -> dict[int, Identity]:
    return {p: Identity.generate(p) for p in (COORDINATOR, 1, 2, 3)}


@pytest.fixture(scope="module")
def roster(ids) -> dict[int, PeerKeys]:
    r = {p: i.public() for p, i in ids.items()}
    r[COORDINATOR] = PeerKeys(r[COORDINATOR].sign)  # the coordinator publishes no box key
    return r


def _seal(ids, roster, sender=1, **kw) -> bytes:
    args = dict(protocol="keygen", execution=EXEC, round="keygen-2", recipient=2, body=b"payload",
                confidential=False, trace={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"})
    args.update(kw)
    return seal(ids[sender], roster, **args)


def _rewrite(raw: bytes, **changes) -> bytes:
    d = msgpack.unpackb(raw, raw=False)
    d.update(changes)
    return msgpack.packb(d, use_bin_type=True)


def _resign(identity: Identity, raw: bytes, **changes) -> bytes:
    """Re-sign a modified envelope with a real key, as a dishonest sender could."""
    e = env_mod._decode(_rewrite(raw, **changes))
    return env_mod._encode(env_mod._sign(identity, e))


def _reject(raw, roster, me, match: str, **kw) -> EnvelopeError:
    with pytest.raises(EnvelopeError, match=match) as info:
        open_envelope(raw, roster, me, **kw)
    return info.value


def test_broadcast_round_trip(ids, roster):
    raw = _seal(ids, roster, recipient=None, body=b"hello")
    opened = open_envelope(raw, roster, ids[3], subject=f"conclave.mpc.{EXEC}.keygen-2.all")
    e = opened.envelope
    assert opened.body == b"hello" and e.body == b"hello" and not e.sealed
    assert (e.version, e.protocol, e.execution, e.round, e.sender, e.recipient) == (1, "keygen", EXEC, "keygen-2", 1, None)
    assert e.trace["traceparent"].startswith("00-")
    assert e.subject == f"conclave.mpc.{EXEC}.keygen-2.all"
    assert e.msg_id == f"{EXEC}:keygen-2:1:all"
    assert len(e.signing_digest()) == 32 and len(e.signature) == 64
    assert "hello" not in repr(opened)


def test_sealed_p2p_round_trip(ids, roster):
    secret = b"share-for-party-2"
    raw = _seal(ids, roster, recipient=2, body=secret, confidential=True)
    assert secret not in raw
    opened = open_envelope(raw, roster, ids[2], subject=f"conclave.mpc.{EXEC}.keygen-2.2")
    assert opened.body == secret and opened.envelope.sealed
    assert opened.envelope.msg_id == f"{EXEC}:keygen-2:1:2"
    # fresh ephemeral key and nonce each time
    assert _seal(ids, roster, recipient=2, body=secret, confidential=True) != raw


def test_coordinator_without_box_key_can_command(ids, roster):
    raw = _seal(ids, roster, sender=COORDINATOR, protocol="ctl", round="start", recipient=None, body=b"go")
    assert open_envelope(raw, roster, ids[1]).envelope.sender == COORDINATOR


def test_identity_round_trip_and_repr(ids):
    me = ids[1]
    assert Identity.from_bytes(me.to_bytes()) == me
    for text in (repr(me), str(me), repr(me.public())):
        assert me.sign_secret.hex() not in text and me.box_secret.hex() not in text
        assert me.sign_secret.hex()[:8] not in text and me.box_secret.hex()[:8] not in text
    assert "party=1" in repr(me)


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\x80", msgpack.packb([1, 2]),
    msgpack.packb({"v": 2, "party": 1, "sign": b"\x01" * 32, "box": b"\x02" * 32}),
    msgpack.packb({"v": 1, "party": True, "sign": b"\x01" * 32, "box": b"\x02" * 32}),
    msgpack.packb({"v": 1, "party": 1, "sign": b"\x00" * 32, "box": b"\x02" * 32}),
    msgpack.packb({"v": 1, "party": 1, "sign": b"\x01" * 31, "box": b"\x02" * 32}),
    msgpack.packb({"v": 1, "party": 1, "sign": "01" * 32, "box": b"\x02" * 32}),
    msgpack.packb({"v": 1, "party": 1, "sign": b"\x01" * 32, "box": b"\x02" * 32, "x": 1}),
])
def test_identity_from_bytes_is_strict(data):
    with pytest.raises(ValueError):
        Identity.from_bytes(data)


def test_peer_keys_json(ids):
    pub = ids[1].public()
    assert PeerKeys.from_json(pub.to_json()) == pub
    assert PeerKeys.from_json({"sign": pub.sign.hex(), "box": None}).box is None
    for bad in ({"sign": pub.sign.hex()[:-2]}, {"sign": pub.sign.hex(), "box": "ab"}, {"box": pub.box.hex()},
                {"sign": "zz" * 32}, {"sign": 5}, {"sign": pub.sign.hex(), "extra": 1}, "nope"):
        with pytest.raises(ValueError):
            PeerKeys.from_json(bad)


@pytest.mark.parametrize("field,value", [
    ("protocol", "aux"), ("execution", "exec-B"), ("round", "keygen-3"), ("sender", 3),
    ("recipient", None), ("body", b"payloaD"), ("sealed", True), ("trace", {}),
    ("trace", {"traceparent": "00-forged"}),
])
def test_tampering_breaks_signature(ids, roster, field, value):
    raw = _seal(ids, roster, recipient=2)
    err = _reject(_rewrite(raw, **{field: value}), roster, ids[2], "signature")
    assert err.sender == (3 if field == "sender" else 1)


def test_forged_sender(ids, roster):
    impostor = Identity(1, ids[2].sign_secret, ids[2].box_secret)  # party 2's keys, claims to be 1
    err = _reject(_seal({1: impostor}, roster, recipient=None), roster, ids[3], "signature")
    assert err.sender == 1


def test_unknown_party(roster):
    stranger = Identity.generate(9)
    err = _reject(seal(stranger, roster, protocol="keygen", execution=EXEC, round="keygen-1",
                       recipient=None, body=b"", confidential=False), roster, Identity.generate(1), "roster")
    assert err.sender == 9


def test_unknown_and_missing_fields(ids, roster):
    raw = _seal(ids, roster)
    _reject(_rewrite(raw, extra=1), roster, ids[2], "unknown envelope fields: .extra.")
    d = msgpack.unpackb(raw, raw=False)
    for name in d:
        partial = msgpack.packb({k: v for k, v in d.items() if k != name}, use_bin_type=True)
        _reject(partial, roster, ids[2], "missing")


@pytest.mark.parametrize("field,value", [
    ("sender", True), ("sender", -1), ("sender", 10_001), ("sender", "1"), ("round", 5),
    ("recipient", True), ("recipient", 2.0), ("v", True), ("v", 2), ("sealed", 1), ("body", "text"),
    ("trace", ["a"]), ("trace", {"a": 1}), ("trace", {f"k{i}": "v" for i in range(9)}), ("sig", "s" * 64),
    ("sig", b"\x00" * 63), ("execution", "a.b"), ("execution", "*"), ("execution", "x" * 81),
    ("round", "Keygen-2"), ("round", ">"), ("protocol", ""), ("protocol", None),
])
def test_wrong_types_and_tokens(ids, roster, field, value):
    with pytest.raises(EnvelopeError):
        open_envelope(_rewrite(_seal(ids, roster), **{field: value}), roster, ids[2])
    with pytest.raises(EnvelopeError):
        peek(_rewrite(_seal(ids, roster), **{field: value}))


def test_sealed_broadcast_rejected(ids, roster):
    raw = _rewrite(_seal(ids, roster, recipient=2, confidential=True), recipient=None)
    _reject(raw, roster, ids[2], "without a recipient")


def test_oversize_rejected_before_decode(ids, roster, monkeypatch):
    def boom(*a, **kw):
        raise AssertionError("decoded an oversize envelope")

    monkeypatch.setattr(env_mod.msgpack, "unpackb", boom)
    _reject(b"\x00" * (MAX_ENVELOPE_BYTES + 1), roster, ids[2], "size")
    with pytest.raises(EnvelopeError, match="size"):
        peek(b"\x00" * (MAX_ENVELOPE_BYTES + 1))


def test_seal_refuses_oversize(ids, roster):
    with pytest.raises(ValueError, match="size"):
        _seal(ids, roster, body=bytes(MAX_ENVELOPE_BYTES))


def _garbage(rng: random.Random, valid: bytes) -> list:
    shapes = [None, 0, -1, 2**64 - 1, 1.5, True, "x", b"x", [], {}, [valid], {"v": 1}, {1: 2},
              {b"v": 1}, {"v": {"v": {}}}, dict.fromkeys(env_mod._FIELDS), dict.fromkeys(env_mod._FIELDS, 1),
              msgpack.ExtType(5, b"abc"), msgpack.Timestamp(1), [[[]]] * 3]
    out: list = [b"", b"\xc1", b"\x91" * 100_000, b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
                 valid + b"\x00", "a string", None, bytearray(valid), memoryview(valid)]
    out += [msgpack.packb(s, use_bin_type=True) for s in shapes]
    out += [msgpack.packb(s, use_bin_type=False) for s in shapes]
    out += [valid[:i] for i in range(0, len(valid), 7)]
    out += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(64))) for _ in range(150)]
    for _ in range(150):
        b = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        out.append(bytes(b))
    return out


def test_garbage_only_raises_envelope_error(ids, roster):
    rng = random.Random(1234)
    for valid in (_seal(ids, roster), _seal(ids, roster, recipient=2, confidential=True)):
        for raw in _garbage(rng, valid):
            for fn in (lambda r: open_envelope(r, roster, ids[2]), peek):
                try:
                    fn(raw)
                except EnvelopeError as err:
                    assert isinstance(err.reason, str) and err.reason
                    assert ids[2].box_secret.hex() not in err.reason


def test_sealed_for_two_not_openable_by_three(ids, roster):
    raw = _seal(ids, roster, recipient=2, body=b"for two only", confidential=True)
    _reject(raw, roster, ids[3], "addressed to party 2")
    # even if someone re-addresses it (and the sender re-signs), only party 2's key decrypts
    err = _reject(_resign(ids[1], raw, recipient=3), roster, ids[3], "authentication")
    assert "for two only" not in str(err)


@pytest.mark.parametrize("where", [0, 40, -1])  # ephemeral key, nonce, ciphertext/tag
def test_ciphertext_bit_flip_fails_even_if_resigned(ids, roster, where):
    secret = b"super secret share"
    raw = _seal(ids, roster, recipient=2, body=secret, confidential=True)
    body = bytearray(msgpack.unpackb(raw, raw=False)["body"])
    body[where] ^= 0x01
    err = _reject(_resign(ids[1], raw, body=bytes(body)), roster, ids[2], "authentication")
    assert secret.hex() not in str(err) and "super secret" not in str(err)


def test_sealed_body_bound_to_header(ids, roster):
    raw = _seal(ids, roster, recipient=2, confidential=True)
    # another party lifts the ciphertext into its own signed envelope
    _reject(_resign(ids[3], raw, sender=3), roster, ids[2], "authentication")
    # the sender itself moves it into another round
    _reject(_resign(ids[1], raw, round="keygen-3"), roster, ids[2], "authentication")
    _reject(_resign(ids[1], raw, body=b"\x00" * 20), roster, ids[2], "too short")


def test_subject_mismatch(ids, roster):
    raw = _seal(ids, roster, execution="exec-B", recipient=None)
    _reject(raw, roster, ids[2], "another execution", subject=f"conclave.mpc.{EXEC}.keygen-2.all")
    assert open_envelope(raw, roster, ids[2], subject="conclave.mpc.exec-B.keygen-2.all")


def test_seal_argument_checks(ids, roster):
    with pytest.raises(ValueError, match="recipient"):
        _seal(ids, roster, recipient=None, confidential=True)
    with pytest.raises(ValueError, match="box key"):
        _seal(ids, roster, recipient=COORDINATOR, confidential=True)
    with pytest.raises(ValueError, match="execution"):
        _seal(ids, roster, execution="a.b")
    with pytest.raises(ValueError, match="round"):
        _seal(ids, roster, round="keygen.2")
    with pytest.raises(ValueError, match="trace"):
        _seal(ids, roster, trace={"k": "\n"})


def test_peek_without_keys(ids, roster):
    raw = _seal(ids, roster, recipient=2, body=b"hidden", confidential=True)
    e = peek(raw)
    assert isinstance(e, Envelope)
    assert (e.sender, e.recipient, e.sealed, e.round) == (1, 2, True, "keygen-2")
    assert b"hidden" not in e.body
    assert e.subject == f"conclave.mpc.{EXEC}.keygen-2.2"
    assert "body" not in repr(e) and "signature" not in repr(e)
