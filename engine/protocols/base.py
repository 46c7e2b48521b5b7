"""The shape every protocol round shares.

A round is a pure function ``(state, inbound, rng) -> Advance | Abort | Done``:

* :class:`Advance` carries the next state and the messages to send. The runtime
  persists the state *before* it sends anything, so a restart re-sends the same
  bytes instead of sampling again.
* :class:`Abort` names the culprits and the offending messages: a provable
  peer fault (identifiable abort). Delivery problems are the runtime's concern.
* :class:`Done` carries the protocol output (and any last messages).

Our own bugs are :class:`InternalError`, which blames nobody.

Before any expensive cryptography, :func:`gather` checks every inbound message's
protocol, execution id, round, sender and recipient, and that each peer sent
exactly the messages the round expects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import hashlib
from dataclasses import dataclass
from typing import Any

from schemas.codec import wire

__all__ = [
    "Msg",
    "Advance",
    "Abort",
    "Done",
    "Blame",
    "InternalError",
    "Received",
    "gather",
    "message_id",
    "RoundResult",
    "SecretRepr",
    "echo_digest",
    "check_echo",
    "collect_commitments",
]


class InternalError(RuntimeError):
    """A bug on our side. It blames no party."""


@wire("mpc.msg")
@dataclass(frozen=True, repr=False)
class Msg:
    protocol: str
    eid: bytes  # execution id
    round: int
    sender: int
    recipient: int | None  # None: broadcast to every peer
    body: Any
    confidential: bool = False  # the runtime encrypts confidential bodies to the recipient

    @property
    def id(self) -> str:
        return message_id(self.protocol, self.eid, self.round, self.sender, self.recipient)

    def __repr__(self) -> str:
        # bodies may carry shares; only the header is printable
        return f"Msg({self.id}, {type(self.body).__name__})"


def message_id(protocol: str, eid: bytes, round_: int, sender: int, recipient: int | None) -> str:
    to = "all" if recipient is None else str(recipient)
    return f"{eid.hex()}:{protocol}:{round_}:{sender}:{to}"


@dataclass(frozen=True)
class Blame:
    party: int
    reason: str
    message: str | None = None  # id of the offending message


@dataclass(frozen=True)
class Advance:
    state: Any
    outbox: tuple[Msg, ...]


@dataclass(frozen=True)
class Abort:
    culprits: tuple[int, ...]
    reason: str
    round: int
    protocol: str
    messages: tuple[str, ...] = ()
    attributable: bool = True

    @classmethod
    def blame(cls, protocol: str, round_: int, blames: Sequence[Blame]) -> Abort:
        culprits = tuple(sorted({b.party for b in blames}))
        reason = "; ".join(f"party {b.party}: {b.reason}" for b in blames)
        messages = tuple(b.message for b in blames if b.message)
        return cls(culprits, reason, round_, protocol, messages)


@dataclass(frozen=True)
class Done:
    output: Any
    outbox: tuple[Msg, ...] = ()


RoundResult = Advance | Abort | Done


class SecretRepr:
    """Mixin: ``repr`` shows only non-secret header fields, never shares or nonces."""

    _public_fields: tuple[str, ...] = ("eid", "party")

    def __repr__(self) -> str:
        shown = []
        for name in self._public_fields:
            v = getattr(self, name, None)
            if isinstance(v, bytes):
                v = v.hex()[:16]
            shown.append(f"{name}={v!r}")
        return f"{type(self).__name__}({', '.join(shown)}, <secrets hidden>)"

    __str__ = __repr__


@dataclass(frozen=True)
class Received:
    """What one peer sent in one round: its broadcast body and/or its direct body."""

    broadcast: Any = None
    direct: Any = None
    broadcast_id: str | None = None
    direct_id: str | None = None


def gather(
    *,
    protocol: str,
    eid: bytes,
    round_: int,
    me: int,
    peers: Iterable[int],
    inbound: Iterable[Msg],
    broadcast_type: type | None,
    direct_type: type | None,
) -> dict[int, Received] | Abort:
    """Sort a round's inbound messages by sender, or abort naming who broke the rules.

    Checks are cheap and come first: header fields, body type, duplicates, and
    completeness. A peer that sent nothing is blamed for missing the round.
    """
    peers = tuple(peers)
    got: dict[int, dict[str, Any]] = {p: {} for p in peers}
    blames: list[Blame] = []
    for msg in inbound:
        if not isinstance(msg, Msg):
            raise InternalError("inbound item is not a Msg")
        who = msg.sender
        if who not in got:
            # not a member of this ceremony: nobody we can blame inside it
            continue
        if msg.eid != eid or msg.protocol != protocol:
            blames.append(Blame(who, "message belongs to another execution", msg.id))
            continue
        if msg.round != round_:
            blames.append(Blame(who, f"message for round {msg.round} delivered in round {round_}", msg.id))
            continue
        if msg.recipient is None:
            kind, want = "broadcast", broadcast_type
        elif msg.recipient == me:
            kind, want = "direct", direct_type
        else:
            continue  # addressed to someone else; not ours to judge
        if want is None or not isinstance(msg.body, want):
            blames.append(Blame(who, f"unexpected {kind} body", msg.id))
            continue
        prev = got[who].get(kind)
        if prev is not None and prev[0] != msg.body:
            blames.append(Blame(who, f"two different {kind} messages in one round", msg.id))
            continue
        got[who][kind] = (msg.body, msg.id)
    for who, kinds in got.items():
        if broadcast_type is not None and "broadcast" not in kinds:
            blames.append(Blame(who, "no broadcast message before the deadline"))
        if direct_type is not None and "direct" not in kinds:
            blames.append(Blame(who, "no direct message before the deadline"))
    if blames:
        return Abort.blame(protocol, round_, _dedupe(blames))
    return {
        who: Received(
            broadcast=kinds.get("broadcast", (None, None))[0],
            direct=kinds.get("direct", (None, None))[0],
            broadcast_id=kinds.get("broadcast", (None, None))[1],
            direct_id=kinds.get("direct", (None, None))[1],
        )
        for who, kinds in got.items()
    }


def _dedupe(blames: list[Blame]) -> list[Blame]:
    seen: dict[int, Blame] = {}
    for b in blames:
        seen.setdefault(b.party, b)
    return list(seen.values())


def echo_digest(items: Sequence[tuple[int, bytes]]) -> dict[int, bytes]:
    """Per-sender SHA-256 digests of a broadcast round, for the reliable-broadcast echo check."""
    return {who: hashlib.sha256(data).digest() for who, data in items}


def collect_commitments(
    *, protocol: str, eid: bytes, me: int, peers: Iterable[int], inbound: Iterable[Msg], body_type: type, mine: bytes
) -> tuple[dict[int, bytes], dict[int, bytes]] | Abort:
    """Round 2 of a commit-then-open protocol: every party's hash commitment V_j, and our echo of them."""
    got = gather(
        protocol=protocol, eid=eid, round_=1, me=me, peers=peers, inbound=inbound,
        broadcast_type=body_type, direct_type=None,
    )
    if isinstance(got, Abort):
        return got
    V_all = {j: r.broadcast.V for j, r in got.items()} | {me: mine}
    return V_all, echo_digest(sorted(V_all.items()))


