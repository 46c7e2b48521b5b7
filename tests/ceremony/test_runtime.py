"""PartyRuntime driven through the MemoryBroker: ceremonies, crashes, bad input, deadlines.

The 2-of-3 key comes from the session's keygen template (see conftest.py); each
test works on its own copy of the three parties' stores.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from engine.ceremony.runtime import Command, Outgoing, start_envelope
from engine.ceremony.store import Ceremony, KeyShareRecord, PartyStore, PresignatureRecord
from engine.crypto import ecdsa
from engine.crypto.group import SYSTEM_RNG
from engine.protocols import keygen
from schemas.codec import packb, unpackb
from schemas.envelope import COORDINATOR, Identity, open_envelope, peek, seal
from schemas.subjects import mpc_subject
from tests.ceremony.conftest import (
    KEY_ID,
    LEVEL,
    PARTIES,
    Cluster,
    assert_no_conflicting_publishes,
    clone_cluster,
    digest_of,
    run_keygen,
)

SIGN_STEPS_OF_PARTY_2 = 12  # deliveries party 2 handles in a presign+sign ceremony with signers (1, 2)


def assert_valid_signature(result: dict[str, Any], digest: bytes, public_key: str) -> None:
    pub = bytes.fromhex(result["public_key"])
    r, s, v = int(result["r"], 16), int(result["s"], 16), result["v"]
    assert result["public_key"] == public_key
    assert result["digest"] == digest.hex()
    assert ecdsa.verify_digest(pub, digest, r, s, require_low_s=True)
    assert ecdsa.recover(digest, ecdsa.Signature(r, s, v)).to_bytes() == pub
    assert ecdsa.recover(digest, ecdsa.Signature(r, s, v ^ 1)).to_bytes() != pub


def assert_signed(c: Cluster, execution: str, signers: tuple[int, ...], digest: bytes) -> dict[str, Any]:
    outs = c.outcomes(execution)
    assert sorted(outs) == sorted(signers), outs
    assert all(o["status"] == "completed" for o in outs.values()), outs
    results = [o["result"] for o in outs.values()]
    assert all(r == results[0] for r in results)  # same (r, s, v) everywhere
    assert results[0]["signers"] == sorted(signers)
    assert_valid_signature(results[0], digest, c.rt(signers[0]).status()["keys"][0]["public_key"])
    for p in signers:
        assert c.stores[p].vault.get(f"ceremony:{execution}") is None
    return results[0]


def events_of(store: PartyStore) -> list[tuple[int, Any]]:
    """(notification id, domain event) of everything the store holds, in commit order."""
    notes = store.app.recorder.select_notifications(start=1, limit=1_000_000)
    return [(n.id, store.app.mapper.to_domain_event(n)) for n in notes]


def rejections(store: PartyStore) -> list[str]:
    return [e.reason for _, e in events_of(store) if type(e).__name__ == "Recorded"]


def record_saves(store: PartyStore) -> list[list[Any]]:
    """Wrap ``store.save`` to log the pending events of every commit."""
    batches: list[list[Any]] = []
    real = store.save

    def save(*aggs, seq=None):
        pending = [e for a in aggs for e in a.pending_events]
        real(*aggs, seq=seq)
        batches.append(pending)

    store.save = save  # type: ignore[method-assign]
    return batches


# -- ceremonies -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_keygen_then_sign(backend, keygen_template, fresh_cluster, tmp_path):
    if backend == "sqlite":  # the session template ran this keygen on SQLite stores
        c = clone_cluster(keygen_template, "sqlite", tmp_path)
        keyed = keygen_template.outcomes
    else:
        c = fresh_cluster("memory")
        keyed = run_keygen(c)
    try:
        assert sorted(keyed) == [1, 2, 3]
        assert {o["status"] for o in keyed.values()} == {"completed"}
        pubs = {o["result"]["public_key"] for o in keyed.values()}
        assert len(pubs) == 1
        (pub,) = pubs
        assert all(o["result"]["threshold"] == 2 and o["result"]["parties"] == [1, 2, 3] for o in keyed.values())
        for p in PARTIES:
            st = c.rt(p).status()
            assert [k["public_key"] for k in st["keys"]] == [pub] and st["ceremonies"] == []
            assert c.stores[p].vault.get(f"ceremony:{KEY_ID}") is None
            assert c.stores[p].get(KeyShareRecord, key_id=KEY_ID).public_key == pub

        for n, signers in enumerate([(1, 3), (2, 3)]):
            digest = digest_of(f"message {n}")
            c.sign(f"s{n}", signers, digest)
            result = assert_signed(c, f"s{n}", signers, digest)
            assert result["public_key"] == pub
        assert_no_conflicting_publishes(c.broker)
    finally:
        c.close()


# -- crash and resume -------------------------------------------------------------------


def _sign_with_crash(c: Cluster, k: int, crash) -> None:
    """Run sign (1, 2), delivering one message at a time; call ``crash`` at party 2's k-th delivery."""
    digest = digest_of("crash")
    c.start("s", "sign", (1, 2), {"key_id": KEY_ID, "digest": digest})
    handled, done = 0, False
    progress = True
    while progress:
        progress = False
        for p in PARTIES:
            if p == 2 and handled == k and not done:
                assert c.pending(2), f"party 2 handled only {handled} messages"
                handled += crash()  # the deliveries it made itself
                done = True
            if c.deliver_next(p) is not None:
                progress = True
                handled += p == 2
    assert done and handled == SIGN_STEPS_OF_PARTY_2, handled
    assert_signed(c, "s", (1, 2), digest)
    assert_no_conflicting_publishes(c.broker)


