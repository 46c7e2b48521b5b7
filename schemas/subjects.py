"""NATS subjects and message ids: the addressing half of the wire contract.

* ``conclave.mpc.<execution>.<round>.<to|all>``: protocol and control messages
  (``round`` is ``<phase>-<n>``, ``start`` or ``abort``);
* ``conclave.out.<execution>.<party>``: a party's outcome of a ceremony;
* message id ``<execution>:<round>:<from>:<to|all>``: the ``Nats-Msg-Id`` that
  lets the broker drop a re-sent message.

Token syntax is checked where envelopes are built and opened
(:mod:`schemas.envelope`); these functions only assemble.
"""

from __future__ import annotations

import re

__all__ = ["EXECUTION_ID", "mpc_subject", "outcome_subject", "message_id", "target", "execution_of"]

EXECUTION_ID = re.compile(r"[A-Za-z0-9_-]{1,80}")  # one subject token


def target(recipient: int | None) -> str:
    return "all" if recipient is None else str(recipient)


def mpc_subject(execution: str, round_: str, recipient: int | None) -> str:
    return f"conclave.mpc.{execution}.{round_}.{target(recipient)}"


def outcome_subject(execution: str, party: int) -> str:
    return f"conclave.out.{execution}.{party}"


def message_id(execution: str, round_: str, sender: int, recipient: int | None) -> str:
    return f"{execution}:{round_}:{sender}:{target(recipient)}"


def execution_of(subject: str) -> str | None:
    """The execution id of a well-formed ``conclave.mpc.…`` subject, else None."""
    parts = subject.split(".")
    if len(parts) == 5 and parts[:2] == ["conclave", "mpc"] and EXECUTION_ID.fullmatch(parts[2]):
        return parts[2]
    return None
