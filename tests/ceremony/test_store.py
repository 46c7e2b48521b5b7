"""PartyStore contract: the same tests on every backend (SQLite, PostgreSQL, memory).

In the style of eventsourcing's own recorder tests: :class:`StoreContract` holds
the tests and a ``make_store(party, kek)`` hook; each ``Test*Store`` subclass
provides a backend. ``make_store`` called twice in one test opens the *same*
storage again (a restart), except for the memory backend, which cannot be
reopened (``reopenable = False``).
"""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path

import pytest

from engine.ceremony.store import (
    AesGcmCipher,
    Ceremony,
    IntegrityError,
    KeyShareRecord,
    PartyStore,
    PresignatureRecord,
    Rejection,
    StoreConfig,
    StoreError,
    Vault,
)

PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


def new_ceremony(execution: str = "ex1", participants=(1, 2, 3)) -> Ceremony:
    return Ceremony(execution=execution, kind="sign", params={"key_id": "k", "digest": b"\x01" * 32},
                    participants=list(participants), command_seq=1, round_timeout=30.0, deadline=1000.0)


def event_names(events) -> list[str]:
    return [type(e).__name__ for e in events]


def key_traces(key: bytes) -> list[str]:
    return [key.hex(), key.hex().upper(), base64.b64encode(key).decode(), repr(key)[2:-1]]