def _next_for_party_2(c: Cluster) -> tuple[int, str, bytes]:
    """Move party 2's cursor onto the next message it wants (as deliver_next would) and return it."""
    b = c.broker
    while not b.wants(2, b.log[b.cursors[2]][1]):
        b.cursors[2] += 1
    return b.log[b.cursors[2]]


@pytest.mark.parametrize("k", range(SIGN_STEPS_OF_PARTY_2))
def test_crash_after_commit_resumes(sqlite_cluster, k):
    """SIGKILL after the commit, before publishing or acking: recover() re-sends the same bytes."""
    c = sqlite_cluster
    was_running = []

    def crash() -> int:
        seq, subject, data = _next_for_party_2(c)
        step = c.rt(2).handle(data, subject, seq)  # committed; outgoing never published, seq never acked
        lost = {o.msg_id: o.data for o in step.outgoing}
        committed = c.stores[2].processed(seq)
        assert committed or not lost  # only our own broadcast commits nothing
        c.crash(2)
        rt = c.make_runtime(2)  # a new process over the same SQLite files
        was_running.append(not rt.store.get(Ceremony, execution="s").finished)
        recovered = rt.recover()
        again = {o.msg_id: o.data for o in recovered.outgoing}
        assert len(again) == len(recovered.outgoing)
        before = {o.msg_id: o.data for o in c.broker.published}
        for msg_id, sent in again.items():
            if msg_id in before:
                assert before[msg_id] == sent, f"{msg_id} re-sent with different bytes"
        for msg_id, sent in lost.items():
            assert again.get(msg_id) == sent, f"{msg_id} was lost in the crash and not re-sent"
        for _, msg_id, sent in rt.store.get(Ceremony, execution="s").outbox:
            assert again[msg_id] == sent  # the recorded envelopes go out again exactly as recorded
        c.broker.parties[2] = rt
        c.broker.publish_all(recovered.outgoing)
        redelivered = rt.handle(data, subject, seq)  # the broker redelivers the unacked message
        if committed:
            assert redelivered.duplicate_delivery
        assert not redelivered.outgoing and not redelivered.reached and redelivered.rejected is None
        c.broker.cursors[2] += 1  # acked at last
        return 1

    _sign_with_crash(c, k, crash)
    events = [type(e).__name__ for e in c.stores[2].timeline(Ceremony, execution="s")]
    assert events.count("Resumed") == (1 if was_running == [True] else 0)
    assert events[-1] == "Completed"


