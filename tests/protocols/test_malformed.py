"""Bad input never crashes a party: every malformed peer message becomes blame.

An honest 2-of-3 run is recorded from party 1's side. Then, for every message
party 2 sent to party 1 in every round of every protocol, each field is replaced
by hostile values (zero, negative, enormous, wrong type, empty, a different
point), and party 1's round function is run again on the doctored inbox. The
round must return normally, and if it aborts it must blame party 2 alone.
"""

from __future__ import annotations

import dataclasses
import os
import random

import pytest

from engine.crypto.group import G, Point
from engine.protocols import aux_info, keygen, presign, sign
from engine.protocols.base import Abort, Msg
from engine.simulation import Simulation, run_rounds
from schemas.codec import DecodeError, packb, unpackb
from tests.conftest import SeededRng
from tests.protocols.support import prime_pool

HUGE = 1 << 5000


def _record(fn, sink):
    def wrapped(state, inbound, rng):
        if state.party == 1:
            sink.append((fn, state, inbound))
        return fn(state, inbound, rng)

    wrapped.__name__ = fn.__name__
    return wrapped


@pytest.fixture(scope="module")
def recorded():
    """(round function, party-1 state, party-1 inbox) for every round of every protocol."""
    sink: list = []
    rng = SeededRng(99)
    sim = Simulation(3, 2, level="dev-2048", primes=prime_pool(1024), rng=rng)
    parties = (1, 2, 3)

    kg = {i: keygen.round1(keygen.KeygenParams(b"kg", i, parties, 2), rng) for i in parties}
    shares = run_rounds("keygen", kg, [_record(f, sink) for f in keygen.ROUNDS], rng)
    keys = sim.paillier_keys()
    ax = {i: aux_info.round1(aux_info.AuxParams(b"ax", i, parties, "dev-2048"), keys[i], rng) for i in parties}
    aux = run_rounds("aux", ax, [_record(f, sink) for f in aux_info.ROUNDS], rng)
    ps = {
        i: presign.round1(presign.PresignParams(b"ps", i, (1, 2), "dev-2048"), shares[i], aux[i], rng)
        for i in (1, 2)
    }
    presigs = run_rounds("presign", ps, [_record(f, sink) for f in presign.ROUNDS], rng)
    sg = {i: sign.round1(sign.SignParams(b"sg", i, b"\x07" * 32), presigs[i]) for i in (1, 2)}
    run_rounds("sign", sg, [_record(f, sink) for f in sign.ROUNDS], rng)
    return sink


def _hostile(value):
    """Replacement values for one field, chosen by its type."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [0, -1, -value, HUGE, "text"]
    if isinstance(value, bytes):
        return [b"", os.urandom(4096), 7]
    if isinstance(value, Point):
        return [G, 5]
    if isinstance(value, tuple):
        return [(), value[:-1], value + value[-1:] if value else (1,)]
    if isinstance(value, dict):
        return [{}, {99: b"x"}, {k: b"" for k in value}]
    return [None]


def _mutations(body):
    """Every (label, doctored body) one field away from ``body``, one level into nested proofs."""
    for f in dataclasses.fields(body):
        value = getattr(body, f.name)
        if dataclasses.is_dataclass(value):
            for g in dataclasses.fields(value):
                inner = getattr(value, g.name)
                for bad in _hostile(inner)[:3]:
                    try:
                        yield f"{f.name}.{g.name}={bad!r:.20}", dataclasses.replace(
                            body, **{f.name: dataclasses.replace(value, **{g.name: bad})}
                        )
                    except (TypeError, ValueError):
                        continue
        for bad in _hostile(value):
            yield f"{f.name}={bad!r:.20}", dataclasses.replace(body, **{f.name: bad})


def _over_the_wire(msg: Msg) -> Msg | None:
    try:
        return unpackb(packb(msg))
    except DecodeError:
        return None  # refused by the codec before any round sees it


def test_every_round_was_recorded(recorded):
    names = [f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}" for fn, _, _ in recorded]
    assert names == [
        "keygen.round2", "keygen.round3", "keygen.output",
        "aux_info.round2", "aux_info.round3", "aux_info.output",
        "presign.round2", "presign.round3", "presign.output",
        "sign.output",
    ]


def test_hostile_fields_are_blamed_on_the_sender_never_crash(recorded):
    checked = rejected_by_codec = 0
    for fn, state, inbound in recorded:
        for idx, msg in enumerate(inbound):
            if msg.sender != 2:
                continue
            for label, body in _mutations(msg.body):
                doctored = _over_the_wire(dataclasses.replace(msg, body=body))
                if doctored is None:
                    rejected_by_codec += 1
                    continue
                new_inbound = inbound[:idx] + (doctored,) + inbound[idx + 1 :]
                result = fn(state, new_inbound, SeededRng(1))
                checked += 1
                if isinstance(result, Abort):
                    assert result.culprits in ((2,), ()), (fn.__module__, fn.__name__, label, result)
                    if result.culprits == ():
                        # only the two presign sum checks may abort without blame
                        assert not result.attributable and fn is presign.output, (fn.__name__, label)
    assert checked > 200 and rejected_by_codec > 20


def test_header_tampering_is_blamed(recorded):
    fn, state, inbound = recorded[3]  # aux_info.round2
    for change in ({"eid": b"other"}, {"round": 9}, {"protocol": "presign"}):
        msg = next(m for m in inbound if m.sender == 2)
        doctored = dataclasses.replace(msg, **change)
        result = fn(state, tuple(doctored if m is msg else m for m in inbound), SeededRng(1))
        assert isinstance(result, Abort) and result.culprits == (2,), change


def test_missing_and_duplicated_messages(recorded):
    fn, state, inbound = recorded[1]  # keygen.round3: broadcast + direct from each peer
    without_2 = tuple(m for m in inbound if m.sender != 2)
    result = fn(state, without_2, SeededRng(1))
    assert isinstance(result, Abort) and result.culprits == (2,)
    dup = next(m for m in inbound if m.sender == 2 and m.recipient is None)
    conflicting = dataclasses.replace(dup, body=dataclasses.replace(dup.body, u=b"\x01" * 32))
    result = fn(state, inbound + (conflicting,), SeededRng(1))
    assert isinstance(result, Abort) and result.culprits == (2,)
    # an exact duplicate (a redelivery) is harmless
    assert not isinstance(fn(state, inbound + (dup,), SeededRng(1)), Abort)


def test_garbage_bytes_only_ever_raise_decode_error(recorded):
    rnd = random.Random(5)
    samples = [packb(m) for _, _, inbound in recorded for m in inbound[:2]]
    for _ in range(3000):
        base = rnd.choice(samples)
        choice = rnd.random()
        if choice < 0.3:
            data = base[: rnd.randrange(len(base))]
        elif choice < 0.7:
            data = bytearray(base)
            for _ in range(rnd.randrange(1, 8)):
                data[rnd.randrange(len(data))] = rnd.randrange(256)
            data = bytes(data)
        else:
            data = rnd.randbytes(rnd.randrange(1, 200))
        try:
            unpackb(data)
        except DecodeError:
            pass
