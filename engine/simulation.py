"""Run every party of a ceremony in one process, over an in-memory network.

Operators and auditors use this to rehearse ceremonies (``conclave simulate``),
and the tests use it to drive the pure round functions. Every message is
encoded and decoded through the wire codec on its way, exactly as it would be
between processes, so a message that cannot cross the wire fails here too.

An optional :class:`engine.cheats.Cheat` makes one party misbehave; the run
must then abort naming that party.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.crypto.group import SYSTEM_RNG, Rng
from engine.crypto.paillier import PaillierSecretKey
from engine.crypto.primes import generate_safe_prime
from engine.crypto.security import SecurityLevel, get_level
from engine.protocols import aux_info, keygen, presign, sign
from engine.protocols.base import Abort, Advance, Done, InternalError, Msg
from schemas.codec import DecodeError, packb, unpackb

__all__ = ["Aborted", "Simulation", "Ceremony", "run_rounds", "PrimeSource"]

PrimeSource = Callable[[int], int]  # bits -> safe prime
Delivery = tuple[int, Msg]  # (recipient, message)


class Aborted(Exception):
    """A ceremony stopped with an identifiable (or unattributable) abort."""

    def __init__(self, phase: str, abort: Abort, reports: dict[int, Abort]) -> None:
        super().__init__(f"{phase} aborted: {abort.reason}")
        self.phase = phase
        self.abort = abort
        self.reports = reports


def _expand(outbox: Sequence[Msg], parties: Sequence[int]) -> list[Delivery]:
    out: list[Delivery] = []
    for msg in outbox:
        if msg.recipient is None:
            out.extend((j, msg) for j in parties if j != msg.sender)
        else:
            out.append((msg.recipient, msg))
    return out


def _wire(msg: Msg) -> Msg | None:
    """Encode and decode like the network would; None if the bytes are not a message."""
    try:
        decoded = unpackb(packb(msg))
    except DecodeError:
        return None
    return decoded if isinstance(decoded, Msg) else None


def run_rounds(
    protocol: str,
    firsts: dict[int, Advance],
    rounds: Sequence[Callable[..., Any]],
    rng: Rng,
    tamper: Callable[[str, int, int, Any, list[Delivery]], tuple[Any, list[Delivery]]] | None = None,
    honest: Callable[[int], bool] = lambda _: True,
    persist: Callable[[Any], Any] | None = None,
) -> dict[int, Any]:
    """Drive one protocol to completion for every party; return each party's output.

    ``tamper(protocol, round_no, party, state, deliveries)`` lets an adversary
    rewrite its own state and messages after each of its rounds. ``persist``
    is applied to every state between rounds, the way a runtime stores and
    reloads it; the next round runs on what it returns.
    """
    parties = sorted(firsts)
    keep = persist or (lambda st: st)
    states = {i: keep(adv.state) for i, adv in firsts.items()}
    pending: dict[int, list[Delivery]] = {i: _expand(adv.outbox, parties) for i, adv in firsts.items()}
    round_no = 1
    outputs: dict[int, Any] = {}
    for fn in rounds:
        if tamper is not None:
            for i in parties:
                states[i], pending[i] = tamper(protocol, round_no, i, states[i], pending[i])
        inboxes: dict[int, list[Msg]] = {i: [] for i in parties}
        malformed: dict[int, set[int]] = {i: set() for i in parties}
        for i in parties:
            for to, msg in pending[i]:
                decoded = _wire(msg)
                if decoded is None:
                    malformed[to].add(i)
                else:
                    inboxes[to].append(decoded)
        reports: dict[int, Abort] = {}
        nxt: dict[int, list[Delivery]] = {}
        for i in parties:
            if malformed[i]:
                culprits = tuple(sorted(malformed[i]))
                reports[i] = Abort(culprits, "malformed message", round_no, protocol)
                continue
            result = fn(states[i], tuple(inboxes[i]), rng)
            if isinstance(result, Abort):
                reports[i] = result
            elif isinstance(result, Advance):
                states[i] = keep(result.state)
                nxt[i] = _expand(result.outbox, parties)
            elif isinstance(result, Done):
                outputs[i] = result.output
                nxt[i] = _expand(result.outbox, parties)
            else:
                raise InternalError(f"round returned {type(result).__name__}")
        if reports:
            raise Aborted(protocol, _summarise(reports, honest), reports)
        pending = nxt
        round_no += 1
    if set(outputs) != set(parties):
        raise InternalError(f"{protocol}: not every party produced an output")
    return outputs


def _summarise(reports: dict[int, Abort], honest: Callable[[int], bool]) -> Abort:
    """The abort as honest parties see it: the union of their blame."""
    views = [a for i, a in reports.items() if honest(i)] or list(reports.values())
    culprits = tuple(sorted({c for a in views for c in a.culprits}))
    first = views[0]
    reasons = "; ".join(dict.fromkeys(a.reason for a in views))
    messages = tuple(dict.fromkeys(m for a in views for m in a.messages))
    attributable = all(a.attributable for a in views)
    return Abort(culprits, reasons, first.round, first.protocol, messages, attributable)


@dataclass
class Ceremony:
    """Outputs of a full simulated run."""

    key_shares: dict[int, keygen.KeyShare]
    aux: dict[int, aux_info.AuxInfo]
    presignatures: dict[int, presign.Presignature] = field(default_factory=dict)
    signature: sign.SignatureResult | None = None
    timings: dict[str, float] = field(default_factory=dict)


class Simulation:
    """All parties of one key in one process."""

    def __init__(
        self,
        parties: int,
        threshold: int,
        *,
        level: SecurityLevel | str = "cggmp21-128",
        primes: PrimeSource | None = None,
        rng: Rng = SYSTEM_RNG,
        cheat: Any = None,
        persist: Callable[[Any], Any] | None = None,
        progress: Callable[[str, float | None], None] | None = None,
    ) -> None:
        if not 1 <= threshold <= parties:
            raise ValueError("need 1 <= threshold <= parties")
        if threshold < 2:
            raise ValueError("threshold must be at least 2: a 1-of-n key is a plain key")
        self.party_ids = tuple(range(1, parties + 1))
        self.threshold = threshold
        self.level = get_level(level) if isinstance(level, str) else level
        self.primes = primes or (lambda bits: generate_safe_prime(bits))
        self.rng = rng
        self.cheat = cheat
        self.persist = persist
        self.progress = progress  # called with (phase, None) on start and (phase, seconds) on finish
        self.timings: dict[str, float] = {}

    # helpers ---------------------------------------------------------------
    def _eid(self, label: str) -> bytes:
        return label.encode() + b":" + self.rng.randbytes(16)

    def _honest(self, i: int) -> bool:
        return self.cheat is None or self.cheat.party != i

    def _tamper(self):
        return self.cheat.tamper if self.cheat is not None else None

    def _timed(self, phase: str, fn: Callable[[], Any]) -> Any:
        if self.progress is not None:
            self.progress(phase, None)
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            elapsed = time.perf_counter() - t0
            self.timings[phase] = self.timings.get(phase, 0.0) + elapsed
            if self.progress is not None:
                self.progress(phase, elapsed)

    # phases ----------------------------------------------------------------
    def keygen(self) -> dict[int, keygen.KeyShare]:
        eid = self._eid("keygen")

        def run():
            firsts = {
                i: keygen.round1(keygen.KeygenParams(eid, i, self.party_ids, self.threshold), self.rng)
                for i in self.party_ids
            }
            return run_rounds("keygen", firsts, keygen.ROUNDS, self.rng, self._tamper(), self._honest, self.persist)

        return self._timed("keygen", run)

    def paillier_keys(self) -> dict[int, PaillierSecretKey]:
        """Fresh safe-prime Paillier keys (outside the timed aux-info phase)."""
        bits = self.level.prime_bits
        keys = {}
        for i in self.party_ids:
            if self.cheat is not None and self.cheat.party == i and hasattr(self.cheat, "paillier_key"):
                custom = self.cheat.paillier_key(self.level)
                if custom is not None:
                    keys[i] = custom
                    continue
            while True:
                p, q = self.primes(bits), self.primes(bits)
                if p != q:
                    break
            keys[i] = PaillierSecretKey(p, q)
        return keys

    def aux_info(self, keys: dict[int, PaillierSecretKey] | None = None) -> dict[int, aux_info.AuxInfo]:
        keys = keys or self.paillier_keys()
        eid = self._eid("aux")

        def run():
            firsts = {
                i: aux_info.round1(aux_info.AuxParams(eid, i, self.party_ids, self.level.name), keys[i], self.rng)
                for i in self.party_ids
            }
            return run_rounds("aux", firsts, aux_info.ROUNDS, self.rng, self._tamper(), self._honest, self.persist)

        return self._timed("aux_info", run)

    def presign(
        self, shares: dict[int, keygen.KeyShare], aux: dict[int, aux_info.AuxInfo], signers: Sequence[int]
    ) -> dict[int, presign.Presignature]:
        signers = tuple(sorted(signers))
        eid = self._eid("presign")

        def run():
            firsts = {
                i: presign.round1(presign.PresignParams(eid, i, signers, self.level.name), shares[i], aux[i], self.rng)
                for i in signers
            }
            return run_rounds("presign", firsts, presign.ROUNDS, self.rng, self._tamper(), self._honest, self.persist)

        return self._timed("presign", run)

    def sign(self, presigs: dict[int, presign.Presignature], digest: bytes, tweak: int = 0) -> sign.SignatureResult:
        eid = self._eid("sign")

        def run():
            firsts = {i: sign.round1(sign.SignParams(eid, i, digest, tweak), ps) for i, ps in presigs.items()}
            return run_rounds("sign", firsts, sign.ROUNDS, self.rng, self._tamper(), self._honest, self.persist)

        outputs = self._timed("sign", run)
        results = list(outputs.values())
        if any(r != results[0] for r in results):
            raise InternalError("parties disagree on the final signature")
        return results[0]

    def run(self, digest: bytes, signers: Sequence[int] | None = None) -> Ceremony:
        """keygen → aux-info → presign → sign."""
        signers = tuple(sorted(signers)) if signers else self.party_ids[: self.threshold]
        if len(signers) != self.threshold or not set(signers) <= set(self.party_ids):
            raise ValueError(f"choose exactly {self.threshold} signers from {list(self.party_ids)}")
        shares = self.keygen()
        keys = self.paillier_keys()
        aux = self.aux_info(keys)
        presigs = self.presign(shares, aux, signers)
        sig = self.sign(presigs, digest)
        return Ceremony(shares, aux, presigs, sig, dict(self.timings))