class SimulatedCrash(BaseException):
    pass


@pytest.mark.parametrize("k", range(SIGN_STEPS_OF_PARTY_2))
def test_crash_before_commit_redelivers(sqlite_cluster, k):
    """The process dies inside the commit: nothing is recorded and the broker delivers the seq again."""
    c = sqlite_cluster

    def crash() -> int:
        seq, subject, data = _next_for_party_2(c)
        store = c.stores[2]
        events_before = len(events_of(store))

        def dying_save(*aggs, seq=None):
            raise SimulatedCrash()

        store.save = dying_save  # type: ignore[method-assign]
        try:
            step = c.rt(2).handle(data, subject, seq)
            assert not step.outgoing  # only our own broadcast needs no commit
        except SimulatedCrash:
            pass
        del store.save
        c.crash(2)
        rt = c.make_runtime(2)
        assert not rt.store.processed(seq)
        assert len(events_of(rt.store)) == events_before
        recovered = rt.recover()
        before = {o.msg_id: o.data for o in c.broker.published}
        for o in recovered.outgoing:
            assert before.get(o.msg_id) == o.data  # only what was already sent, byte for byte
        c.broker.parties[2] = rt
        c.broker.publish_all(recovered.outgoing)
        # the cursor was not moved: deliver_next hands party 2 the same seq again, processed afresh
        return 0

    _sign_with_crash(c, k, crash)
    redone = [st for p, seq, st in c.steps if p == 2]
    assert not any(st.duplicate_delivery for st in redone)


def test_redelivery_of_committed_seq_is_a_no_op(cluster):
    c = cluster
    digest = digest_of("redelivery")
    c.sign("s", (1, 3), digest)
    assert_signed(c, "s", (1, 3), digest)
    store = c.stores[1]
    count, last = len(events_of(store)), store.last_seq()
    start_seq = next(seq for seq, subject, _ in c.broker.log if subject == mpc_subject("s", "start", None))
    for seq, subject, data in c.broker.log:
        if seq in (start_seq, last):
            step = c.rt(1).handle(data, subject, seq)
            assert step.duplicate_delivery
            assert not step.outgoing and not step.reached and step.rejected is None
    assert len(events_of(store)) == count and store.last_seq() == last


# -- bad input --------------------------------------------------------------------------


def test_bad_messages_are_rejected_and_recorded(cluster, keygen_template):
    c = cluster
    digest = digest_of("bad messages")
    c.start("s", "sign", (1, 2), {"key_id": KEY_ID, "digest": digest})
    assert c.deliver_next(1)[1] == mpc_subject("s", "start", None)  # party 1 sends its presign-1 messages
    subject = "conclave.mpc.s.presign-1.all"
    honest = next(d for _, subj, d in c.broker.log if subj == subject)
    body = open_envelope(honest, c.roster, c.ids[2]).body
    impostor = Identity(1, c.ids[3].sign_secret, c.ids[3].box_secret)  # party 3's key, claiming to be 1
    forged = seal(impostor, c.roster, protocol="presign", execution="s", round="presign-1", recipient=None,
                  body=body, confidential=False)
    other = next(d for _, subj, d in keygen_template.broker.log
                 if subj == "conclave.mpc.kg.keygen-1.all" and peek(d).sender == 1)
    injected = {
        "garbage": Outgoing(subject, b"\x00garbage", "x-garbage"),
        "forged": Outgoing(subject, forged, "x-forged"),
        "replay": Outgoing(subject, other, "x-replay"),  # validly signed, but for execution kg
        "duplicate": Outgoing(subject, honest, "x-duplicate"),  # same bytes, new stream sequence
        "unknown": Outgoing("conclave.mpc.nosuch.keygen-1.all", b"junk", "x-unknown"),
    }
    seqs = {}
    for name, out in injected.items():
        c.broker.publish(out)
        seqs[len(c.broker.log)] = name
    while any(c.deliver_next(p) for p in PARTIES):
        pass

    got = {seqs[seq]: st.rejected for p, seq, st in c.steps if p == 2 and seq in seqs}
    assert got == {
        "garbage": "not a msgpack envelope",
        "forged": "bad signature for claimed sender 1",
        "replay": "subject mismatch: envelope belongs to another execution, round or recipient",
        "duplicate": "duplicate message",
        "unknown": "not a msgpack envelope",
    }
    store = c.stores[2]
    recorded = [e for e in store.timeline(Ceremony, execution="s") if type(e).__name__ == "MessageRejected"]
    assert sorted(e.reason for e in recorded) == sorted(got[n] for n in ("garbage", "forged", "replay", "duplicate"))
    assert {e.seq for e in recorded} == {s for s, n in seqs.items() if n != "unknown"}
    assert {e.sender for e in recorded if e.reason != "not a msgpack envelope"} == {1}
    assert rejections(store) == ["not a msgpack envelope"]  # the unknown execution: a Rejection
    assert c.rt(2).status()["rejected_messages"] == 1
    assert_signed(c, "s", (1, 2), digest)  # and the ceremony went on


