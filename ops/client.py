"""The coordinator side: start a ceremony over NATS and collect every party's outcome.

The coordinator holds no secrets of the key. It signs ``start`` commands with
its own identity, waits for each participant's signed outcome on
``conclave.out.<execution>.<party>``, and checks any signature it is handed
against the group key before it reports it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgpack

from engine.ceremony import tracing
from engine.ceremony.runtime import Command, abort_envelope, start_envelope
from engine.crypto import ecdsa
from handlers.jetstream import OutcomeRouter, close, connect, ensure_streams, publish, subscribe_outcomes
from handlers.party import status_subject
from ops.deploy import Deployment
from schemas.envelope import EnvelopeError, open_envelope

__all__ = ["CeremonyOutcome", "CeremonyFailed", "Coordinator", "new_execution_id"]


def new_execution_id(kind: str) -> str:
    prefix = {"keygen": "key", "presign": "pre", "sign": "sig"}[kind]
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


class CeremonyFailed(Exception):
    """A ceremony aborted, was rejected, or did not finish in time."""

    def __init__(self, execution: str, status: str, reason: str, culprits: Sequence[int] = (),
                 reports: dict[int, dict] | None = None) -> None:
        super().__init__(f"{execution} {status}: {reason}")
        self.execution = execution
        self.status = status
        self.reason = reason
        self.culprits = list(culprits)
        self.reports = reports or {}


@dataclass
class CeremonyOutcome:
    execution: str
    kind: str
    result: dict[str, Any]
    seconds: float
    reports: dict[int, dict] = field(default_factory=dict)


class Coordinator:
    """A connection to a deployment's broker, acting as its coordinator."""

    def __init__(self, deployment: Deployment, url: str | None = None) -> None:
        self.dep = deployment
        cfg = deployment.config()
        self.url = url or cfg["nats"]["url"]
        self.level = cfg["level"]
        self.round_timeout = float(cfg.get("round_timeout", 120.0))
        self.identity = deployment.coordinator()
        self.roster = deployment.roster()
        self.nc = None
        self.js = None

    async def __aenter__(self) -> Coordinator:
        with anyio.fail_after(15):
            self.nc = await connect(self.url, name="conclave-coordinator")
        self.js = self.nc.jetstream()
        await ensure_streams(self.js)  # the coordinator may come up before any party
        self.outcomes = OutcomeRouter(self.js)
        await self.outcomes.start()
        return self

    async def __aexit__(self, *exc) -> None:
        if self.nc is not None:
            with anyio.CancelScope(shield=True):
                await close(self.nc)

    async def party_status(self, party: int, timeout: float = 2.0) -> dict[str, Any] | None:
        try:
            reply = await self.nc.request(status_subject(party), b"", timeout=timeout)
        except Exception:
            return None
        try:
            return msgpack.unpackb(reply.data, raw=False)
        except Exception:
            return None

    async def run(self, kind: str, participants: Sequence[int], params: dict[str, Any], *,
                  execution: str | None = None, timeout: float | None = None, round_timeout: float | None = None,
                  on_report: Callable[[int, dict], None] | None = None) -> CeremonyOutcome:
        """Start a ceremony and wait until every participant reports; raise CeremonyFailed otherwise."""
        execution = execution or new_execution_id(kind)
        participants = tuple(sorted(participants))
        rounds = {"keygen": 7, "presign": 4, "sign": 5 if not params.get("presig_id") else 2}[kind]
        round_timeout = round_timeout or self.round_timeout
        timeout = timeout or round_timeout * rounds + 30
        cmd = Command(kind, participants, params, self.level, round_timeout)
        with tracing.span(f"ceremony {kind}", execution=execution):
            return await self._run(kind, execution, participants, params, cmd, timeout, on_report)

    async def _run(self, kind, execution, participants, params, cmd, timeout, on_report) -> CeremonyOutcome:
        reports: dict[int, dict] = {}
        t0 = time.perf_counter()
        async with self.outcomes.watch(execution) as outcomes:
            start = start_envelope(self.identity, self.roster, execution, cmd, trace=tracing.carrier())
            await publish(self.js, start.subject, start.data, start.msg_id)
            try:
                with anyio.fail_after(timeout):
                    while set(reports) != set(participants):
                        party, raw = await outcomes.next()
                        report = self._open(raw, party)
                        if report is None or party not in participants or party in reports:
                            continue
                        reports[party] = report
                        if on_report is not None:
                            on_report(party, report)
                        if report.get("status") in ("aborted", "rejected"):
                            # one party's abort ends the ceremony for all; give the rest a moment to report
                            with anyio.move_on_after(2.0):
                                while set(reports) != set(participants):
                                    p2, raw2 = await outcomes.next()
                                    r2 = self._open(raw2, p2)
                                    if r2 is not None and p2 in participants:
                                        reports.setdefault(p2, r2)
                            raise self._failure(execution, reports)
            except TimeoutError:
                missing = sorted(set(participants) - set(reports))
                ab = abort_envelope(self.identity, self.roster, execution,
                                    f"coordinator gave up after {timeout:g}s without outcomes from {missing}")
                await publish(self.js, ab.subject, ab.data, ab.msg_id)
                raise CeremonyFailed(execution, "timeout", f"no outcome from parties {missing} within {timeout:g}s",
                                     missing, reports) from None
        seconds = time.perf_counter() - t0
        results = [r["result"] for r in reports.values()]
        if any(r != results[0] for r in results):
            raise CeremonyFailed(execution, "inconsistent", "parties report different results", [], reports)
        result = results[0]
        if kind == "sign":
            self._check_signature(execution, result, params["digest"])
        return CeremonyOutcome(execution, kind, result, seconds, reports)

    async def abort(self, execution: str, reason: str, wait: float = 5.0) -> dict[int, dict]:
        """Ask every party to abandon ``execution``; return the outcomes that arrive within ``wait`` s.

        Parties that finished it already keep their result (their earlier outcome is returned);
        parties that never heard of it ignore the request.
        """
        reports: dict[int, dict] = {}
        async with subscribe_outcomes(self.js, execution) as outcomes:
            ab = abort_envelope(self.identity, self.roster, execution, reason)
            await publish(self.js, ab.subject, ab.data, ab.msg_id)
            with anyio.move_on_after(wait):
                while True:
                    party, raw = await outcomes.next()
                    report = self._open(raw, party)
                    if report is not None:
                        reports.setdefault(party, report)
        return reports

    def _open(self, raw: bytes, party: int) -> dict | None:
        try:
            opened = open_envelope(raw, self.roster, self.identity)
        except EnvelopeError:
            return None
        if opened.envelope.sender != party:
            return None
        try:
            body = msgpack.unpackb(opened.body, raw=False)
        except Exception:
            return None
        return body if isinstance(body, dict) else None

    @staticmethod
    def _failure(execution: str, reports: dict[int, dict]) -> CeremonyFailed:
        bad = [r for r in reports.values() if r.get("status") in ("aborted", "rejected")]
        status = "rejected" if all(r["status"] == "rejected" for r in bad) else "aborted"
        culprits = sorted({c for r in bad for c in r.get("culprits", [])})
        reasons = list(dict.fromkeys(str(r.get("reason")) for r in bad))
        return CeremonyFailed(execution, status, "; ".join(reasons), culprits, reports)

    @staticmethod
    def _check_signature(execution: str, result: dict[str, Any], digest: bytes) -> None:
        pub = bytes.fromhex(result["public_key"])
        r, s, v = int(result["r"], 16), int(result["s"], 16), int(result["v"])
        if bytes.fromhex(result["digest"]) != digest or not ecdsa.is_releasable(pub, digest, r, s, v):
            raise CeremonyFailed(execution, "invalid",
                                 "the reported signature fails verification, low-S or key recovery under the group key")
