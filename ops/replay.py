"""``conclave replay``: one ceremony's timeline across every party's event store.

It reads the stores directly (with each party's key-encryption key from the
data directory), so it works on a live deployment and equally on store files
copied elsewhere for a post-mortem. Secrets stay sealed: the timeline shows
headers, digests and reasons, never round states or shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.ceremony.store import Ceremony, PartyStore, StoreError, WithdrawalRecord
from ops.deploy import Deployment

__all__ = ["replay", "render", "replay_request", "render_request"]


@dataclass(frozen=True)
class Entry:
    at: float
    party: int
    event: str
    detail: dict[str, Any]


def _describe(ev: Any) -> tuple[str, dict[str, Any]]:
    name = type(ev).__qualname__.split(".")[-1]
    if name == "Started":
        return name, {"kind": ev.kind, "participants": list(ev.participants), "round_timeout": ev.round_timeout,
                      "command_seq": ev.command_seq}
    if name == "MessageAccepted":
        return name, {"round": f"{ev.phase}-{ev.round}", "from": ev.sender,
                      "kind": "broadcast" if ev.kind == "b" else "direct", "seq": ev.seq, "msg_id": ev.msg_id,
                      "sha256": ev.digest.hex()[:16]}
    if name == "MessageRejected":
        return name, {"reason": ev.reason, "from": ev.sender, "msg_id": ev.msg_id, "seq": ev.seq}
    if name == "RoundAdvanced":
        sent = [o[1] for o in ev.outbox]
        return name, {"round": f"{ev.phase}-{ev.round}", "sent": sent,
                      "waiting_for": sorted({s for s, _ in ev.expect})}
    if name == "Completed":
        return name, {"result": ev.result}
    if name == "Resumed":
        return name, {"resent": ev.resent, "pid": ev.pid}
    if name == "Aborted":
        return name, {"reason": ev.reason, "culprits": list(ev.culprits),
                      "round": f"{ev.phase}-{ev.round}" if ev.phase else None, "attributable": ev.attributable,
                      "reported_by": ev.reported_by}
    return name, {}


def _timelines(dep: Deployment, cls: type, **ids: Any) -> dict[int, list[Any] | str]:
    """Each party's stored events of one aggregate, or why its store could not be read."""
    out: dict[int, list[Any] | str] = {}
    for i in dep.party_ids():
        try:
            store = PartyStore(i, dep.store_config(i), dep.kek(i))
        except (StoreError, OSError) as exc:
            out[i] = str(exc)
            continue
        try:
            out[i] = store.timeline(cls, **ids)
        finally:
            store.close()
    return out


def replay(dep: Deployment, execution: str) -> dict[str, Any]:
    """Merge every party's record of ``execution`` into one ordered timeline plus a per-party summary."""
    entries: list[Entry] = []
    parties: dict[int, dict[str, Any]] = {}
    for i, events in _timelines(dep, Ceremony, execution=execution).items():
        if isinstance(events, str):
            parties[i] = {"status": "unreadable", "error": events}
            continue
        if not events:
            parties[i] = {"status": "no record"}
            continue
        summary: dict[str, Any] = {"status": "running", "round": None, "accepted": 0, "rejected": 0}
        waiting: set[tuple[int, str]] = set()
        for ev in events:
            name, detail = _describe(ev)
            entries.append(Entry(ev.timestamp.timestamp(), i, name, detail))
            if name == "RoundAdvanced":
                summary["round"] = detail["round"]
                waiting = {(s, k) for s, k in ev.expect}
                summary["waiting_for"] = sorted({s for s, _ in waiting})
            elif name == "MessageAccepted":
                summary["accepted"] += 1
                if detail["round"] == summary["round"]:
                    waiting.discard((ev.sender, ev.kind))
                    summary["waiting_for"] = sorted({s for s, _ in waiting})
            elif name == "MessageRejected":
                summary["rejected"] += 1
            elif name == "Completed":
                summary["status"] = "completed"
                summary.pop("waiting_for", None)
            elif name == "Aborted":
                summary["status"] = "aborted"
                summary["reason"] = detail["reason"]
                summary["culprits"] = detail["culprits"]
                summary.pop("waiting_for", None)
            elif name == "Started":
                summary["kind"] = detail["kind"]
        parties[i] = summary
    entries.sort(key=lambda e: (e.at, e.party))
    t0 = entries[0].at if entries else 0.0
    statuses = {p["status"] for p in parties.values() if p["status"] not in ("no record",)}
    if not entries:
        verdict = "no party has any record of this execution"
    elif statuses == {"completed"}:
        verdict = "completed at every participant"
    elif "aborted" in statuses:
        first = next(e for e in entries if e.event == "Aborted")
        verdict = f"aborted: party {first.party} first, at {first.detail['round']}: {first.detail['reason']}"
    else:
        stuck = {i: p for i, p in parties.items() if p["status"] == "running"}
        verdict = "stalled: " + "; ".join(
            f"party {i} at {p['round']} waiting for {p.get('waiting_for', [])}" for i, p in sorted(stuck.items()))
    return {
        "execution": execution,
        "verdict": verdict,
        "parties": {str(i): p for i, p in sorted(parties.items())},
        "timeline": [{"t": round(e.at - t0, 4), "at": e.at, "party": e.party, "event": e.event, **e.detail}
                     for e in entries],
    }