def test_equivocation_aborts_blaming_the_sender(cluster):
    c = cluster
    c.start("kg2", "keygen", PARTIES, {"threshold": 2})
    assert c.deliver_next(3)[1] == mpc_subject("kg2", "start", None)  # party 3 broadcasts keygen-1
    # party 3 runs its round 1 a second time and signs the other commitment too
    adv = keygen.round1(keygen.KeygenParams(b"kg2/keygen", 3, PARTIES, 2), SYSTEM_RNG)
    (m,) = adv.outbox
    second = seal(c.ids[3], c.roster, protocol="keygen", execution="kg2", round="keygen-1", recipient=None,
                  body=packb(m), confidential=False)
    first = next(d for _, s, d in c.broker.log if s == "conclave.mpc.kg2.keygen-1.all")
    assert open_envelope(first, c.roster, c.ids[1]).body != packb(m)
    c.broker.publish(Outgoing("conclave.mpc.kg2.keygen-1.all", second, "kg2:keygen-1:3:all/second"))
    c.run()

    outs = c.outcomes("kg2")
    for p in (1, 2):
        assert outs[p]["status"] == "aborted" and outs[p]["culprits"] == [3], outs[p]
        assert "two different signed messages for keygen-1" in outs[p]["reason"]
        assert outs[p]["attributable"] is True and outs[p]["reported_by"] == p
        cer = c.stores[p].get(Ceremony, execution="kg2")
        assert cer.status == "aborted" and cer.culprits == [3]
        assert c.stores[p].vault.get("ceremony:kg2") is None
    assert outs[3]["status"] == "aborted" and outs[3]["reported_by"] in (1, 2)
    assert c.stores[3].vault.get("ceremony:kg2") is None
    assert_no_conflicting_publishes(c.broker)


# -- deadlines ----------------------------------------------------------------------------


