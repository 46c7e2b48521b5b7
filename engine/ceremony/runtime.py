"""A party's ceremony engine: envelopes in, events recorded, envelopes out.

This is the synchronous core that every transport drives (``handlers/`` for
NATS JetStream, an in-memory network for tests and benchmarks). One call to
:meth:`PartyRuntime.handle` takes one inbound envelope and its stream sequence
and does, in order:

1. open the envelope (signature, recipient, subject, decryption), or record
   why it was rejected;
2. record it as MessageAccepted on its ceremony;
3. if this completes the current round's inbox, run the next pure round
   function and record RoundAdvanced with the new (sealed) state and the
   signed envelopes to send;
4. commit all of that in one transaction together with the stream sequence.

Only then may the caller publish the returned envelopes and acknowledge the
inbound message. A crash anywhere leaves either nothing (the message is
redelivered and processed afresh) or a committed step whose recorded
envelopes :meth:`recover` sends again, byte for byte. A round is never
computed twice, so a party never sends two different messages for one round.

Security:

* a presignature MUST be recorded as consumed in the same commit that records
  the partial signature computed from it;
* when a ceremony ends (completed or aborted), its data key MUST be destroyed,
  which makes its recorded round states and received shares unreadable.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from engine.crypto import ecdsa
from engine.crypto.group import SYSTEM_RNG, Rng
from engine.crypto.paillier import PaillierSecretKey
from engine.crypto.primes import generate_safe_prime
from engine.crypto.security import get_level
from engine.protocols import aux_info, keygen, presign, sign
from engine.protocols.base import Abort, Advance, Done, InternalError, Msg
from engine import policy as policy_rules
from engine import withdrawal as wd
from engine.ceremony import tracing
from engine.ceremony.policies import NoPolicy, PolicyBook
from engine.ceremony.store import (
    Ceremony,
    KeyShareRecord,
    PartyStore,
    PresignatureRecord,
    Rejection,
    WithdrawalRecord,
    open_secret,
    seal_secret,
)
from schemas.withdrawal import RequestError, WithdrawalRequest
from schemas.codec import DecodeError, packb, unpackb
from schemas.subjects import execution_of, message_id, mpc_subject, outcome_subject
from schemas.envelope import COORDINATOR, EnvelopeError, Identity, Opened, Roster, open_envelope, seal

__all__ = ["PartyRuntime", "Outgoing", "Step", "Command", "KINDS"]

log = logging.getLogger("conclave.party")

KINDS = ("keygen", "presign", "sign")
PHASES = {"keygen": keygen, "aux": aux_info, "presign": presign, "sign": sign}
DEFAULT_ROUND_TIMEOUT = 120.0
RESEND_FINISHED_WITHIN = 3600.0  # the broker's duplicate window: older resends would not be deduplicated

PrimeSource = Callable[[int], int]


@dataclass(frozen=True)
class Outgoing:
    """One recorded envelope to publish."""

    subject: str
    data: bytes
    msg_id: str

    def __repr__(self) -> str:
        return f"Outgoing({self.msg_id}, {len(self.data)} bytes)"


def _recorded(outbox: list[list]) -> list[Outgoing]:
    """Outgoing envelopes from a recorded outbox ``[[subject, msg_id, data], ...]``."""
    return [Outgoing(subject, data, msg_id) for subject, msg_id, data in outbox]


@dataclass
class Step:
    """What one handled message led to."""

    outgoing: list[Outgoing] = field(default_factory=list)
    reached: list[str] = field(default_factory=list)  # round tokens entered, "completed", "aborted"
    rejected: str | None = None  # reason, when the message was rejected
    duplicate_delivery: bool = False  # the stream sequence was already committed


@dataclass(frozen=True)
class Command:
    """A coordinator's request to run a ceremony (the body of a ``start`` envelope)."""

    kind: str
    participants: tuple[int, ...]
    params: dict[str, Any]
    level: str
    round_timeout: float = DEFAULT_ROUND_TIMEOUT

    def encode(self) -> bytes:
        return msgpack.packb(
            {"kind": self.kind, "participants": list(self.participants), "params": self.params,
             "level": self.level, "round_timeout": float(self.round_timeout)},
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> Command:
        try:
            d = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception:
            raise ValueError("command is not msgpack") from None
        if not isinstance(d, dict) or set(d) != {"kind", "participants", "params", "level", "round_timeout"}:
            raise ValueError("command has missing or unknown fields")
        kind, parts, params, level, timeout = (d[k] for k in ("kind", "participants", "params", "level", "round_timeout"))
        if kind not in KINDS:
            raise ValueError(f"unknown ceremony kind {kind!r}")
        if not isinstance(parts, list) or not parts or not all(type(p) is int and 1 <= p <= 10_000 for p in parts):
            raise ValueError("participants must be a list of party ids")
        if len(set(parts)) != len(parts):
            raise ValueError("participants repeat")
        if not isinstance(params, dict) or not isinstance(level, str):
            raise ValueError("malformed params or level")
        if not isinstance(timeout, float) or not 0.1 <= timeout <= 86_400:
            raise ValueError("round_timeout out of range")
        return cls(kind, tuple(sorted(parts)), params, level, timeout)


def _phases(kind: str, params: dict[str, Any]) -> tuple[str, ...]:
    if kind == "keygen":
        return ("keygen", "aux")
    if kind == "presign":
        return ("presign",)
    return ("sign",) if params.get("presig_id") else ("presign", "sign")


def _eid(execution: str, phase: str) -> bytes:
    return f"{execution}/{phase}".encode()


def _token(phase: str, round_: int) -> str:
    return f"{phase}-{round_}"


class _Reject(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PartyRuntime:
    """The ceremony engine of one party. Single-threaded: one call at a time."""

    def __init__(
        self,
        party: int,
        identity: Identity,
        roster: Roster,
        store: PartyStore,
        *,
        level: str,
        primes: PrimeSource | None = None,
        rng: Rng = SYSTEM_RNG,
        clock: Callable[[], float] = time.time,
        policies: PolicyBook | None = None,
    ) -> None:
        if identity.party != party:
            raise ValueError("identity belongs to another party")
        self.party = party
        self.identity = identity
        self.roster = roster
        self.store = store
        self.level = get_level(level).name
        self.primes = primes or (lambda bits: generate_safe_prime(bits))
        self.rng = rng
        self.clock = clock
        self._running: dict[str, Ceremony] = {}
        self._finished: dict[str, str] = {}  # execution -> status
        self._finished_counts: Counter[str] = Counter()
        self._pool_counts: dict[str, dict[str, int]] = {}  # key id -> available / consumed presignatures
        self._keys: dict[str, dict[str, Any]] = {}
        self._presigs: dict[str, dict[str, Any]] = {}
        self._rejections = 0
        self._recovered = False
        self._deks: dict[str, bytes] = {}  # data keys of running ceremonies (also in the vault)
        # the embedded development default; deployments pass their own book
        self.policies = policies or PolicyBook(None, allow_dev=True)
        self._signed: dict[tuple[str, int], str] = {}  # (request id, input) -> execution that signed it
        self._spends: dict[str, policy_rules.Spend] = {}  # request id -> what it moved, for velocity limits

    def __repr__(self) -> str:
        return f"PartyRuntime(party={self.party}, running={len(self._running)})"

    # -- startup -------------------------------------------------------------

    def recover(self) -> Step:
        """Rebuild the index from the store; return what must be sent again.

        Running ceremonies re-send their current round's recorded envelopes and
        continue if their inbox is already complete. Recently finished ones
        re-send their outcome and abort notice (the broker drops duplicates).
        """
        step = Step()
        now = self.clock()
        finished_at: dict[str, float] = {}
        ceremony_ids: dict[Any, str] = {}  # aggregate id -> execution
        presig_ids: dict[Any, str] = {}  # aggregate id -> presignature id
        wd_ids: dict[Any, str] = {}  # aggregate id -> withdrawal request id
        decisions: dict[Any, Any] = {}  # aggregate id -> its latest Decided event
        for ev in self.store.all_events():
            if isinstance(ev, Ceremony.Started):
                ceremony_ids[ev.originator_id] = ev.execution
                self._running[ev.execution] = None  # type: ignore[assignment]
            elif isinstance(ev, (Ceremony.Completed, Ceremony.Aborted)):
                ex = ceremony_ids.get(ev.originator_id)
                if ex is not None:
                    self._running.pop(ex, None)
                    self._mark_finished(ex, "completed" if isinstance(ev, Ceremony.Completed) else "aborted")
                    finished_at[ex] = ev.timestamp.timestamp()
            elif isinstance(ev, KeyShareRecord.Created):
                self._keys[ev.key_id] = {"key_id": ev.key_id, "public_key": ev.public_key,
                                         "threshold": ev.threshold, "parties": list(ev.parties), "level": ev.level}
            elif isinstance(ev, PresignatureRecord.Created):
                presig_ids[ev.originator_id] = ev.presig_id
                self._add_presig(ev.presig_id, ev.key_id, ev.signers)
            elif isinstance(ev, PresignatureRecord.Consumed):
                pid = presig_ids.get(ev.originator_id)
                if pid is not None:
                    self._consume_presig(pid)
            elif isinstance(ev, Rejection.Recorded):
                self._rejections += 1
            elif isinstance(ev, WithdrawalRecord.Decided):
                decisions[ev.originator_id] = ev
            elif isinstance(ev, WithdrawalRecord.Signed):
                dec = decisions.get(ev.originator_id)
                rid = wd_ids.get(ev.originator_id)
                if rid is not None:
                    self._signed[(rid, ev.input)] = ev.execution
                    if dec is not None and rid not in self._spends:
                        self._spends[rid] = policy_rules.Spend(dec.asset, dec.amount, ev.at)
            elif isinstance(ev, WithdrawalRecord.Received):
                wd_ids[ev.originator_id] = ev.request_id
        for ex in list(self._running):
            cer = self.store.get(Ceremony, execution=ex)
            self._running[ex] = cer
            step.outgoing.extend(_recorded(cer.outbox))
            cer.resume(resent=len(cer.outbox), pid=os.getpid())
            self.store.save(cer)
        for ex in self._finished:
            if now - finished_at.get(ex, 0) < RESEND_FINISHED_WITHIN:
                step.outgoing.extend(_recorded(self.store.get(Ceremony, execution=ex).outbox))
        # a crash between a commit and the key deletion it implies leaves keys behind
        for key_id in self.store.vault.ids():
            kind, _, ident = key_id.partition(":")
            if (kind == "ceremony" and ident not in self._running) or (
                    kind == "presig" and self._presigs.get(ident, {}).get("consumed", True)):
                self.store.vault.destroy(key_id)
        self._recovered = True
        for ex in list(self._running):
            cer = self._running[ex]
            more = self._advance(cer)
            if more.outgoing or more.reached:
                self.store.save(cer, *more.extra)
                self._after_commit(cer, more)
                step.outgoing.extend(more.outgoing)
                step.reached.extend(more.reached)
        return step

    # -- inbound -------------------------------------------------------------

    def handle(self, raw: bytes, subject: str, seq: int | None, published_at: float | None = None,
               msg_id: str | None = None) -> Step:
        """Process one inbound envelope. Never raises for bad input; store errors propagate.

        ``published_at`` (the broker's timestamp, Unix seconds) lets a party that was down
        refuse a ``start`` whose first round deadline passed while it was away. ``msg_id``, the
        broker's ``Nats-Msg-Id``, lets the commonest messages that change nothing be passed over
        before any hashing, signature check or store lookup.
        """
        if not self._recovered:
            raise InternalError("recover() must run before handle()")
        if msg_id is not None and self._passes_over(subject, msg_id):
            return Step()
        if seq is not None and self.store.processed(seq):
            return Step(duplicate_delivery=True)
        digest = hashlib.sha256(raw).digest()
        execution = execution_of(subject)
        try:
            opened = open_envelope(raw, self.roster, self.identity, subject=subject)
        except EnvelopeError as exc:
            return self._record_rejection(execution, seq, exc.reason, getattr(exc, "sender", None), None, digest,
                                          subject, len(raw))
        env = opened.envelope
        if env.sender == self.party:
            return Step()  # our own broadcast, signed by our own key: nothing to learn
        if env.protocol == "ctl" and env.round == "start":
            return self._start(opened, seq, digest, published_at)
        cer = self._ceremony(env.execution)
        if cer is None and env.recipient is None and env.execution not in self._finished:
            # a signed broadcast of a ceremony we never started: one we are not part of
            return Step()
        if cer is None:
            reason = "ceremony already finished" if env.execution in self._finished else "unknown execution"
            return self._record_rejection(env.execution, seq, reason, env.sender, env.msg_id, digest, subject, len(raw))
        if env.protocol == "ctl" and env.round == "abort":
            return self._peer_abort(cer, opened, seq)
        if self.clock() > cer.deadline:
            # we were away past the round deadline: peers have given up, so must we, before
            # this message could complete a round (and, say, release a signature nobody awaits)
            return self._expire_one(cer, seq)
        try:
            return self._accept(cer, opened, seq)
        except _Reject as rej:
            cer.reject(seq=seq, reason=rej.reason, sender=env.sender, msg_id=env.msg_id, digest=digest)
            self.store.save(cer, seq=seq)
            return Step(rejected=rej.reason)
        except Exception:
            self._forget(cer.execution)
            raise

    def _passes_over(self, subject: str, msg_id: str) -> bool:
        """A broadcast that :meth:`handle` would ignore without recording anything: our own, echoed back,
        or one of a ceremony this party neither runs nor ran. A lying msg id can only make us drop a
        message, which whoever controls the broker can do anyway."""
        parts = subject.split(".")
        if len(parts) != 5 or parts[4] != "all" or parts[3] in ("start", "abort"):
            return False
        ex = parts[2]
        if ex not in self._running and ex not in self._finished:
            return True
        fields = msg_id.split(":")
        return len(fields) == 4 and fields[0] == ex and fields[2] == str(self.party)

    def quarantine(self, raw: bytes, subject: str, seq: int | None, reason: str) -> Step:
        """Record a message that failed to process several times, so it stops blocking the party."""
        if seq is not None and self.store.processed(seq):
            return Step(duplicate_delivery=True)
        self.reset_cache()
        return self._record_rejection(None, seq, f"could not be processed: {reason}", None, None,
                                      hashlib.sha256(raw).digest(), subject, len(raw))

    def _ceremony(self, execution: str) -> Ceremony | None:
        if execution not in self._running:
            return None
        cer = self._running[execution]
        if cer is None:
            cer = self._running[execution] = self.store.get(Ceremony, execution=execution)
        return cer

    def reset_cache(self) -> None:
        """Forget every cached aggregate (after a failed commit); they reload from the store."""
        for ex in self._running:
            self._running[ex] = None  # type: ignore[assignment]

    def _forget(self, execution: str) -> None:
        """Drop a cached aggregate whose pending events were not committed."""
        if execution in self._running:
            self._running[execution] = None  # type: ignore[assignment]

    def _record_rejection(self, execution, seq, reason, sender, msg_id, digest, subject, size, extra=()) -> Step:
        log.warning("party %s rejected a message on %s: %s", self.party, subject, reason)
        cer = self._ceremony(execution) if execution else None
        if cer is not None:
            cer.reject(seq=seq, reason=reason, sender=sender, msg_id=msg_id, digest=digest)
            self.store.save(cer, *extra, seq=seq)
        else:
            rej = Rejection(seq=seq, subject=subject[:200], reason=reason, sender=sender, digest=digest, size=size)
            self.store.save(rej, *extra, seq=seq)
            self._rejections += 1
        return Step(rejected=reason)

    # -- start ---------------------------------------------------------------

    def _start(self, opened: Opened, seq: int | None, digest: bytes, published_at: float | None = None) -> Step:
        env = opened.envelope
        ex = env.execution

        extra: list[Any] = []  # a withdrawal's policy decision, recorded whatever happens next
        carry: dict[str, Any] = {}  # what later phases need: a withdrawal's HD tweak

        def reject(reason: str, rule: str | None = None) -> Step:
            step = self._record_rejection(None, seq, reason, env.sender, env.msg_id, digest, env.subject,
                                          len(opened.body), extra)
            if ex in self._running or ex in self._finished:
                # our outcome's msg id belongs to the ceremony we already hold for this execution:
                # a replayed start must not pre-empt (or contradict) its real outcome
                return step
            # tell the coordinator now rather than let it wait for a deadline
            body = {"status": "rejected", "reason": reason, **({"rule": rule} if rule else {})}
            data = seal(self.identity, self.roster, protocol="ctl", execution=ex, round="out", recipient=None,
                        body=msgpack.packb(body, use_bin_type=True), confidential=False)
            step.outgoing.append(Outgoing(outcome_subject(ex, self.party), data,
                                          message_id(ex, "rejected", self.party, None)))
            return step

        if env.sender != COORDINATOR:
            return reject("only the coordinator may start a ceremony")
        if ex in self._running or ex in self._finished:
            return reject("execution id already used")
        try:
            cmd = Command.decode(opened.body)
            if self.party not in cmd.participants:
                return Step()  # not ours; nothing to record
            if cmd.level != self.level:
                raise ValueError(f"security level {cmd.level!r} differs from this deployment's {self.level!r}")
            self._check_params(ex, cmd)
        except ValueError as exc:
            return reject(f"bad command: {exc}")
        if cmd.kind == "sign" and "withdrawal" in cmd.params:
            refusal = self._check_withdrawal(ex, cmd, extra, carry)
            if refusal is not None:
                return reject(*refusal)
        now = self.clock()
        cer = Ceremony(execution=ex, kind=cmd.kind, params=cmd.params, participants=list(cmd.participants),
                       command_seq=seq, round_timeout=cmd.round_timeout, deadline=now + cmd.round_timeout,
                       trace=dict(env.trace))
        self._running[ex] = cer
        late = now - published_at if published_at is not None else 0.0
        if late > cmd.round_timeout:
            step = self._abort(cer, f"start arrived {late:.0f}s after it was sent, past the {cmd.round_timeout:g}s "
                                    "round deadline (this party was unavailable)", [], False, notify=False)
            pid = cmd.params.get("presig_id") if cmd.kind == "sign" else None
            if pid is not None:
                # a peer may have spent its share of it already: burn ours too
                rec = self.store.get(PresignatureRecord, presig_id=pid)
                rec.consume(execution=ex)
                step.extra.append(rec)
            self.store.save(cer, *step.extra, seq=seq)
            self._after_commit(cer, step)
            return step
        try:
            step = self._enter_phase(cer, _phases(cmd.kind, cmd.params)[0], carry=carry)
            if not cer.finished:
                more = self._advance(cer, step.outgoing)
                step.outgoing += more.outgoing
                step.reached += more.reached
                step.extra += more.extra
            self.store.save(cer, *step.extra, *extra, seq=seq)
        except Exception:
            self._running.pop(ex, None)
            raise
        self._after_commit(cer, step)
        return step

    def _check_params(self, execution: str, cmd: Command) -> None:
        p = cmd.params
        if cmd.kind == "keygen":
            if set(p) != {"threshold"} or type(p["threshold"]) is not int:
                raise ValueError("keygen takes exactly a threshold")
            if not 2 <= p["threshold"] <= len(cmd.participants):
                raise ValueError("threshold must be between 2 and the number of parties")
            return
        if not isinstance(p.get("key_id"), str) or p["key_id"] not in self._keys:
            raise ValueError("unknown key id")
        key = self._keys[p["key_id"]]
        if not set(cmd.participants) <= set(key["parties"]) or len(cmd.participants) != key["threshold"]:
            raise ValueError(f"signers must be exactly {key['threshold']} of the key's parties {key['parties']}")
        if cmd.kind == "presign" and set(p) != {"key_id"}:
            raise ValueError("presign takes exactly a key id")
        if cmd.kind == "sign":
            if not set(p) <= {"key_id", "digest", "presig_id", "withdrawal", "input", "policy"} \
                    or not isinstance(p.get("digest"), bytes) or len(p["digest"]) != 32:
                raise ValueError("sign takes a key id, a 32-byte digest and optionally a presignature id")
            if "withdrawal" in p:
                if not isinstance(p["withdrawal"], bytes) or type(p.get("input")) is not int \
                        or not isinstance(p.get("policy"), bytes):
                    raise ValueError("a withdrawal sign takes the request, an input index and a policy digest")
            else:
                if {"input", "policy"} & set(p):
                    raise ValueError("input and policy belong to a withdrawal")
                try:
                    dev = self.policies.get(p["key_id"]).dev
                except NoPolicy as exc:
                    raise ValueError(str(exc)) from None
                if not dev:
                    # a bare digest bypasses every rule, so only the development policy allows one
                    raise ValueError("this wallet has a policy: it signs withdrawals, not bare digests")
            pid = p.get("presig_id")
            if pid is not None:
                rec = self._presigs.get(pid) if isinstance(pid, str) else None
                if rec is None or rec["key_id"] != p["key_id"] or rec["signers"] != list(cmd.participants):
                    raise ValueError("unknown presignature for this key and signer set")
                if rec["consumed"]:
                    raise ValueError("presignature already used")

    def _check_withdrawal(self, execution: str, cmd: Command, extra: list[Any],
                          carry: dict[str, Any]) -> tuple[str, str | None] | None:
        """Rebuild what is to be signed and evaluate this party's own policy for it.

        Returns (reason, rule) to refuse, or None to sign, with the derived key's tweak put in
        ``carry`` for the sign phase. Every policy evaluation is recorded as a Decided event in
        ``extra``, to be committed with the outcome.
        """
        p = cmd.params
        try:
            request = WithdrawalRequest.from_json(p["withdrawal"])
        except RequestError as exc:
            return f"bad request: {exc}", None
        if request.key_id != p["key_id"]:
            return "bad request: key_id differs from the wallet being signed for", None
        try:
            prepared = wd.prepare(request, bytes.fromhex(self._keys[p["key_id"]]["public_key"]))
        except RequestError as exc:
            return f"bad request: {exc}", None
        i = p["input"]
        if not 0 <= i < len(prepared.digests):
            return f"bad request: input {i} does not exist", None
        if prepared.digests[i] != p["digest"]:
            # never sign a digest someone else computed: it must be the one the fields give
            return ("digest mismatch: the requested digest is not the signing hash of the transaction fields "
                    f"(input {i})"), "digest"
        signed = self._signed.get((request.request_id, i))
        if signed is not None:
            return f"request {request.request_id} input {i} was already signed in {signed}", "idempotency"
        running = self._signing_now(request.request_id, i)
        if running is not None:
            return f"request {request.request_id} input {i} is being signed in {running}", "idempotency"
        try:
            policy = self.policies.get(request.key_id)
        except NoPolicy as exc:
            return f"policy: {exc}", "policy"
        if policy.digest != p["policy"]:
            return (f"policy: this party enforces policy version {policy.version} ({policy.digest.hex()[:16]}), "
                    f"the session was bound to {p['policy'].hex()[:16]}"), "policy-version"
        now = self.clock()
        spend = policy_rules.spend_of(request, {prepared.address})
        history = self._recent_spends(request.request_id, now) if policy.velocity_limited(spend.asset) else ()
        decision = policy_rules.evaluate(policy, request, spend, now=now, history=history)
        rec = self.store.get(WithdrawalRecord, request_id=request.request_id)
        if rec is None:
            rec = WithdrawalRecord(request_id=request.request_id, key_id=request.key_id,
                                   request_hash=request.request_hash())
        rec.decide(execution=execution, input=i, allowed=decision.allowed, rule=decision.rule,
                   reason=decision.reason, policy_version=policy.version, policy_digest=policy.digest.hex(),
                   asset=spend.asset, amount=spend.amount, at=now)
        extra.append(rec)
        if decision.allowed:
            carry["tweak"] = prepared.tweak
            return None
        return f"policy: {decision.reason}", decision.rule

    def _recent_spends(self, request_id: str, now: float) -> list[policy_rules.Spend]:
        """Other requests' spends inside the velocity window; older ones are dropped for good."""
        horizon = now - policy_rules.VELOCITY_WINDOW
        while self._spends:
            rid, first = next(iter(self._spends.items()))  # recorded in signing order
            if first.at > horizon:
                break
            del self._spends[rid]
        return [s for rid, s in self._spends.items() if rid != request_id]

    def _signing_now(self, request_id: str, input_: int) -> str | None:
        """The running ceremony that signs this request input, if any."""
        for ex in list(self._running):
            p = (cer := self._ceremony(ex)).params
            if cer.kind == "sign" and "withdrawal" in p and p["input"] == input_ \
                    and WithdrawalRequest.from_json(p["withdrawal"]).request_id == request_id:
                return ex
        return None

    # -- rounds --------------------------------------------------------------

    def _dek(self, cer: Ceremony) -> bytes:
        dek = self._deks.get(cer.execution)
        if dek is None:
            dek = self._deks[cer.execution] = self.store.vault.create(f"ceremony:{cer.execution}")
        return dek

    def _seal_state(self, cer: Ceremony, state: Any, carry: dict[str, Any]) -> bytes:
        return seal_secret(self._dek(cer), f"state:{cer.execution}", packb({"state": state, "carry": carry}))

    def _open_state(self, cer: Ceremony) -> tuple[Any, dict[str, Any]]:
        dek = self._deks.get(cer.execution) or self.store.vault.get(f"ceremony:{cer.execution}")
        if dek is None or cer.sealed_state is None:
            raise InternalError("ceremony state is gone (its data key was destroyed)")
        blob = unpackb(open_secret(dek, f"state:{cer.execution}", cer.sealed_state))
        return blob["state"], blob["carry"]

    def _enter_phase(self, cer: Ceremony, phase: str, carry: dict[str, Any], prior: Sequence[Outgoing] = ()) -> _StepX:
        """Run round 1 of ``phase`` and record it."""
        p, me, eid = cer.params, self.party, _eid(cer.execution, phase)
        parts = tuple(cer.participants)
        extra: list[Any] = []
        if phase == "keygen":
            adv = keygen.round1(keygen.KeygenParams(eid, me, parts, p["threshold"]), self.rng)
        elif phase == "aux":
            bits = get_level(self.level).prime_bits
            while True:
                pp, qq = self.primes(bits), self.primes(bits)
                if pp != qq:
                    break
            adv = aux_info.round1(aux_info.AuxParams(eid, me, parts, self.level), PaillierSecretKey(pp, qq), self.rng)
        elif phase == "presign":
            rec = self.store.get(KeyShareRecord, key_id=p["key_id"])
            share, aux = unpackb(rec.share), unpackb(rec.aux)
            adv = presign.round1(presign.PresignParams(eid, me, parts, self.level), share, aux, self.rng)
        elif phase == "sign":
            presig = carry.pop("presig", None)
            if presig is None:
                pid = p["presig_id"]
                rec = self.store.get(PresignatureRecord, presig_id=pid)
                if rec is None or rec.consumed_by is not None:
                    raise InternalError("presignature missing or already consumed")
                dek = self.store.vault.get(f"presig:{pid}")
                if dek is None:
                    raise InternalError("presignature secrets are gone")
                presig = unpackb(open_secret(dek, f"presig:{pid}", rec.sealed))
                rec.consume(execution=cer.execution)  # committed together with σ_i below
                extra.append(rec)
            adv = sign.round1(sign.SignParams(eid, me, p["digest"], carry.get("tweak", 0)), presig, self.rng)
        else:
            raise InternalError(f"unknown phase {phase}")
        step = self._record_advance(cer, phase, 1, adv, carry, prior)
        step.extra += extra
        return step

    def _record_advance(self, cer: Ceremony, phase: str, round_: int, adv: Advance, carry: dict[str, Any],
                        prior: Sequence[Outgoing] = ()) -> _StepX:
        """Record entering ``phase``-``round_``. ``prior``: envelopes produced earlier in the same step,
        recorded again so a restart re-sends everything this step produced."""
        outbox = [self._envelope(cer, m) for m in adv.outbox]
        expect: set[tuple[int, str]] = set()
        for m in adv.outbox:
            if m.recipient is None:
                expect.update((j, "b") for j in cer.participants if j != self.party)
            else:
                expect.add((m.recipient, "d"))
        cer.advance(phase=phase, round=round_, sealed_state=self._seal_state(cer, adv.state, carry),
                    outbox=[[o.subject, o.msg_id, o.data] for o in [*prior, *outbox]],
                    expect=[list(e) for e in sorted(expect)], deadline=self.clock() + cer.round_timeout)
        return _StepX(outgoing=outbox, reached=[_token(phase, round_)])

    def _envelope(self, cer: Ceremony, m: Msg) -> Outgoing:
        round_ = _token(m.protocol, m.round)
        data = seal(self.identity, self.roster, protocol=m.protocol, execution=cer.execution, round=round_,
                    recipient=m.recipient, body=packb(m), confidential=m.confidential, trace=cer.trace)
        return Outgoing(mpc_subject(cer.execution, round_, m.recipient), data,
                        message_id(cer.execution, round_, self.party, m.recipient))

    def _advance(self, cer: Ceremony, prior: Sequence[Outgoing] = ()) -> _StepX:
        """Run rounds while the current round's inbox is complete."""
        step = _StepX()
        sent = list(prior)
        while not cer.finished and cer.phase is not None and not cer.missing():
            phase, r = cer.phase, cer.round
            module = PHASES[phase]
            state, carry = self._open_state(cer)
            dek = self._dek(cer)
            inbox = []
            for key, (_, sealed_msg) in sorted(cer.accepted.items()):
                ph, rr, _, _ = key.split(":")
                if ph == phase and int(rr) == r:
                    inbox.append(unpackb(open_secret(dek, f"msg:{cer.execution}:{key}", sealed_msg)))
            fn = module.ROUNDS[r - 1]
            try:
                with tracing.span(f"{cer.kind} {_token(phase, r + 1)}", cer.trace, party=self.party,
                                  execution=cer.execution):
                    result = fn(state, tuple(inbox), self.rng)
            except InternalError as exc:
                result = Abort((), f"internal error: {exc}", r, phase, (), False)
                log.error("party %s: internal error in %s: %s", self.party, _token(phase, r), exc)
            except Exception as exc:
                # a value the round checks missed; our bug, so nobody is blamed
                result = Abort((), f"internal error: {type(exc).__name__}", r, phase, (), False)
                log.exception("party %s: unexpected error in %s", self.party, _token(phase, r))
            if isinstance(result, Advance):
                more = self._record_advance(cer, phase, r + 1, result, carry, sent)
            elif isinstance(result, Done):
                more = self._phase_done(cer, phase, result, carry, sent)
            elif isinstance(result, Abort):
                more = self._abort(cer, result.reason, list(result.culprits), result.attributable, prior=sent)
            else:
                raise InternalError(f"round returned {type(result).__name__}")
            sent += more.outgoing
            step.outgoing += more.outgoing
            step.reached += more.reached
            step.extra += more.extra
        return step

    def _phase_done(self, cer: Ceremony, phase: str, done: Done, carry: dict[str, Any],
                    prior: Sequence[Outgoing] = ()) -> _StepX:
        phases = _phases(cer.kind, cer.params)
        tail = [self._envelope(cer, m) for m in done.outbox]
        if phase == "keygen":
            carry = dict(carry, share=done.output)
        elif phase == "presign" and cer.kind == "sign":
            carry = dict(carry, presig=done.output)
        idx = phases.index(phase)
        if idx + 1 < len(phases):
            step = self._enter_phase(cer, phases[idx + 1], carry, [*prior, *tail])
            step.outgoing = tail + step.outgoing
            return step
        result, extra = self._finish(cer, done.output, carry)
        outcome = self._outcome(cer, {"status": "completed", "kind": cer.kind, "result": result})
        cer.complete(result=result, outcome=outcome.data,
                     outbox=[[o.subject, o.msg_id, o.data] for o in [*prior, *tail, outcome]])
        return _StepX(outgoing=tail + [outcome], reached=["completed"], extra=extra)

    def _finish(self, cer: Ceremony, output: Any, carry: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        if cer.kind == "keygen":
            share, aux = carry["share"], output
            pub = share.public_key.to_bytes().hex()
            rec = KeyShareRecord(key_id=cer.execution, execution=cer.execution, level=self.level,
                                 threshold=share.threshold, parties=list(share.parties), public_key=pub,
                                 share=packb(share), aux=packb(aux))
            self._keys[cer.execution] = {"key_id": cer.execution, "public_key": pub, "threshold": share.threshold,
                                         "parties": list(share.parties), "level": self.level}
            return {"key_id": cer.execution, "public_key": pub, "threshold": share.threshold,
                    "parties": list(share.parties)}, [rec]
        if cer.kind == "presign":
            pid = cer.execution
            dek = self.store.vault.create(f"presig:{pid}")
            rec = PresignatureRecord(presig_id=pid, key_id=cer.params["key_id"], signers=list(cer.participants),
                                     sealed=seal_secret(dek, f"presig:{pid}", packb(output)))
            self._add_presig(pid, cer.params["key_id"], cer.participants)
            return {"presig_id": pid, "key_id": cer.params["key_id"], "signers": list(cer.participants)}, [rec]
        sig: sign.SignatureResult = output
        pub = sig.public_key.to_bytes()
        # released only after an independent check against the group key
        if not ecdsa.is_releasable(pub, sig.digest, sig.r, sig.s, sig.v):
            raise InternalError("combined signature failed the release check")
        result = {"key_id": cer.params["key_id"], "public_key": pub.hex(), "r": f"{sig.r:064x}",
                  "s": f"{sig.s:064x}", "v": sig.v, "der": sig.der().hex(), "digest": sig.digest.hex(),
                  "signers": list(sig.signers)}
        if "withdrawal" not in cer.params:
            return result, []
        request = WithdrawalRequest.from_json(cer.params["withdrawal"])
        i, now = cer.params["input"], self.clock()
        rec = self.store.get(WithdrawalRecord, request_id=request.request_id)
        rec.sign(execution=cer.execution, input=i, digest=sig.digest, r=result["r"], s=result["s"], v=sig.v, at=now)
        return {**result, "request_id": request.request_id, "input": i}, [rec]

    def _outcome(self, cer: Ceremony, body: dict[str, Any]) -> Outgoing:
        data = seal(self.identity, self.roster, protocol="ctl", execution=cer.execution, round="out",
                    recipient=None, body=msgpack.packb(body, use_bin_type=True), confidential=False, trace=cer.trace)
        return Outgoing(outcome_subject(cer.execution, self.party), data,
                        message_id(cer.execution, "out", self.party, None))

    def _abort(self, cer: Ceremony, reason: str, culprits: list[int], attributable: bool,
               reported_by: int | None = None, notify: bool = True, prior: Sequence[Outgoing] = ()) -> _StepX:
        reported_by = self.party if reported_by is None else reported_by
        body = {"reason": reason, "culprits": culprits, "attributable": attributable,
                "round": _token(cer.phase, cer.round) if cer.phase else None, "reported_by": reported_by}
        out: list[Outgoing] = []
        if notify:
            data = seal(self.identity, self.roster, protocol="ctl", execution=cer.execution, round="abort",
                        recipient=None, body=msgpack.packb(body, use_bin_type=True), confidential=False,
                        trace=cer.trace)
            out.append(Outgoing(mpc_subject(cer.execution, "abort", None), data,
                                message_id(cer.execution, "abort", self.party, None)))
        out.append(self._outcome(cer, {"status": "aborted", "kind": cer.kind, **body}))
        cer.abort(reason=reason, culprits=culprits, phase=cer.phase, round=cer.round, attributable=attributable,
                  reported_by=reported_by, outcome=out[-1].data,
                  outbox=[[o.subject, o.msg_id, o.data] for o in [*prior, *out]])
        log.warning("party %s aborted %s: %s (culprits %s)", self.party, cer.execution, reason, culprits)
        return _StepX(outgoing=out, reached=["aborted"])

    def _after_commit(self, cer: Ceremony, step: _StepX) -> None:
        shred: list[str] = []
        if cer.finished:
            self._running.pop(cer.execution, None)
            self._mark_finished(cer.execution, cer.status)
            self._deks.pop(cer.execution, None)
            shred.append(f"ceremony:{cer.execution}")
        for rec in step.extra:
            if isinstance(rec, WithdrawalRecord):
                for i, ex in rec.signed.items():
                    self._signed[(rec.request_id, i)] = ex
                if rec.spend is not None and rec.request_id not in self._spends:
                    self._spends[rec.request_id] = policy_rules.Spend(*rec.spend)
            if isinstance(rec, PresignatureRecord) and rec.consumed_by is not None:
                self._consume_presig(rec.presig_id)
                shred.append(f"presig:{rec.presig_id}")
        self.store.vault.destroy(*shred)

    # -- accepting protocol messages ---------------------------------------------

    def _accept(self, cer: Ceremony, opened: Opened, seq: int | None) -> Step:
        env = opened.envelope
        if env.sender not in cer.participants or env.sender == self.party:
            raise _Reject("sender is not a participant of this ceremony")
        phases = _phases(cer.kind, cer.params)
        if env.protocol not in phases:
            raise _Reject(f"protocol {env.protocol!r} is not part of a {cer.kind} ceremony")
        try:
            msg = unpackb(opened.body)
        except DecodeError as exc:
            msg = exc
        if not isinstance(msg, Msg) or msg.protocol != env.protocol or msg.eid != _eid(cer.execution, env.protocol) \
                or _token(msg.protocol, msg.round) != env.round or msg.sender != env.sender \
                or msg.recipient != env.recipient or msg.confidential != env.sealed:
            # the sender signed it, so this is provable misbehaviour
            step = self._abort(cer, f"party {env.sender}: signed a malformed message {env.msg_id}", [env.sender], True)
            cer_step = Step(step.outgoing, step.reached, rejected="malformed message")
            self.store.save(cer, seq=seq)
            self._after_commit(cer, step)
            return cer_step
        kind = "b" if msg.recipient is None else "d"
        body_digest = hashlib.sha256(opened.body).digest()
        prior = cer.has(msg.protocol, msg.round, msg.sender, kind)
        if prior is not None:
            if prior[0] == body_digest:
                raise _Reject("duplicate message")
            step = self._abort(cer, f"party {env.sender}: two different signed messages for {env.round}",
                               [env.sender], True)
            self.store.save(cer, seq=seq)
            self._after_commit(cer, step)
            return Step(step.outgoing, step.reached, rejected="equivocation")
        if phases.index(msg.protocol) < phases.index(cer.phase) or (
                msg.protocol == cer.phase and msg.round < cer.round):
            raise _Reject("message for a round this party has already completed")
        key = f"{msg.protocol}:{msg.round}:{msg.sender}:{kind}"
        sealed_msg = seal_secret(self._dek(cer), f"msg:{cer.execution}:{key}", opened.body)
        cer.accept(seq=seq, phase=msg.protocol, round=msg.round, sender=msg.sender, kind=kind, msg_id=env.msg_id,
                   digest=body_digest, sealed_msg=sealed_msg)
        step = self._advance(cer)
        self.store.save(cer, *step.extra, seq=seq)
        self._after_commit(cer, step)
        return Step(step.outgoing, step.reached)

    def _peer_abort(self, cer: Ceremony, opened: Opened, seq: int | None) -> Step:
        env = opened.envelope
        if env.sender != COORDINATOR and env.sender not in cer.participants:
            cer.reject(seq=seq, reason="abort notice from a non-participant", sender=env.sender, msg_id=env.msg_id,
                       digest=hashlib.sha256(opened.body).digest())
            self.store.save(cer, seq=seq)
            return Step(rejected="abort notice from a non-participant")
        try:
            body = msgpack.unpackb(opened.body, raw=False)
            reason = str(body["reason"])[:500]
            culprits = [int(c) for c in body.get("culprits", []) if int(c) in cer.participants]
            attributable = bool(body.get("attributable", True))
        except Exception:
            reason, culprits, attributable = "malformed abort notice", [], False
        who = "coordinator" if env.sender == COORDINATOR else f"party {env.sender}"
        step = self._abort(cer, f"{who} aborted: {reason}", culprits, attributable, reported_by=env.sender,
                           notify=False)
        self.store.save(cer, seq=seq)
        self._after_commit(cer, step)
        return Step(step.outgoing, step.reached)

    # -- deadlines and status ----------------------------------------------------

    def expire(self) -> Step:
        """Abort every ceremony whose current round is past its deadline."""
        now = self.clock()
        step = Step()
        for ex in list(self._running):
            cer = self._ceremony(ex)
            if cer is None or cer.finished or now <= cer.deadline:
                continue
            more = self._expire_one(cer, None)
            step.outgoing += more.outgoing
            step.reached += more.reached
        return step

    def _expire_one(self, cer: Ceremony, seq: int | None) -> Step:
        missing = cer.missing()
        where = _token(cer.phase, cer.round) if cer.phase else "start"
        reason = f"round {where} timed out after {cer.round_timeout:g}s waiting for parties {missing}"
        more = self._abort(cer, reason, missing, True)
        self.store.save(cer, seq=seq)
        self._after_commit(cer, more)
        return Step(more.outgoing, more.reached)

    def status(self) -> dict[str, Any]:
        now = self.clock()
        flights = []
        for ex in sorted(self._running):
            cer = self._ceremony(ex)
            if cer is None:
                continue
            flights.append({"execution": ex, "kind": cer.kind,
                            "round": _token(cer.phase, cer.round) if cer.phase else None,
                            "waiting_for": cer.missing(), "deadline_in": round(cer.deadline - now, 1)})
        policies: dict[str, dict[str, Any]] = {}
        warnings = []
        for key_id in sorted(self._keys):
            try:
                pol = self.policies.get(key_id)
            except NoPolicy as exc:
                policies[key_id] = {"error": str(exc)}
                warnings.append(f"wallet {key_id}: {exc}")
                continue
            policies[key_id] = {"version": pol.version, "digest": pol.digest.hex(), "dev": pol.dev}
            if pol.dev:
                warnings.append(f"wallet {key_id} runs under the DEVELOPMENT policy, which allows EVERY withdrawal; "
                                f"install one with `conclave policy apply --key {key_id} FILE`")
        return {"party": self.party, "level": self.level, "keys": sorted(self._keys.values(), key=lambda k: k["key_id"]),
                "ceremonies": flights, "presignatures": {k: dict(v) for k, v in self._pool_counts.items()},
                "policies": policies, "warnings": warnings,
                "finished": {"completed": self._finished_counts["completed"],
                             "aborted": self._finished_counts["aborted"]},
                "rejected_messages": self._rejections}

    # the index behind status(), kept up to date as it changes rather than recounted per status

    def _add_presig(self, pid: str, key_id: str, signers: Sequence[int]) -> None:
        self._presigs[pid] = {"key_id": key_id, "signers": list(signers), "consumed": False}
        self._pool_counts.setdefault(key_id, {"available": 0, "consumed": 0})["available"] += 1

    def _consume_presig(self, pid: str) -> None:
        rec = self._presigs[pid]
        if not rec["consumed"]:
            rec["consumed"] = True
            counts = self._pool_counts[rec["key_id"]]
            counts["available"] -= 1
            counts["consumed"] += 1

    def _mark_finished(self, execution: str, status: str) -> None:
        if execution not in self._finished:
            self._finished_counts[status] += 1
        self._finished[execution] = status

    def available_presignatures(self, key_id: str, signers: Sequence[int]) -> list[str]:
        return sorted(pid for pid, r in self._presigs.items()
                      if r["key_id"] == key_id and r["signers"] == sorted(signers) and not r["consumed"])


@dataclass
class _StepX(Step):
    extra: list[Any] = field(default_factory=list)  # other aggregates to commit with the ceremony


def start_envelope(coordinator: Identity, roster: Roster, execution: str, command: Command,
                   trace: dict[str, str] | None = None) -> Outgoing:
    """The signed ``start`` message a coordinator publishes to begin a ceremony."""
    data = seal(coordinator, roster, protocol="ctl", execution=execution, round="start", recipient=None,
                body=command.encode(), confidential=False, trace=trace)
    return Outgoing(mpc_subject(execution, "start", None), data, message_id(execution, "start", COORDINATOR, None))


def abort_envelope(coordinator: Identity, roster: Roster, execution: str, reason: str) -> Outgoing:
    """A coordinator's request that every party abandon ``execution``."""
    body = msgpack.packb({"reason": reason, "culprits": [], "attributable": False}, use_bin_type=True)
    data = seal(coordinator, roster, protocol="ctl", execution=execution, round="abort", recipient=None,
                body=body, confidential=False)
    return Outgoing(mpc_subject(execution, "abort", None), data, message_id(execution, "abort", COORDINATOR, None))


__all__ += ["start_envelope", "abort_envelope"]