class StoreContract:
    reopenable = True

    # -- hooks -------------------------------------------------------------
    def make_store(self, party: int, kek: bytes) -> PartyStore:
        raise NotImplementedError

    @pytest.fixture(autouse=True)
    def _stores(self):
        self.opened: list[PartyStore] = []
        self.kek = os.urandom(32)
        yield
        for st in self.opened:
            try:
                st.close()
            except Exception:
                pass

    def open(self, party: int = 1, kek: bytes | None = None) -> PartyStore:
        st = self.make_store(party, self.kek if kek is None else kek)
        self.opened.append(st)
        return st

    def reopen(self, party: int = 1, kek: bytes | None = None) -> PartyStore:
        assert self.reopenable, "this backend has nothing to reopen"
        return self.open(party, kek)

    # -- the ceremony fold ------------------------------------------------------
    def test_ceremony_round_trip_completed(self):
        st = self.open()
        c = new_ceremony()
        st.save(c, seq=1)
        c.accept(seq=2, phase="presign", round=1, sender=2, kind="b", msg_id="ex1:presign-1:2:all",
                 digest=b"\x02" * 32, sealed_msg=b"sealed-2")
        c.reject(seq=3, reason="duplicate message", sender=3, msg_id="ex1:presign-1:3:all", digest=b"\x03" * 32)
        c.advance(phase="presign", round=2, sealed_state=b"state-2", outbox=[["subj", "id-2", b"data-2"]],
                  expect=[[2, "b"], [3, "b"], [3, "d"]], deadline=2000.0)
        st.save(c, seq=4)
        c.resume(resent=1, pid=1234)
        c.accept(seq=5, phase="presign", round=2, sender=2, kind="b", msg_id="ex1:presign-2:2:all",
                 digest=b"\x05" * 32, sealed_msg=b"sealed-5")
        st.save(c, seq=5)

        got = st.get(Ceremony, execution="ex1")
        assert got.id == c.id and got.version == c.version
        assert (got.status, got.phase, got.round, got.deadline) == ("running", "presign", 2, 2000.0)
        assert got.outbox == [["subj", "id-2", b"data-2"]]
        assert got.sealed_state == b"state-2"
        assert got.participants == [1, 2, 3] and got.params == {"key_id": "k", "digest": b"\x01" * 32}
        assert got.rejected == 1
        assert got.has("presign", 1, 2, "b") == [b"\x02" * 32, b"sealed-2"]
        assert got.missing() == [3]  # 2 delivered its round-2 broadcast; 3 owes both
        assert b"\x05" * 32 in got.seen_digests

        got.complete(result={"r": "01", "s": "02"}, outcome=b"outcome", outbox=[["out", "id-out", b"o"]])
        st.save(got, seq=6)
        done = st.get(Ceremony, execution="ex1")
        assert done.status == "completed" and done.finished
        assert done.result == {"r": "01", "s": "02"} and done.outcome == b"outcome"
        assert done.outbox == [["out", "id-out", b"o"]] and done.sealed_state is None
        assert event_names(st.timeline(Ceremony, execution="ex1")) == [
            "Started", "MessageAccepted", "MessageRejected", "RoundAdvanced", "Resumed", "MessageAccepted",
            "Completed"]

    def test_ceremony_round_trip_aborted(self):
        st = self.open()
        c = new_ceremony("ex2")
        c.advance(phase="sign", round=1, sealed_state=b"s", outbox=[], expect=[[3, "b"]], deadline=5.0)
        c.abort(reason="timed out", culprits=[3], phase="sign", round=1, attributable=True, reported_by=1,
                outcome=b"o", outbox=[["a", "ex2:abort:1:all", b"n"], ["b", "ex2:out:1:all", b"o"]])
        st.save(c)
        got = st.get(Ceremony, execution="ex2")
        assert (got.status, got.abort_reason, got.culprits) == ("aborted", "timed out", [3])
        assert got.outbox == [["a", "ex2:abort:1:all", b"n"], ["b", "ex2:out:1:all", b"o"]]
        assert got.sealed_state is None and got.finished
        assert event_names(st.timeline(Ceremony, execution="ex2")) == ["Started", "RoundAdvanced", "Aborted"]
        assert st.get(Ceremony, execution="nope") is None

    def test_other_aggregates_round_trip(self):
        st = self.open()
        k = KeyShareRecord(key_id="k", execution="k", level="dev-2048", threshold=2, parties=[1, 2, 3],
                           public_key="02ab", share=b"share", aux=b"aux")
        p = PresignatureRecord(presig_id="p", key_id="k", signers=[1, 2], sealed=b"sealed")
        r = Rejection(seq=7, subject="conclave.mpc.x.y.all", reason="garbage", sender=None, digest=b"d" * 32, size=3)
        st.save(k, p, r, seq=7)
        p.consume(execution="s1")
        st.save(p)
        assert st.get(KeyShareRecord, key_id="k").share == b"share"
        assert st.get(PresignatureRecord, presig_id="p").consumed_by == "s1"
        assert st.app.repository.get(r.id).reason == "garbage"

    # -- tracking ---------------------------------------------------------------
    def test_tracking(self):
        st = self.open()
        assert st.last_seq() is None and not st.processed(1)
        st.save(new_ceremony(), seq=5)
        assert st.processed(5) and st.processed(4)
        assert not st.processed(6)
        assert st.last_seq() == 5
        st.save(seq=9)  # a message that changed nothing still moves the position
        assert st.last_seq() == 9 and st.processed(9) and not st.processed(10)

    @pytest.mark.parametrize("stale", [5, 3])
    def test_events_and_tracking_commit_atomically(self, stale):
        st = self.open()
        c = new_ceremony()
        st.save(c, seq=5)
        before = len(list(st.all_events()))
        c.accept(seq=stale, phase="sign", round=1, sender=2, kind="b", msg_id="m", digest=b"x" * 32,
                 sealed_msg=b"s")
        with pytest.raises(IntegrityError):
            st.save(c, seq=stale)
        assert len(list(st.all_events())) == before  # no event without its tracking row
        assert st.get(Ceremony, execution="ex1").version == 1
        assert st.last_seq() == 5
        # the same aggregate reloaded commits normally with the next sequence
        again = st.get(Ceremony, execution="ex1")
        again.accept(seq=6, phase="sign", round=1, sender=2, kind="b", msg_id="m", digest=b"x" * 32,
                     sealed_msg=b"s")
        st.save(again, seq=6)
        assert len(list(st.all_events())) == before + 1 and st.last_seq() == 6

    def test_all_events_in_commit_order(self):
        st = self.open()
        a, b = new_ceremony("a"), new_ceremony("b")
        st.save(a, seq=1)
        st.save(b, seq=2)
        a.resume(resent=0, pid=1)
        b.resume(resent=0, pid=1)
        st.save(b, a, seq=3)
        k = KeyShareRecord(key_id="k", execution="a", level="dev-2048", threshold=2, parties=[1, 2],
                           public_key="02", share=b"s", aux=b"x")
        st.save(k)
        want = [(a.id, 1), (b.id, 1), (b.id, 2), (a.id, 2), (k.id, 1)]
        for batch in (500, 2, 1):
            evs = list(st.all_events(batch=batch))
            assert [(e.originator_id, e.originator_version) for e in evs] == want
        assert event_names(st.all_events()) == ["Started", "Started", "Resumed", "Resumed", "Created"]

    # -- vault ------------------------------------------------------------------
    def test_vault_create_get_destroy(self):
        st = self.open()
        v = st.vault
        assert v.get("ceremony:x") is None
        dek = v.create("ceremony:x")
        assert len(dek) == 32
        assert v.create("ceremony:x") == dek  # idempotent
        assert v.get("ceremony:x") == dek
        other = v.create("ceremony:y")
        assert other != dek
        v.destroy("ceremony:x")
        assert v.get("ceremony:x") is None
        v.destroy("ceremony:x")  # destroying twice is fine
        assert v.get("ceremony:y") == other
        assert v.create("ceremony:x") != dek  # a destroyed key never comes back

    def test_vault_survives_reopen(self):
        st = self.open()
        dek = st.vault.create("presig:p")
        st.vault.create("gone")
        st.vault.destroy("gone")
        st.close()
        again = self.reopen()
        assert again.vault.get("presig:p") == dek
        assert again.vault.get("gone") is None

    def test_vault_entries_need_their_kek(self):
        st = self.open()
        st.vault.create("ceremony:x")
        st.close()
        other_kek = os.urandom(32)
        stranger = self.reopen(kek=other_kek)
        with pytest.raises(StoreError) as info:
            stranger.vault.get("ceremony:x")
        for trace in key_traces(self.kek) + key_traces(other_kek):
            assert trace not in str(info.value)

    def test_vault_stores_are_per_party(self):
        one, two = self.open(1), self.open(2)
        dek = one.vault.create("ceremony:x")
        assert two.vault.get("ceremony:x") is None
        assert two.vault.create("ceremony:x") != dek
        assert one.vault.get("ceremony:x") == dek

    # -- encryption at rest ----------------------------------------------------------
    def test_wrong_kek_cannot_read_events(self):
        st = self.open()
        c = new_ceremony()
        st.save(c, seq=1)
        st.close()
        wrong = os.urandom(32)
        other = self.reopen(kek=wrong)
        for read in (lambda: list(other.all_events()), lambda: other.get(Ceremony, execution="ex1")):
            with pytest.raises(StoreError) as info:
                read()
            msg = str(info.value) + repr(info.value)
            assert "key-encryption key" in msg
            for trace in key_traces(self.kek) + key_traces(wrong):
                assert trace not in msg
        assert other.last_seq() == 1  # positions are not secret

    def test_reprs_hide_keys(self):
        st = self.open()
        dek = st.vault.create("ceremony:x")
        texts = [repr(st), str(st), repr(st.vault), str(st.vault), repr(st.app.mapper.cipher)]
        for text in texts:
            for trace in key_traces(self.kek) + key_traces(dek):
                assert trace not in text
        with pytest.raises(StoreError):
            AesGcmCipher({"CIPHER_KEY": base64.b64encode(b"short").decode()})