def test_deadline_aborts_and_blames_the_silent_party(cluster):
    c = cluster
    c.broker.down.add(2)  # party 2 never delivers
    c.start("kg2", "keygen", PARTIES, {"threshold": 2}, timeout=30.0)
    c.run()
    assert c.rt(1).status()["ceremonies"][0]["waiting_for"] == [2]
    assert c.stores[1].vault.get("ceremony:kg2") is not None
    c.clock.advance(29.0)
    assert c.rt(1).expire().outgoing == []  # not yet
    c.clock.advance(2.0)
    step = c.rt(1).expire()
    assert step.reached == ["aborted"]
    assert [o.subject for o in step.outgoing] == [mpc_subject("kg2", "abort", None), "conclave.out.kg2.1"]
    c.broker.publish_all(step.outgoing)
    c.run()  # party 3 reads the abort notice

    cer1 = c.stores[1].get(Ceremony, execution="kg2")
    assert cer1.status == "aborted" and cer1.culprits == [2]
    assert "round keygen-1 timed out after 30s waiting for parties [2]" == cer1.abort_reason
    aborted3 = [e for e in c.stores[3].timeline(Ceremony, execution="kg2") if type(e).__name__ == "Aborted"]
    assert len(aborted3) == 1 and aborted3[0].reported_by == 1 and aborted3[0].culprits == [2]
    outs = c.outcomes("kg2")
    assert outs[1]["status"] == outs[3]["status"] == "aborted" and outs[3]["reported_by"] == 1
    for p in (1, 3):
        assert c.stores[p].vault.get("ceremony:kg2") is None
        assert c.rt(p).status()["ceremonies"] == []
    assert c.rt(3).expire().outgoing == []  # finished ceremonies never expire again

    c.broker.down.discard(2)  # party 2 comes back late: it learns of the abort too
    c.run()
    assert c.stores[2].get(Ceremony, execution="kg2").status == "aborted"
    assert c.stores[2].vault.get("ceremony:kg2") is None
    assert_no_conflicting_publishes(c.broker)


def test_presignature_of_an_aborted_sign_is_never_reused(cluster):
    c = cluster
    c.start("p", "presign", (1, 2), {"key_id": KEY_ID})
    c.run()
    assert {o["status"] for o in c.outcomes("p").values()} == {"completed"}
    assert c.rt(1).available_presignatures(KEY_ID, (1, 2)) == ["p"]

    c.broker.down.add(2)
    c.start("s", "sign", (1, 2), {"key_id": KEY_ID, "digest": digest_of("aborted"), "presig_id": "p"}, timeout=10.0)
    c.run()
    assert c.stores[1].get(PresignatureRecord, presig_id="p").consumed_by == "s"
    assert c.stores[1].vault.get("presig:p") is None
    c.clock.advance(11.0)
    step = c.rt(1).expire()
    c.broker.publish_all(step.outgoing)
    cer = c.stores[1].get(Ceremony, execution="s")
    assert cer.status == "aborted" and cer.culprits == [2]
    assert c.rt(1).available_presignatures(KEY_ID, (1, 2)) == []
    assert c.rt(1).status()["presignatures"] == {KEY_ID: {"available": 0, "consumed": 1}}

    if c.kind == "sqlite":  # and after a restart
        c.crash(1)
        c.broker.parties[1] = rt = c.make_runtime(1)
        c.broker.publish_all(rt.recover().outgoing)
        assert rt.available_presignatures(KEY_ID, (1, 2)) == []
    c.start("s2", "sign", (1, 2), {"key_id": KEY_ID, "digest": digest_of("again"), "presig_id": "p"})
    c.run()
    out = c.outcomes("s2")[1]
    assert out == {"status": "rejected", "reason": "bad command: presignature already used"}
    assert c.stores[1].get(Ceremony, execution="s2") is None


def test_a_start_older_than_the_round_deadline_is_refused(cluster):
    """A party back from downtime finds a start its peers gave up on: it aborts without computing,
    and burns the presignature its peer already spent, so no signature for it can exist."""
    c = cluster
    c.broker.clock = c.clock
    c.start("p", "presign", (1, 2), {"key_id": KEY_ID})
    c.run()
    c.broker.down.add(2)
    c.start("s", "sign", (1, 2), {"key_id": KEY_ID, "digest": digest_of("late"), "presig_id": "p"}, timeout=10.0)
    c.run()  # party 1 spends the presignature and sends σ_1
    c.clock.advance(11.0)
    c.broker.publish_all(c.rt(1).expire().outgoing)
    c.broker.down.discard(2)
    c.run()
    cer = c.stores[2].get(Ceremony, execution="s")
    assert cer.status == "aborted" and cer.phase is None and cer.culprits == []
    assert cer.abort_reason.startswith("start arrived 11s after it was sent")
    assert not [o for o in c.broker.published if o.msg_id.startswith("s:sign-1:2:")]
    assert c.stores[2].get(PresignatureRecord, presig_id="p").consumed_by == "s"
    assert c.stores[2].vault.get("presig:p") is None
    assert c.rt(2).status()["presignatures"] == {KEY_ID: {"available": 0, "consumed": 1}}
    assert {o["status"] for o in c.outcomes("s").values()} == {"aborted"}


