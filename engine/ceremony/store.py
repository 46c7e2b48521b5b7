"""One party's event store: what it accepted, what it computed, what it sent.

Built on ``eventsourcing``. Three aggregates, one fold each:

* :class:`Ceremony`: Started, MessageAccepted, MessageRejected, RoundAdvanced,
  Completed, Aborted. Replaying its events gives the round a party is in, the
  messages it holds for that round and the exact bytes it already sent.
* :class:`KeyShareRecord`: the long-lived share and auxiliary info of one key.
* :class:`PresignatureRecord`: Created, then at most one Consumed.

Messages that cannot be tied to a ceremony land in a :class:`Rejection`.

At rest, every stored event is msgpack (:class:`MsgpackTranscoder`) sealed with
AES-GCM under the party's key-encryption key (:class:`AesGcmCipher`). Ephemeral
ceremony secrets (round states, received shares, presignature nonces) get a
second layer: a per-ceremony data key kept in a :class:`Vault`. Deleting that
key when the ceremony ends destroys those secrets for good, even though the
event log itself is append-only.

SQLite (one file per party) is the default; PostgreSQL and an in-memory store
are chosen by :class:`StoreConfig`.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import Cipher, IntegrityError, MapperDeserialisationError, Tracking, Transcoder

__all__ = [
    "StoreConfig",
    "PartyStore",
    "Ceremony",
    "KeyShareRecord",
    "PresignatureRecord",
    "Rejection",
    "WithdrawalRecord",
    "MsgpackTranscoder",
    "AesGcmCipher",
    "Vault",
    "StoreError",
    "load_kek",
]

_NS = uuid.UUID("5b1f0c8e-3c63-4a8e-9a55-0c0a7c1a9e11")
_EXT_UUID = 40
_EXT_DATETIME = 41


class StoreError(RuntimeError):
    """The store cannot be opened or read (wrong key, corrupt file, bad config)."""


# -- serialisation and encryption at rest -------------------------------------


def _default(obj: Any) -> Any:
    if isinstance(obj, uuid.UUID):
        return msgpack.ExtType(_EXT_UUID, obj.bytes)
    if isinstance(obj, dt.datetime):
        return msgpack.ExtType(_EXT_DATETIME, obj.isoformat().encode())
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot store a {type(obj).__name__} in an event")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_UUID:
        return uuid.UUID(bytes=data)
    if code == _EXT_DATETIME:
        return dt.datetime.fromisoformat(data.decode())
    return msgpack.ExtType(code, data)


class MsgpackTranscoder(Transcoder):
    """Events are dicts of plain values; msgpack keeps bytes as bytes (JSON cannot)."""

    def encode(self, obj: Any) -> bytes:
        return msgpack.packb(obj, default=_default, use_bin_type=True)

    def decode(self, data: bytes) -> Any:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


class AesGcmCipher(Cipher):
    """AES-256-GCM for every stored event, keyed by the party's KEK (env ``CIPHER_KEY``, base64)."""

    def __init__(self, environment: Any) -> None:
        encoded = environment.get("CIPHER_KEY")
        if not encoded:
            raise StoreError("no key-encryption key configured for the event store")
        key = base64.b64decode(encoded)
        if len(key) != 32:
            raise StoreError("the key-encryption key must be 32 bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "AesGcmCipher(<key hidden>)"

    def encrypt(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, b"conclave/event")

    def decrypt(self, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(ciphertext[:12], ciphertext[12:], b"conclave/event")
        except InvalidTag:
            raise StoreError("stored event fails authentication: wrong key-encryption key or tampered store") from None


def _unreadable(exc: MapperDeserialisationError) -> StoreError:
    """eventsourcing wraps whatever the cipher raised; readers get a StoreError, as documented."""
    if isinstance(exc.__cause__, StoreError):
        return StoreError(str(exc.__cause__))
    return StoreError("stored event cannot be decoded: corrupt store or incompatible version")


def load_kek(path: os.PathLike[str] | str, *, create: bool = False) -> bytes:
    """Read (or create, mode 0600) a 32-byte key-encryption key file."""
    p = os.fspath(path)
    if create and not os.path.exists(p):
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
    with open(p, "rb") as f:
        key = f.read()
    if len(key) != 32:
        raise StoreError(f"key file {p} does not hold a 32-byte key")
    return key


# -- the vault of ephemeral data keys ------------------------------------------


class Vault:
    """Data keys for ceremony secrets, wrapped under the KEK; deleting one destroys its secrets.

    Backed by a small table next to the events (SQLite file, PostgreSQL table)
    or by a dict. Keys are written before any event that depends on them.
    """

    def __init__(self, kek: bytes, *, sqlite_path: str | None = None, postgres_dsn: str | None = None,
                 table: str = "conclave_vault", schema: str | None = None) -> None:
        self._aead = AESGCM(kek)
        self._lock = threading.Lock()
        self._mem: dict[str, bytes] | None = None
        self._pg = None
        self._table = table
        self._sql: dict[str, Any] = {}
        if sqlite_path is not None:
            self._db = sqlite3.connect(sqlite_path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA secure_delete=ON")  # deleted keys are overwritten on disk
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS vault (id TEXT PRIMARY KEY, wrapped BLOB NOT NULL)")
        elif postgres_dsn is not None:
            import psycopg
            from psycopg import sql

            # the table lives in the deployment's schema, next to its events, so
            # schemas never share (or leave behind) vault entries
            name = sql.Identifier(schema, table) if schema else sql.Identifier(table)
            self._sql = {
                "insert": sql.SQL("INSERT INTO {} (id, wrapped) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING").format(name),
                "select": sql.SQL("SELECT wrapped FROM {} WHERE id = %s").format(name),
                "delete": sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(name),
                "ids": sql.SQL("SELECT id FROM {}").format(name),
            }
            self._pg = psycopg.connect(postgres_dsn, autocommit=True)
            self._pg.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} (id TEXT PRIMARY KEY, wrapped BYTEA NOT NULL)").format(name))
        else:
            self._mem = {}

    def __repr__(self) -> str:
        return "Vault(<keys hidden>)"

    def _wrap(self, key_id: str, dek: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, dek, key_id.encode())

    def _unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:12], wrapped[12:], key_id.encode())
        except InvalidTag:
            raise StoreError("vault entry fails authentication") from None

    def create(self, key_id: str) -> bytes:
        """Return the data key for ``key_id``, creating it if needed."""
        existing = self.get(key_id)
        if existing is not None:
            return existing
        dek = AESGCM.generate_key(bit_length=256)
        wrapped = self._wrap(key_id, dek)
        with self._lock:
            if self._mem is not None:
                self._mem.setdefault(key_id, wrapped)
            elif self._pg is not None:
                self._pg.execute(self._sql["insert"], (key_id, wrapped))
            else:
                self._db.execute("INSERT OR IGNORE INTO vault (id, wrapped) VALUES (?, ?)", (key_id, wrapped))
        return self.get(key_id)  # type: ignore[return-value]

    def get(self, key_id: str) -> bytes | None:
        with self._lock:
            if self._mem is not None:
                wrapped = self._mem.get(key_id)
            elif self._pg is not None:
                row = self._pg.execute(self._sql["select"], (key_id,)).fetchone()
                wrapped = bytes(row[0]) if row else None
            else:
                row = self._db.execute("SELECT wrapped FROM vault WHERE id = ?", (key_id,)).fetchone()
                wrapped = row[0] if row else None
        return None if wrapped is None else self._unwrap(key_id, wrapped)

    def destroy(self, *key_ids: str) -> None:
        """Delete these keys for good, in one transaction (one disk sync, however many)."""
        if not key_ids:
            return
        with self._lock:
            if self._mem is not None:
                for key_id in key_ids:
                    self._mem.pop(key_id, None)
            elif self._pg is not None:
                self._pg.execute(self._sql["delete"], (list(key_ids),))
            else:
                self._db.execute(f"DELETE FROM vault WHERE id IN ({','.join('?' * len(key_ids))})", key_ids)

    def ids(self) -> list[str]:
        """The ids of every key still held."""
        with self._lock:
            if self._mem is not None:
                return list(self._mem)
            if self._pg is not None:
                rows = self._pg.execute(self._sql["ids"]).fetchall()
            else:
                rows = self._db.execute("SELECT id FROM vault").fetchall()
        return [r[0] for r in rows]

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
        elif self._mem is None:
            self._db.close()