class TestMemoryStore(StoreContract):
    reopenable = False
    # nothing persists in memory, so there is nothing to reopen, with or without the right key
    test_vault_survives_reopen = None
    test_wrong_kek_cannot_read_events = None

    def make_store(self, party, kek):
        return PartyStore(party, StoreConfig("memory"), kek)

    def test_vault_entries_need_their_kek(self):
        # no storage to reopen: hand the wrapped entries to a vault with another KEK
        st = self.open()
        st.vault.create("ceremony:x")
        other_kek = os.urandom(32)
        stranger = Vault(other_kek)
        stranger._mem = dict(st.vault._mem)
        with pytest.raises(StoreError) as info:
            stranger.get("ceremony:x")
        for trace in key_traces(self.kek) + key_traces(other_kek):
            assert trace not in str(info.value)


class TestSQLiteStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path):
        self.dir = tmp_path

    def path(self, party: int) -> Path:
        return self.dir / f"party{party}.sqlite"

    def make_store(self, party, kek):
        return PartyStore(party, StoreConfig("sqlite", path=str(self.path(party))), kek)

    def test_no_plaintext_on_disk(self):
        marker = b"CONCLAVE-SECRET-SHARE-MARKER-32B"
        assert len(marker) == 32
        st = self.open()
        rec = KeyShareRecord(key_id="k", execution="k", level="dev-2048", threshold=2, parties=[1, 2, 3],
                             public_key="02ab", share=b"prefix" + marker + b"suffix", aux=marker)
        st.save(rec, seq=1)
        dek = st.vault.create("ceremony:x")
        assert st.get(KeyShareRecord, key_id="k").share == b"prefix" + marker + b"suffix"

        def raw() -> bytes:
            files = sorted(self.dir.glob("party1.sqlite*"))
            assert {f.name for f in files} >= {"party1.sqlite", "party1.sqlite.vault"}
            return b"".join(f.read_bytes() for f in files)

        for blob in (raw(), None):  # while open (incl. -wal files), then after close
            if blob is None:
                st.close()
                blob = raw()
            assert marker not in blob and marker.hex().encode() not in blob
            assert dek not in blob and dek.hex().encode() not in blob
            assert self.kek not in blob

    def test_destroyed_vault_key_is_gone_from_disk(self):
        st = self.open()
        dek = st.vault.create("ceremony:x")
        wrapped = st.vault._db.execute("SELECT wrapped FROM vault").fetchone()[0]
        st.vault.destroy("ceremony:x")
        st.close()
        blob = b"".join(f.read_bytes() for f in self.dir.glob("party1.sqlite.vault*"))
        assert wrapped not in blob and dek not in blob  # secure_delete overwrote it


class TestPostgresStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _schema(self):
        try:
            import psycopg

            admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
        except Exception as exc:
            pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432: {exc}")
        self.schema = f"conclave_test_{uuid.uuid4().hex[:16]}"
        admin.execute(f'CREATE SCHEMA "{self.schema}"')
        self.admin = admin
        try:
            yield
        finally:
            for st in self.opened:  # connections first, or DROP waits on them
                try:
                    st.close()
                except Exception:
                    pass
            admin.execute(f'DROP SCHEMA "{self.schema}" CASCADE')
            admin.close()

    def make_store(self, party, kek, schema=None):
        return PartyStore(party, StoreConfig("postgres", dsn=PG_DSN, schema=schema or self.schema), kek)

    def tables(self, schema: str) -> set[str]:
        rows = self.admin.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                                  (schema,)).fetchall()
        return {r[0] for r in rows}

    def test_everything_lives_in_the_schema(self):
        one, two = self.open(1), self.open(2)
        one.save(new_ceremony(), seq=1)
        one.vault.create("ceremony:x")
        two.vault.create("ceremony:x")
        assert {"party1_events", "party1_tracking", "party1_vault", "party2_vault"} <= self.tables(self.schema)
        leaked = self.admin.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_name LIKE %s",
            (f"%{self.schema}%",)).fetchall()
        assert leaked == []

    def test_schemas_do_not_share_vaults_or_events(self):
        other = f"conclave_test_{uuid.uuid4().hex[:16]}"
        self.admin.execute(f'CREATE SCHEMA "{other}"')
        try:
            mine = self.open(1)
            theirs = self.make_store(1, self.kek, schema=other)
            try:
                dek = mine.vault.create("ceremony:x")
                mine.save(new_ceremony(), seq=4)
                assert theirs.vault.get("ceremony:x") is None
                assert theirs.vault.create("ceremony:x") != dek
                assert theirs.get(Ceremony, execution="ex1") is None and theirs.last_seq() is None
                assert mine.vault.get("ceremony:x") == dek
            finally:
                theirs.close()
        finally:
            self.admin.execute(f'DROP SCHEMA "{other}" CASCADE')

    def test_long_schema_names_do_not_collide(self):
        # PostgreSQL truncates identifiers to 63 bytes: the vault name must not include the schema
        other = "conclave_test_" + uuid.uuid4().hex + "x" * (63 - 14 - 32)
        assert len(other) == 63
        self.admin.execute(f'CREATE SCHEMA "{other}"')
        try:
            one = self.make_store(1, self.kek, schema=other)
            two = self.make_store(2, self.kek, schema=other)
            try:
                dek = one.vault.create("ceremony:x")
                assert two.vault.get("ceremony:x") is None
                assert two.vault.create("ceremony:x") != dek
            finally:
                one.close()
                two.close()
        finally:
            self.admin.execute(f'DROP SCHEMA "{other}" CASCADE')

    def test_missing_schema_is_a_store_error(self):
        with pytest.raises(StoreError) as info:
            self.make_store(1, self.kek, schema=f"conclave_test_absent_{uuid.uuid4().hex[:8]}")
        for trace in key_traces(self.kek):
            assert trace not in str(info.value)