def test_a_message_after_the_deadline_never_completes_a_round(cluster):
    """Both partial signatures are out, but each reaches its peer only after the round deadline:
    neither party releases the signature (the coordinator was told the request timed out)."""
    c = cluster
    c.start("s", "sign", (1, 2), {"key_id": KEY_ID, "digest": digest_of("too slow")}, timeout=10.0)

    def at_sign1(p: int) -> bool:
        return [f["round"] for f in c.rt(p).status()["ceremonies"]] == ["sign-1"]

    for _ in range(100):  # run presign, holding back only the σ messages
        for p in (1, 2):
            nxt = c.pending(p)
            if not at_sign1(p) and nxt and ".sign-1." not in nxt[0][1]:
                c.deliver_next(p)
        if at_sign1(1) and at_sign1(2):
            break
    # both have sent σ_i; each has yet to read the other's
    assert at_sign1(1) and at_sign1(2)
    c.clock.advance(11.0)
    c.run()
    for p in (1, 2):
        cer = c.stores[p].get(Ceremony, execution="s")
        assert cer.status == "aborted" and "timed out" in cer.abort_reason, (p, cer.abort_reason)
        assert cer.result is None
    assert {o["status"] for o in c.outcomes("s").values()} == {"aborted"}


def test_presignature_is_consumed_in_the_same_commit_as_sigma(cluster):
    c = cluster
    c.start("p", "presign", (1, 2), {"key_id": KEY_ID})
    c.run()
    batches = {p: record_saves(c.stores[p]) for p in (1, 2)}
    digest = digest_of("with presignature")
    c.start("s", "sign", (1, 2), {"key_id": KEY_ID, "digest": digest, "presig_id": "p"})
    c.run()
    assert_signed(c, "s", (1, 2), digest)
    for p in (1, 2):
        store = c.stores[p]
        # one commit holds the ceremony's start, its round sign-1 (σ_i) and the Consumed mark
        (batch,) = [b for b in batches[p] if any(type(e).__name__ == "Consumed" for e in b)]
        assert [type(e).__name__ for e in batch] == ["Started", "RoundAdvanced", "Consumed"]
        assert (batch[1].phase, batch[1].round) == ("sign", 1)
        # and in the stored log they sit next to each other
        evs = events_of(store)
        (consumed_id,) = [i for i, e in evs if type(e).__name__ == "Consumed"]
        (sigma_id,) = [i for i, e in evs if type(e).__name__ == "RoundAdvanced" and e.phase == "sign"]
        assert consumed_id == sigma_id + 1
        assert store.get(PresignatureRecord, presig_id="p").consumed_by == "s"
        assert store.vault.get("presig:p") is None
        assert c.rt(p).available_presignatures(KEY_ID, (1, 2)) == []
    c.start("s2", "sign", (1, 2), {"key_id": KEY_ID, "digest": digest_of("twice"), "presig_id": "p"})
    c.run()
    assert {p: o["status"] for p, o in c.outcomes("s2").items()} == {1: "rejected", 2: "rejected"}


# -- secrets ------------------------------------------------------------------------------