def seal_secret(dek: bytes, label: str, plaintext: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(dek).encrypt(nonce, plaintext, label.encode())


def open_secret(dek: bytes, label: str, sealed: bytes) -> bytes:
    try:
        return AESGCM(dek).decrypt(sealed[:12], sealed[12:], label.encode())
    except InvalidTag:
        raise StoreError(f"sealed secret {label!r} fails authentication") from None


# -- aggregates -----------------------------------------------------------------


class Ceremony(Aggregate):
    """One execution (keygen, presign or sign) as this party saw it."""

    @staticmethod
    def create_id(execution: str, **_: Any) -> uuid.UUID:
        return uuid.uuid5(_NS, "ceremony:" + execution)

    @event("Started")
    def __init__(self, execution: str, kind: str, params: dict, participants: list[int],
                 command_seq: int | None, round_timeout: float, deadline: float,
                 trace: dict | None = None) -> None:
        self.execution = execution
        self.trace = dict(trace or {})  # W3C trace context from the start command
        self.kind = kind
        self.params = params
        self.participants = list(participants)
        self.round_timeout = round_timeout
        self.deadline = deadline
        self.status = "running"
        self.phase: str | None = None
        self.round = 0
        self.sealed_state: bytes | None = None
        self.outbox: list[list] = []  # [subject, msg_id, data]; the bytes already sent for this round
        self.expect: list[list] = []  # [sender, kind] still owed to us for this round
        self.accepted: dict[str, list] = {}  # key "phase:round:sender:kind" -> [digest, sealed Msg bytes]
        self.seen_digests: set[bytes] = set()
        self.rejected = 0
        self.result: dict | None = None
        self.outcome: bytes | None = None
        self.abort_reason: str | None = None
        self.culprits: list[int] = []

    @event("MessageAccepted")
    def accept(self, seq: int | None, phase: str, round: int, sender: int, kind: str,
               msg_id: str, digest: bytes, sealed_msg: bytes) -> None:
        self.accepted[f"{phase}:{round}:{sender}:{kind}"] = [digest, sealed_msg]
        self.seen_digests.add(digest)

    @event("MessageRejected")
    def reject(self, seq: int | None, reason: str, sender: int | None, msg_id: str | None, digest: bytes) -> None:
        self.rejected += 1

    @event("RoundAdvanced")
    def advance(self, phase: str, round: int, sealed_state: bytes, outbox: list[list], expect: list[list],
                deadline: float) -> None:
        self.phase = phase
        self.round = round
        self.sealed_state = sealed_state
        self.outbox = outbox
        self.expect = expect
        self.deadline = deadline

    @event("Resumed")
    def resume(self, resent: int, pid: int) -> None:
        """The party restarted while this ceremony ran and re-sent its recorded envelopes."""

    @event("Completed")
    def complete(self, result: dict, outcome: bytes, outbox: list[list]) -> None:
        self.status = "completed"
        self.result = result
        self.outcome = outcome
        self.outbox = outbox
        self.sealed_state = None

    @event("Aborted")
    def abort(self, reason: str, culprits: list[int], phase: str | None, round: int, attributable: bool,
              reported_by: int, outcome: bytes, outbox: list[list]) -> None:
        self.status = "aborted"
        self.abort_reason = reason
        self.culprits = list(culprits)
        self.outcome = outcome
        self.outbox = outbox
        self.sealed_state = None

    # -- queries --
    def has(self, phase: str, round_: int, sender: int, kind: str) -> list | None:
        return self.accepted.get(f"{phase}:{round_}:{sender}:{kind}")

    def missing(self) -> list[int]:
        if self.phase is None:
            return []
        return sorted({s for s, k in self.expect if self.has(self.phase, self.round, s, k) is None})

    @property
    def finished(self) -> bool:
        return self.status != "running"


class KeyShareRecord(Aggregate):
    @staticmethod
    def create_id(key_id: str, **_: Any) -> uuid.UUID:
        return uuid.uuid5(_NS, "key:" + key_id)

    @event("Created")
    def __init__(self, key_id: str, execution: str, level: str, threshold: int, parties: list[int],
                 public_key: str, share: bytes, aux: bytes) -> None:
        self.key_id = key_id
        self.execution = execution
        self.level = level
        self.threshold = threshold
        self.parties = list(parties)
        self.public_key = public_key
        self.share = share  # packed KeyShare; the whole event is encrypted at rest
        self.aux = aux  # packed AuxInfo (holds the Paillier factors)

    def __repr__(self) -> str:
        return f"KeyShareRecord(key_id={self.key_id!r}, <secrets hidden>)"


class PresignatureRecord(Aggregate):
    @staticmethod
    def create_id(presig_id: str, **_: Any) -> uuid.UUID:
        return uuid.uuid5(_NS, "presig:" + presig_id)

    @event("Created")
    def __init__(self, presig_id: str, key_id: str, signers: list[int], sealed: bytes) -> None:
        self.presig_id = presig_id
        self.key_id = key_id
        self.signers = list(signers)
        self.sealed = sealed  # packed Presignature under the vault key "presig:<id>"
        self.consumed_by: str | None = None

    @event("Consumed")
    def consume(self, execution: str) -> None:
        self.consumed_by = execution

    def __repr__(self) -> str:
        return f"PresignatureRecord(presig_id={self.presig_id!r}, consumed_by={self.consumed_by!r})"


class WithdrawalRecord(Aggregate):
    """What this party decided, and signed, for one withdrawal request id."""

    @staticmethod
    def create_id(request_id: str, **_: Any) -> uuid.UUID:
        return uuid.uuid5(_NS, "withdrawal:" + request_id)

    @event("Received")
    def __init__(self, request_id: str, key_id: str, request_hash: bytes) -> None:
        self.request_id = request_id
        self.key_id = key_id
        self.request_hash = request_hash
        self.signed: dict[int, str] = {}  # input -> execution that signed it
        self.spend: list | None = None  # [asset, amount, at] once the first input is signed

    @event("Decided")
    def decide(self, execution: str, input: int, allowed: bool, rule: str, reason: str, policy_version: int,
               policy_digest: str, asset: str, amount: int, at: float) -> None:
        """One policy evaluation: the rule that decided and why (recorded for allowed and refused alike)."""
        self.last_decision = [asset, amount, at]

    @event("Signed")
    def sign(self, execution: str, input: int, digest: bytes, r: str, s: str, v: int, at: float) -> None:
        self.signed[input] = execution
        if self.spend is None:
            asset, amount, _ = getattr(self, "last_decision", ["?", 0, at])
            self.spend = [asset, amount, at]


class Rejection(Aggregate):
    """A message that could not be tied to any ceremony (garbage, unknown execution)."""

    @event("Recorded")
    def __init__(self, seq: int | None, subject: str, reason: str, sender: int | None, digest: bytes,
                 size: int) -> None:
        self.reason = reason


# -- the application ------------------------------------------------------------


@dataclass(frozen=True)
class StoreConfig:
    """Where a party keeps its events: ``sqlite`` (default), ``postgres`` or ``memory``."""

    kind: str = "sqlite"
    path: str | None = None  # sqlite: the database file
    dsn: str | None = None  # postgres: e.g. "host=127.0.0.1 port=5432 dbname=test user=postgres"
    schema: str | None = None  # postgres: schema holding this deployment's tables

    def __post_init__(self) -> None:
        if self.kind not in ("sqlite", "postgres", "memory"):
            raise ValueError(f"unknown store kind {self.kind!r}")
        if self.kind == "sqlite" and not self.path:
            raise ValueError("a sqlite store needs a path")
        if self.kind == "postgres" and not self.dsn:
            raise ValueError("a postgres store needs a dsn")


def _pg_params(dsn: str) -> dict[str, str]:
    from psycopg.conninfo import conninfo_to_dict

    return {k: str(v) for k, v in conninfo_to_dict(dsn).items()}


class _PartyApplication(Application):
    """eventsourcing application whose recorder also keeps JetStream tracking rows."""

    def construct_recorder(self):  # noqa: D102 - the process recorder records tracking atomically
        return self.factory.process_recorder()


@dataclass
class PartyStore:
    """A party's event store and vault. Not thread-safe: one writer per party."""

    party: int
    config: StoreConfig
    kek: bytes = field(repr=False)

    def __post_init__(self) -> None:
        name = f"party{self.party}"
        env: dict[str, str] = {
            "TRANSCODER_TOPIC": f"{MsgpackTranscoder.__module__}:{MsgpackTranscoder.__qualname__}",
            "CIPHER_TOPIC": f"{AesGcmCipher.__module__}:{AesGcmCipher.__qualname__}",
            "CIPHER_KEY": base64.b64encode(self.kek).decode(),
        }
        c = self.config
        if c.kind == "sqlite":
            env |= {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": c.path, "SQLITE_LOCK_TIMEOUT": "30"}
            self.vault = Vault(self.kek, sqlite_path=c.path + ".vault")
        elif c.kind == "postgres":
            p = _pg_params(c.dsn)
            env |= {
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_DBNAME": p.get("dbname", "postgres"),
                "POSTGRES_HOST": p.get("host", "127.0.0.1"),
                "POSTGRES_PORT": p.get("port", "5432"),
                "POSTGRES_USER": p.get("user", "postgres"),
                "POSTGRES_PASSWORD": p.get("password", ""),
                "CREATE_TABLE": "y",
            }
            if c.schema:
                env["POSTGRES_SCHEMA"] = c.schema
            try:
                self.vault = Vault(self.kek, postgres_dsn=c.dsn, table=f"{name}_vault", schema=c.schema)
            except Exception as exc:  # e.g. the schema does not exist; driver errors carry hosts, never keys
                raise StoreError(f"cannot open the postgres vault: {exc}") from None
        else:
            env |= {"PERSISTENCE_MODULE": "eventsourcing.popo"}
            self.vault = Vault(self.kek)
        app_cls = type(f"Party{self.party}", (_PartyApplication,), {"name": name})
        try:
            if c.kind == "postgres":
                # parties starting together would race on CREATE TABLE / FUNCTION; take turns
                import psycopg

                with psycopg.connect(c.dsn, autocommit=True) as lock:
                    lock.execute("SELECT pg_advisory_lock(hashtext('conclave-store-ddl'))")
                    try:
                        self.app = app_cls(env=env)
                    finally:
                        lock.execute("SELECT pg_advisory_unlock(hashtext('conclave-store-ddl'))")
            else:
                self.app = app_cls(env=env)
        except StoreError:
            raise
        except Exception as exc:  # driver errors carry paths/hosts, never keys
            raise StoreError(f"cannot open the {c.kind} event store: {exc}") from None
        self.tracking_name = f"jetstream-{name}"
        self._last_seq: int | None = None

    def __repr__(self) -> str:
        return f"PartyStore(party={self.party}, kind={self.config.kind!r})"

    # -- writes --
    def save(self, *aggregates: Aggregate, seq: int | None = None) -> None:
        """Commit the pending events of ``aggregates`` and, atomically, the stream sequence."""
        events = [e for a in aggregates for e in a.collect_events()]
        tracking = Tracking(self.tracking_name, seq) if seq is not None else None
        if not events and tracking is None:
            return
        self.app.events.put(events, tracking=tracking)
        if seq is not None:
            self._last_seq = seq

    def processed(self, seq: int) -> bool:
        """True when stream message ``seq`` (or a later one) was already committed."""
        last = self.last_seq()
        return last is not None and seq <= last

    def last_seq(self) -> int | None:
        """The highest committed stream sequence. Read from the database once, then kept up to date
        by :meth:`save`: this store is its party's only writer."""
        if self._last_seq is None:
            self._last_seq = self.app.recorder.max_tracking_id(self.tracking_name)
        return self._last_seq

    # -- reads --
    def get(self, cls: type, **ids: Any) -> Any | None:
        from eventsourcing.application import AggregateNotFoundError

        try:
            return self.app.repository.get(cls.create_id(**ids))
        except AggregateNotFoundError:
            return None
        except MapperDeserialisationError as exc:
            raise _unreadable(exc) from None

    def timeline(self, cls: type, **ids: Any) -> list[Any]:
        """The stored events of one aggregate, oldest first."""
        try:
            return list(self.app.events.get(cls.create_id(**ids)))
        except MapperDeserialisationError as exc:
            raise _unreadable(exc) from None

    def all_events(self, batch: int = 500) -> Iterator[Any]:
        """Every event this party stored, in commit order."""
        start = 1
        while True:
            notes = self.app.recorder.select_notifications(start=start, limit=batch)
            if not notes:
                return
            for n in notes:
                try:
                    ev = self.app.mapper.to_domain_event(n)
                except MapperDeserialisationError as exc:
                    raise _unreadable(exc) from None
                yield ev
            start = notes[-1].id + 1

    def close(self) -> None:
        try:
            self.app.close()
        finally:
            self.vault.close()


__all__ += ["seal_secret", "open_secret", "IntegrityError"]