def replay_request(dep: Deployment, request_id: str) -> dict[str, Any]:
    """Every party's policy decisions and signatures for one withdrawal request, in time order."""
    entries: list[dict[str, Any]] = []
    parties: dict[str, str] = {}
    for i, events in _timelines(dep, WithdrawalRecord, request_id=request_id).items():
        if isinstance(events, str):
            parties[str(i)] = f"unreadable: {events}"
            continue
        parties[str(i)] = "no record"
        for ev in events:
            name = type(ev).__qualname__.split(".")[-1]
            e: dict[str, Any] = {"at": ev.timestamp.timestamp(), "party": i, "event": name}
            if name == "Decided":
                e.update(execution=ev.execution, input=ev.input, allowed=ev.allowed, rule=ev.rule, reason=ev.reason,
                         policy_version=ev.policy_version, policy_digest=ev.policy_digest[:16])
                parties[str(i)] = f"{'allowed' if ev.allowed else 'refused'} ({ev.rule})"
            elif name == "Signed":
                e.update(execution=ev.execution, input=ev.input, r=ev.r, s=ev.s, v=ev.v)
                parties[str(i)] = "signed"
            else:
                e.update(request_hash=ev.request_hash.hex())
            entries.append(e)
    entries.sort(key=lambda e: (e["at"], e["party"]))
    t0 = entries[0]["at"] if entries else 0.0
    refusals = [e for e in entries if e["event"] == "Decided" and not e["allowed"]]
    signed = sorted({e["party"] for e in entries if e["event"] == "Signed"})
    if not entries:
        verdict = "no party has any record of this request"
    elif signed:
        verdict = f"signed by parties {signed}"
    elif refusals:
        verdict = f"refused: party {refusals[0]['party']} first, {refusals[0]['rule']}: {refusals[0]['reason']}"
    else:
        verdict = "allowed, not (yet) signed"
    return {"request_id": request_id, "verdict": verdict, "parties": parties,
            "timeline": [{"t": round(e["at"] - t0, 4), **e} for e in entries]}


def render_request(report: dict[str, Any]) -> str:
    lines = [f"request {report['request_id']}: {report['verdict']}", ""]
    for e in report["timeline"]:
        if e["event"] == "Decided":
            verdict = "ALLOWED" if e["allowed"] else "REFUSED"
            text = (f"{verdict} input {e['input']} in {e['execution']} under policy v{e['policy_version']} "
                    f"({e['policy_digest']}): {e['rule']}: {e['reason']}")
        elif e["event"] == "Signed":
            text = f"signed input {e['input']} in {e['execution']}"
        else:
            text = f"received request {e['request_hash'][:16]}"
        lines.append(f"+{e['t']:9.3f}s  party {e['party']}  {text}")
    lines.append("")
    lines += [f"party {p}: {state}" for p, state in report["parties"].items()]
    return "\n".join(lines)


def render(report: dict[str, Any]) -> str:
    lines = [f"execution {report['execution']}: {report['verdict']}", ""]
    for e in report["timeline"]:
        d = {k: v for k, v in e.items() if k not in ("t", "at", "party", "event")}
        if e["event"] == "MessageAccepted":
            text = f"accepted {d['round']} {d['kind']} from party {d['from']} (seq {d['seq']})"
        elif e["event"] == "RoundAdvanced":
            text = f"entered {d['round']}, sent {len(d['sent'])} message(s), waiting for {d['waiting_for']}"
        elif e["event"] == "MessageRejected":
            text = f"REJECTED a message from {d['from']}: {d['reason']}"
        elif e["event"] == "Aborted":
            text = f"ABORTED at {d['round']}: {d['reason']} (culprits {d['culprits']})"
        elif e["event"] == "Completed":
            text = "completed"
        elif e["event"] == "Resumed":
            text = f"RESTARTED (pid {d['pid']}) and re-sent {d['resent']} recorded message(s)"
        else:
            text = f"started {d.get('kind')} with parties {d.get('participants')}"
        lines.append(f"+{e['t']:9.3f}s  party {e['party']}  {text}")
    lines.append("")
    for p, s in report["parties"].items():
        extra = ""
        if s.get("waiting_for"):
            extra = f", waiting for {s['waiting_for']}"
        if s.get("reason"):
            extra = f": {s['reason']}"
        lines.append(f"party {p}: {s['status']} (last round {s.get('round')}){extra}")
    return "\n".join(lines)