def test_reprs_hide_secrets(sqlite_cluster):
    c = sqlite_cluster
    c.broker.down.add(2)
    c.start("s", "sign", (1, 2), {"key_id": KEY_ID, "digest": digest_of("repr")})
    c.run()  # party 1 holds a live ceremony key
    rt, store = c.rt(1), c.stores[1]
    rec = store.get(KeyShareRecord, key_id=KEY_ID)
    share, aux = unpackb(rec.share), unpackb(rec.aux)
    dek = store.vault.get("ceremony:s")
    assert dek is not None
    secrets = [store.kek, dek, c.ids[1].sign_secret, c.ids[1].box_secret, rec.share[:32], rec.aux[:32]]
    texts = [f(x) for f in (repr, str) for x in (rt, store, store.vault, rec, share, rt.identity)]
    for text in texts:
        for secret in secrets:
            assert secret.hex() not in text and secret.hex().upper() not in text and repr(secret)[2:-1] not in text
        for number in (share.x, aux.sk.p, aux.sk.q):
            assert str(number) not in text and f"{number:x}" not in text


# -- start rejections ---------------------------------------------------------------------


def test_start_rejections(cluster):
    c = cluster
    seen: list[tuple[int, Any]] = []
    c.broker.on_step = lambda p, step: seen.append((p, step))
    events_before = {p: len(events_of(c.stores[p])) for p in PARTIES}

    def started(execution, coordinator=0, **kw):
        from engine.ceremony.runtime import Command, start_envelope

        cmd = Command(kw.get("kind", "sign"), kw.get("parties", (1, 2)),
                      kw.get("params", {"key_id": KEY_ID, "digest": digest_of(execution)}), kw.get("level", "dev-2048"),
                      60.0)
        out = start_envelope(c.ids[coordinator], c.roster, execution, cmd)
        c.broker.publish(Outgoing(out.subject, out.data, out.msg_id + kw.get("suffix", "")))
        seen.clear()
        c.run()
        return {p: st for p, st in seen if st.rejected or st.outgoing or st.reached}

    cases = {
        "unknown-key": (dict(params={"key_id": "nope", "digest": digest_of("x")}), (1, 2),
                        "bad command: unknown key id"),
        "not-coordinator": (dict(coordinator=1), (2, 3), "only the coordinator may start a ceremony"),
        # the coordinator republished after the broker's duplicate window: a new message id
        KEY_ID: (dict(kind="keygen", parties=PARTIES, params={"threshold": 2}, suffix="/retry"), (1, 2, 3),
                 "execution id already used"),
        "wrong-level": (dict(level="cggmp21-128"), (1, 2),
                        "bad command: security level 'cggmp21-128' differs from this deployment's 'dev-2048'"),
    }
    for execution, (kw, who, reason) in cases.items():
        steps = started(execution, **kw)
        assert sorted(steps) == list(who), (execution, steps)
        for p, step in steps.items():
            assert step.rejected == reason
            assert rejections(c.stores[p])[-1] == reason
            if execution == KEY_ID:
                # a reused id gets no outcome of its own: it would share the msg id of (and
                # contradict) the real outcome of the ceremony that already ran under that id
                assert step.outgoing == []
                continue
            (out,) = step.outgoing
            assert out.subject == f"conclave.out.{execution}.{p}"
            body = msgpack.unpackb(open_envelope(out.data, c.roster, c.ids[0]).body)
            assert body == {"status": "rejected", "reason": reason}
        outs = c.outcomes(execution)
        if execution == KEY_ID:
            assert {o["status"] for o in outs.values()} == {"completed"}
        else:
            assert sorted(outs) == list(who) and {o["status"] for o in outs.values()} == {"rejected"}
            for p in PARTIES:
                assert c.stores[p].get(Ceremony, execution=execution) is None
    assert c.stores[1].get(Ceremony, execution=KEY_ID).status == "completed"  # untouched
    for p in PARTIES:
        want = sum(p in who for _, who, _ in cases.values())
        assert len(events_of(c.stores[p])) == events_before[p] + want
        assert c.rt(p).status()["rejected_messages"] == want
        assert c.rt(p).status()["ceremonies"] == []


