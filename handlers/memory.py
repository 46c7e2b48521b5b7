"""An in-memory broker that drives party runtimes the way JetStream does.

It keeps one ordered log with stream sequences, drops republished message ids
(like ``Nats-Msg-Id`` deduplication) and delivers each party the subjects its
durable consumer would get. Tests and the store benchmark use it to run real
ceremonies through :class:`engine.ceremony.runtime.PartyRuntime` without a
server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from engine.ceremony.runtime import Outgoing, PartyRuntime, Step

__all__ = ["MemoryBroker"]


@dataclass
class MemoryBroker:
    parties: dict[int, PartyRuntime] = field(default_factory=dict)
    log: list[tuple[int, str, bytes]] = field(default_factory=list)  # (seq, subject, data)
    published: list[Outgoing] = field(default_factory=list)  # every publish, duplicates included
    cursors: dict[int, int] = field(default_factory=dict)
    down: set[int] = field(default_factory=set)
    on_step: Callable[[int, Step], None] | None = None
    clock: Callable[[], float] | None = None  # when set, deliveries carry their publish time
    _ids: set[str] = field(default_factory=set)
    _times: dict[int, float] = field(default_factory=dict)  # seq -> publish time

    def add(self, runtime: PartyRuntime) -> None:
        self.parties[runtime.party] = runtime
        self.cursors.setdefault(runtime.party, 0)
        self.publish_all(runtime.recover().outgoing)

    def publish(self, out: Outgoing) -> None:
        self.published.append(out)
        if out.msg_id in self._ids:
            return
        self._ids.add(out.msg_id)
        self.log.append((len(self.log) + 1, out.subject, out.data))
        if self.clock is not None:
            self._times[len(self.log)] = self.clock()

    def publish_all(self, outs: list[Outgoing]) -> None:
        for o in outs:
            self.publish(o)

    @staticmethod
    def wants(party: int, subject: str) -> bool:
        parts = subject.split(".")
        return len(parts) == 5 and parts[:2] == ["conclave", "mpc"] and parts[4] in ("all", str(party))

    def outcomes(self, execution: str) -> dict[int, bytes]:
        prefix = f"conclave.out.{execution}."
        return {int(s[len(prefix):]): d for _, s, d in self.log if s.startswith(prefix)}

    def run(self, max_steps: int = 100_000) -> int:
        """Deliver until no party has anything left to read; return the number of deliveries."""
        delivered = 0
        progress = True
        while progress and delivered < max_steps:
            progress = False
            for i, rt in self.parties.items():
                if i in self.down:
                    continue
                while self.cursors[i] < len(self.log):
                    seq, subject, data = self.log[self.cursors[i]]
                    self.cursors[i] += 1
                    if not self.wants(i, subject):
                        continue
                    step = rt.handle(data, subject, seq, self._times.get(seq))
                    if self.on_step is not None:
                        self.on_step(i, step)
                    self.publish_all(step.outgoing)
                    delivered += 1
                    progress = True
        return delivered