def check_echo(
    protocol: str,
    round_: int,
    me: int,
    mine: dict[int, bytes],
    echoes: dict[int, tuple[dict[int, bytes], str | None]],
) -> Abort | None:
    """Compare every peer's account of a broadcast round with what we received.

    Only conclusions this party can draw on its own are blamed:

    * peer ``r``'s account of *its own* broadcast differs from what ``r`` sent
      us: ``r`` equivocated;
    * peer ``r``'s account of *our* broadcast is wrong: ``r`` lies in its echo.

    Any other mismatch (``r`` and we disagree about a third party ``k``) means
    ``k`` equivocated or ``r`` lies, and cannot be settled without signed
    envelopes: the round aborts without blame rather than frame an honest party.
    """
    blames: list[Blame] = []
    ambiguous = False
    for reporter, (view, msg_id) in sorted(echoes.items()):
        for sender, digest in sorted(mine.items()):
            if view.get(sender) == digest:
                continue
            if sender == reporter:
                blames.append(Blame(reporter, "broadcast differently to different parties (echo mismatch)", msg_id))
            elif sender == me:
                blames.append(Blame(reporter, "echo misreports our broadcast", msg_id))
            else:
                ambiguous = True
    if blames:
        return Abort.blame(protocol, round_, _dedupe(blames))
    if ambiguous:
        return Abort((), "echo mismatch about a third party; not attributable without signed envelopes",
                     round_, protocol, (), False)
    return None