def test_every_envelope_carries_the_coordinators_trace_context(cluster):
    """The trace context of the start command rides in every envelope the parties send for it."""
    c = cluster
    parent = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    out = start_envelope(c.ids[COORDINATOR], c.roster, "traced",
                         Command("sign", (1, 3), {"key_id": KEY_ID, "digest": digest_of("traced")}, LEVEL, 60.0),
                         trace=parent)
    c.broker.publish(out)
    c.run()
    sent = [o for o in c.broker.published if o.msg_id.startswith("traced:")]
    assert {o.msg_id.split(":")[1] for o in sent} >= {"presign-1", "presign-2", "presign-3", "sign-1", "out"}
    assert all(peek(o.data).trace == parent for o in sent)


def test_broadcasts_that_change_nothing_are_passed_over_before_any_crypto(cluster):
    """Echoes of a party's own broadcasts and broadcasts of ceremonies it is not in are dropped on their
    subject and msg id alone (garbage bodies prove no envelope was opened); nothing else is."""
    c = cluster
    c.sign("s", (1, 3), digest_of("pass over"))
    garbage = b"\x00not an envelope"
    seq = max(seq for seq, _, _ in c.broker.log) + 100
    n2, n1 = len(events_of(c.stores[2])), len(events_of(c.stores[1]))

    # party 2 is not a signer of "s": every broadcast of it is passed over, without a record
    step = c.rt(2).handle(garbage, mpc_subject("s", "sign-1", None), seq, msg_id="s:sign-1:1:all")
    assert step == type(step)() and len(events_of(c.stores[2])) == n2
    # party 1's own broadcast, echoed back: passed over
    step = c.rt(1).handle(garbage, mpc_subject("s", "sign-1", None), seq + 1, msg_id="s:sign-1:1:all")
    assert step.rejected is None and len(events_of(c.stores[1])) == n1
    # the same body claiming party 3 as sender is opened, and rejected on the record
    step = c.rt(1).handle(garbage, mpc_subject("s", "sign-1", None), seq + 2, msg_id="s:sign-1:3:all")
    assert step.rejected and len(events_of(c.stores[1])) > n1
    # a start is never passed over, whatever its msg id says
    step = c.rt(2).handle(garbage, mpc_subject("t", "start", None), seq + 3, msg_id="t:start:2:all")
    assert step.rejected and len(events_of(c.stores[2])) > n2


def test_spends_older_than_the_velocity_window_are_dropped_for_good(cluster):
    from engine.policy import VELOCITY_WINDOW, Spend

    rt, now = cluster.rt(1), 2_000_000.0
    rt._spends = {"old": Spend("ETH", 1, now - VELOCITY_WINDOW - 1), "r1": Spend("ETH", 2, now - 10),
                  "me": Spend("ETH", 3, now - 5)}
    assert rt._recent_spends("me", now) == [Spend("ETH", 2, now - 10)]
    assert list(rt._spends) == ["r1", "me"]


def test_status_counts_follow_presignatures_and_ceremonies(cluster):
    c = cluster
    before = c.rt(1).status()
    c.start("p", "presign", (1, 2), {"key_id": KEY_ID})
    c.run()
    made = c.rt(1).status()
    c.sign("counted", (1, 2), digest_of("counted"), presig_id="p")
    after = c.rt(1).status()
    pool_before = before["presignatures"].get(KEY_ID, {"available": 0, "consumed": 0})
    assert made["presignatures"][KEY_ID] == {"available": pool_before["available"] + 1,
                                             "consumed": pool_before["consumed"]}
    assert after["presignatures"][KEY_ID] == {"available": pool_before["available"],
                                              "consumed": pool_before["consumed"] + 1}
    assert after["finished"]["completed"] == before["finished"]["completed"] + 2
    # the counts agree with a recount from the index they summarise
    recount = sum(1 for r in c.rt(1)._presigs.values() if r["key_id"] == KEY_ID and r["consumed"])
    assert after["presignatures"][KEY_ID]["consumed"] == recount
