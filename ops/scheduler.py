"""The withdrawal service: a sharded scheduler with presignature pools.

A worker owns some shards of ``conclave.withdrawals.<shard>`` through their
durable consumers. For each request it

1. claims the request id in the ``conclave_requests`` bucket (a duplicate of a
   finished request gets the original result back; a redelivered one resumes),
2. rebuilds the digests itself (the parties do too, and compare),
3. signs every digest with a healthy quorum, using a pooled presignature when one
   can be reserved (one round) or a full presign + sign otherwise,
4. retries transient faults with exponential backoff and jitter, leaving out any
   party an identifiable abort blamed, and dead-letters the request after
   ``max_attempts``,
5. checks every signature against the derived key, assembles the transaction and
   publishes the result on ``conclave.results.<request_id>``.

A policy refusal is final and is not retried. Each shard runs at most
``concurrency`` requests at once. A background task per worker keeps every
wallet's pool between its low and high watermarks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import nats.errors
import nats.js.errors
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from engine import withdrawal as wd
from engine.crypto import ecdsa
from handlers import withdrawals as wq
from handlers.jetstream import heartbeat
from ops.client import CeremonyFailed, Coordinator
from ops.deploy import Deployment
from schemas.withdrawal import RequestError, WithdrawalRequest, WithdrawalResult

__all__ = ["SchedulerConfig", "WithdrawalWorker", "PresignaturePool", "TransientFailure", "PolicyRefusal"]

log = logging.getLogger("conclave.scheduler")
logging.getLogger("nats.js.kv").setLevel(logging.ERROR)  # warns about key filters, which we do not use

# rules whose refusal is the answer, not a fault: retrying cannot change it
FINAL_RULES = re.compile(r"^(limits\.|velocity\.|destinations|window|initiator|approvals|digest|policy$|request)")
MAX_DELIVERIES = 5  # a request that fails inside the worker this often is dead-lettered
_ALREADY_SIGNED = re.compile(r"already signed in ([A-Za-z0-9_-]+)")


@dataclass(frozen=True)
class SchedulerConfig:
    shards: int = 2
    owned: tuple[int, ...] | None = None  # the shards this worker consumes; None: all of them
    concurrency: int = 16  # requests in flight per shard
    max_attempts: int = 4  # sign attempts per digest before the request is dead-lettered
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    pool_low: int = 2  # refill a pool that falls below this many presignatures ...
    pool_high: int = 8  # ... up to this many
    refill_parallel: int = 1  # presigns in flight while refilling (more uses more cores, delays withdrawals more)
    sign_round_timeout: float = 15.0
    presign_round_timeout: float = 120.0
    health_every: float = 1.0

    @classmethod
    def from_config(cls, cfg: dict[str, Any], **overrides: Any) -> SchedulerConfig:
        s = dict(cfg.get("scheduler") or {})
        s.update({k: v for k, v in overrides.items() if v is not None})
        if "owned" in s and s["owned"] is not None:
            s["owned"] = tuple(s["owned"])
        return cls(**s)


class TransientFailure(Exception):
    """An attempt failed for a reason a retry (perhaps with another quorum) may overcome."""

    def __init__(self, reason: str, culprits: Sequence[int] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.culprits = list(culprits)


class PolicyRefusal(Exception):
    """The parties refused for good (policy, bad request): the request's answer."""

    def __init__(self, reason: str, rule: str | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rule = rule


def _quorum_name(quorum: Sequence[int]) -> str:
    return "-".join(str(p) for p in quorum)


@dataclass
class PartyView:
    """What the parties last said about themselves: health, keys, policies."""

    coord: Coordinator
    parties: list[int]
    seen: dict[int, float] = field(default_factory=dict)
    status: dict[int, dict[str, Any]] = field(default_factory=dict)

    async def refresh(self) -> None:
        async def one(i: int) -> None:
            st = await self.coord.party_status(i, timeout=1.0)
            if st is not None and st.get("state") != "stopping":
                self.seen[i] = time.monotonic()
                self.status[i] = st

        async with anyio.create_task_group() as tg:
            for i in self.parties:
                tg.start_soon(one, i)

    def healthy(self) -> set[int]:
        now = time.monotonic()
        return {i for i, t in self.seen.items() if now - t < 3.0}

    def key(self, key_id: str) -> dict[str, Any] | None:
        return next((k for k in self.keys() if k["key_id"] == key_id), None)

    def keys(self) -> list[dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for st in self.status.values():
            for k in st.get("keys", []):
                found.setdefault(k["key_id"], k)
        return list(found.values())

    def policy_digest(self, key_id: str, quorum: Sequence[int]) -> bytes:
        digests = set()
        for i in quorum:
            pol = self.status.get(i, {}).get("policies", {}).get(key_id)
            if pol is None:
                raise TransientFailure(f"party {i} has not reported its policy for {key_id}")
            if "error" in pol:
                raise PolicyRefusal(f"policy: {pol['error']}", "policy")
            digests.add(pol["digest"])
        if len(digests) != 1:
            raise TransientFailure(f"parties {list(quorum)} enforce different policy versions for {key_id}")
        return bytes.fromhex(digests.pop())


class PresignaturePool:
    """The presignatures ready for each wallet and quorum, shared by every worker through a KV bucket."""

    def __init__(self, coord: Coordinator, kv: Any, cfg: SchedulerConfig) -> None:
        self.coord = coord
        self.kv = kv
        self.cfg = cfg
        self.made = 0
        self._candidates: dict[str, list[str]] = {}  # names last listed per pool; the KV entry decides
        self._known: dict[str, int] | None = None  # name -> revision, kept by watch() while it runs

    @staticmethod
    def _prefix(key_id: str, quorum: Sequence[int]) -> str:
        return f"{key_id}.{_quorum_name(quorum)}"

    async def watch(self) -> None:
        """Mirror the bucket's names and revisions, so reserving is one compare-and-delete and counting
        is free. Runs until cancelled; without it the pool lists the bucket instead."""
        watcher = await self.kv.watchall(meta_only=True)
        known: dict[str, int] = {}
        self._known = known
        try:
            async for entry in watcher:
                if entry is None:
                    continue  # the end of the initial listing
                if entry.operation in ("DEL", "PURGE"):
                    known.pop(entry.key, None)
                else:
                    known[entry.key] = entry.revision
        finally:
            self._known = None
            with anyio.CancelScope(shield=True):
                await watcher.stop()

    async def _names(self, key_id: str | None = None, quorum: Sequence[int] | None = None) -> list[str]:
        # every key, filtered here: server-side key filters need nats-server 2.10 and multi-token
        # filters are not passed through reliably
        try:
            names = await self.kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        if key_id is None:
            return names
        prefix = self._prefix(key_id, quorum) + "."
        return [n for n in names if n.startswith(prefix)]

    async def count(self, key_id: str, quorum: Sequence[int]) -> int:
        if self._known is not None:
            prefix = self._prefix(key_id, quorum) + "."
            return sum(1 for n in self._known if n.startswith(prefix))
        return len(await self._names(key_id, quorum))

    async def reserve(self, key_id: str, quorum: Sequence[int]) -> str | None:
        """Take one ready presignature for good (compare-and-delete), or None if the pool is empty."""
        prefix = self._prefix(key_id, quorum)
        known = self._known
        while known:
            name = next((n for n in known if n.startswith(prefix + ".")), None)
            if name is None:
                break
            revision = known.pop(name)  # before awaiting: concurrent reservations pick other names
            try:
                await self.kv.delete(name, last=revision)
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError):
                continue  # another worker took it first
            return name.rsplit(".", 1)[1]
        for refreshed in (False, True):  # no mirror, or it shows none: list the bucket itself
            if refreshed:
                self._candidates[prefix] = await self._names(key_id, quorum)
            names = self._candidates.setdefault(prefix, [])
            while names:
                name = names.pop()
                try:
                    entry = await self.kv.get(name)
                    await self.kv.delete(name, last=entry.revision)
                except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyWrongLastSequenceError,
                        nats.js.errors.APIError):
                    continue  # another shard took it first
                return name.rsplit(".", 1)[1]
        return None

    async def give_back(self, key_id: str, quorum: Sequence[int], presig_id: str) -> None:
        """Return an unused presignature (every party refused before spending it)."""
        await self.kv.put(f"{self._prefix(key_id, quorum)}.{presig_id}", b"ready")

    async def make(self, key_id: str, quorum: Sequence[int]) -> str:
        out = await self.coord.run("presign", quorum, {"key_id": key_id},
                                   round_timeout=self.cfg.presign_round_timeout)
        pid = out.result["presig_id"]
        await self.kv.put(f"{self._prefix(key_id, quorum)}.{pid}", b"ready")
        self.made += 1
        return pid

    async def refill(self, view: PartyView, stop: anyio.Event) -> None:
        """Keep each wallet's preferred quorum between the watermarks, ``refill_parallel`` presigns at a time."""
        while not stop.is_set():
            busy = False
            for key in view.keys():
                quorum = preferred_quorum(key, view.healthy())
                if quorum is None:
                    continue
                n = await self.count(key["key_id"], quorum)
                if n >= self.cfg.pool_low:
                    continue
                busy = True
                await self._top_up(key["key_id"], quorum, self.cfg.pool_high - n, stop)
            if not busy:
                with anyio.move_on_after(1.0):
                    await stop.wait()

    async def _top_up(self, key_id: str, quorum: tuple[int, ...], wanted: int, stop: anyio.Event) -> None:
        left = wanted

        async def one_lane() -> None:
            nonlocal left
            while left > 0 and not stop.is_set():
                left -= 1
                try:
                    await self.make(key_id, quorum)
                except (CeremonyFailed, TimeoutError) as exc:
                    log.warning("presignature refill for %s %s failed: %s", key_id, quorum, exc)
                    left = 0  # back to the outer loop, which re-reads health and levels
                    return

        async with anyio.create_task_group() as tg:
            for _ in range(max(1, self.cfg.refill_parallel)):
                tg.start_soon(one_lane)


def preferred_quorum(key: dict[str, Any], healthy: set[int], excluded: set[int] = frozenset()) -> tuple[int, ...] | None:
    """The first ``threshold`` healthy, non-excluded holders of the key, in party order."""
    usable = [p for p in sorted(key["parties"]) if p in healthy and p not in excluded]
    if len(usable) < key["threshold"]:
        return None
    return tuple(usable[: key["threshold"]])


def _execution(request_id: str, input_: int, attempt: int) -> str:
    # deterministic, so a worker that takes over a redelivered request finds the same ceremonies
    return f"w{hashlib.sha256(request_id.encode()).hexdigest()[:20]}-{input_}-{attempt}"


class WithdrawalWorker:
    """Consumes its shards, signs withdrawals and publishes results. Run with :meth:`run`."""

    def __init__(self, deployment: Deployment, config: SchedulerConfig | None = None, url: str | None = None) -> None:
        self.dep = deployment
        self.cfg = config or SchedulerConfig.from_config(deployment.config())
        self.url = url
        self.stop = anyio.Event()
        self.ready = anyio.Event()
        self.handled = 0
        self.coord: Coordinator | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        async with Coordinator(self.dep, self.url) as coord:
            self.coord = coord
            js = coord.js
            await wq.ensure_withdrawal_streams(js)
            self.requests = await wq.requests_bucket(js)
            self.pool = PresignaturePool(coord, await wq.presigs_bucket(js), self.cfg)
            self.view = PartyView(coord, self.dep.party_ids())
            await self.view.refresh()
            shards = self.cfg.owned if self.cfg.owned is not None else tuple(range(self.cfg.shards))
            for s in shards:
                await wq.ensure_shard_consumer(js, s, self.cfg.concurrency)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._health)
                tg.start_soon(self.pool.watch)
                if self.cfg.pool_high > 0:
                    tg.start_soon(self.pool.refill, self.view, self.stop)
                for s in shards:
                    tg.start_soon(self._shard, s)
                self.ready.set()
                log.info("withdrawal worker up: shards %s, %d in flight per shard", list(shards), self.cfg.concurrency)
                await self.stop.wait()
                tg.cancel_scope.cancel()

    async def _health(self) -> None:
        while not self.stop.is_set():
            await self.view.refresh()
            with anyio.move_on_after(self.cfg.health_every):
                await self.stop.wait()

    async def _shard(self, shard: int) -> None:
        js = self.coord.js
        sub = await js.pull_subscribe_bind(durable=wq.shard_consumer(shard), stream=wq.WITHDRAWALS_STREAM)
        limiter = anyio.CapacityLimiter(self.cfg.concurrency)
        async with anyio.create_task_group() as tg:
            while not self.stop.is_set():
                first = object()
                await limiter.acquire_on_behalf_of(first)
                try:
                    msgs = await sub.fetch(int(limiter.available_tokens) + 1, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    limiter.release_on_behalf_of(first)
                    continue
                except Exception as exc:  # broker restarting: pause and fetch again
                    limiter.release_on_behalf_of(first)
                    log.debug("shard %d fetch: %r", shard, exc)
                    await anyio.sleep(0.5)
                    continue
                for k, msg in enumerate(msgs):
                    token = first if k == 0 else object()
                    if k:
                        await limiter.acquire_on_behalf_of(token)
                    tg.start_soon(self._process, msg, limiter, token)
                if not msgs:
                    limiter.release_on_behalf_of(first)

    async def _process(self, msg: Any, limiter: anyio.CapacityLimiter, token: object) -> None:
        done = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(heartbeat, msg, done, 10.0)
                try:
                    result, deadletter = await self.handle(msg.data)
                    if result is not None:
                        await wq.publish_result(self.coord.js, result, deadletter=deadletter)
                    await msg.ack()
                    self.handled += 1
                except Exception as exc:
                    delivered = msg.metadata.num_delivered
                    if delivered < MAX_DELIVERIES:
                        # our fault or the broker's: leave it unacknowledged; it is redelivered and resumes
                        log.exception("withdrawal request on %s failed unexpectedly (delivery %d); it will be "
                                      "redelivered", msg.subject, delivered)
                    else:
                        await self._give_up(msg, f"internal error on {delivered} deliveries: {type(exc).__name__}")
                finally:
                    done.set()
        finally:
            limiter.release_on_behalf_of(token)

    async def _give_up(self, msg: Any, reason: str) -> None:
        """Dead-letter a request that keeps failing inside the worker, so it stops going round."""
        rid = _request_id_of(msg.data)
        log.error("giving up on withdrawal request %s: %s", rid, reason)
        if rid is not None:
            result = WithdrawalResult(rid, "failed", reason=reason)
            try:
                await self._finish(rid, {"status": "running"}, result)
                await wq.publish_result(self.coord.js, result, deadletter=True)
            except Exception:
                log.exception("could not record the failure of %s; it stays queued", rid)
                return
        await msg.ack()

    # -- one request ------------------------------------------------------------------

    async def handle(self, data: bytes) -> tuple[WithdrawalResult | None, bool]:
        """Work out the result of one queued request: (result, dead-letter it?)."""
        try:
            request = WithdrawalRequest.from_json(data)
        except RequestError as exc:
            rid = _request_id_of(data)
            log.warning("rejected a malformed withdrawal request %s: %s", rid, exc)
            if rid is None:
                return None, False
            return WithdrawalResult(rid, "rejected", reason=f"bad request: {exc}", rule="request"), False
        state = await self._claim(request)
        if state.get("hash") != request.request_hash().hex():
            # the same id for another request: never sign it, and leave the original's result in place
            log.warning("request id %s was reused for a different request; ignored (the original stands)",
                        request.request_id)
            return None, False
        if state.get("status") == "done":
            log.info("request %s already finished: returning the original result", request.request_id)
            return WithdrawalResult.from_json(state["result"]), False
        return await self._sign(request, state)

    async def _claim(self, request: WithdrawalRequest) -> dict[str, Any]:
        """The request's state: new (claimed now, atomically) or as an earlier delivery left it."""
        rid = request.request_id
        fresh = {"status": "running", "hash": request.request_hash().hex(), "attempts": 0, "sigs": {}}
        try:
            await self.requests.create(rid, wq.encode_state(fresh))
            return fresh
        except nats.js.errors.KeyWrongLastSequenceError:
            return wq.decode_state((await self.requests.get(rid)).value)

    async def _save(self, rid: str, state: dict[str, Any]) -> None:
        await self.requests.put(rid, wq.encode_state(state))

    async def _sign(self, request: WithdrawalRequest, state: dict[str, Any]) -> tuple[WithdrawalResult, bool]:
        rid = request.request_id
        key = self.view.key(request.key_id)
        if key is None:
            await self.view.refresh()  # a key made since the last health check
            key = self.view.key(request.key_id)
        if key is None:
            result = WithdrawalResult(rid, "rejected", reason=f"unknown wallet {request.key_id}", rule="request",
                                      attempts=state["attempts"])
            return await self._finish(rid, state, result), False
        try:
            prepared = wd.prepare(request, bytes.fromhex(key["public_key"]))
        except RequestError as exc:
            result = WithdrawalResult(rid, "rejected", reason=f"bad request: {exc}", rule="request")
            return await self._finish(rid, state, result), False
        excluded: set[int] = set()
        try:
            for i in range(len(prepared.digests)):
                if str(i) in state["sigs"]:
                    continue  # signed before a redelivery
                sig = await self._sign_input(request, prepared, key, i, state, excluded)
                state["sigs"][str(i)] = sig
                if i + 1 < len(prepared.digests):
                    await self._save(rid, state)  # the last one is saved with the result
        except PolicyRefusal as exc:
            result = WithdrawalResult(rid, "rejected", reason=exc.reason, rule=exc.rule, attempts=state["attempts"])
            return await self._finish(rid, state, result), False
        except TransientFailure as exc:
            result = WithdrawalResult(rid, "failed", reason=f"gave up after {state['attempts']} attempt(s): "
                                      f"{exc.reason}", culprits=sorted(excluded), attempts=state["attempts"])
            return await self._finish(rid, state, result), True
        sigs = [(int(s["r"], 16), int(s["s"], 16), int(s["v"])) for _, s in sorted(state["sigs"].items(),
                                                                                   key=lambda kv: int(kv[0]))]
        for digest, (r, s, v) in zip(prepared.digests, sigs):
            if not ecdsa.is_releasable(prepared.public_key, digest, r, s, v):
                raise RuntimeError(f"request {rid}: a signature fails the release check")  # never released
        raw, tx_hash = wd.assemble(prepared, sigs)
        sig_json = [{"r": f"{r:064x}", "s": f"{s:064x}", "v": v} for r, s, v in sigs]
        result = WithdrawalResult(rid, "signed", raw_tx=raw, tx_hash=tx_hash, signature=sig_json[0],
                                  signatures=sig_json, culprits=sorted(excluded), attempts=state["attempts"])
        return await self._finish(rid, state, result), False

    async def _finish(self, rid: str, state: dict[str, Any], result: WithdrawalResult) -> WithdrawalResult:
        result = replace(result, request_hash=state.get("hash"))
        state.update(status="done", result=result.to_json())
        await self._save(rid, state)
        log.info("request %s %s%s", rid, result.status, f": {result.reason}" if result.reason else "")
        return result

    async def _sign_input(self, request: WithdrawalRequest, prepared: wd.Prepared, key: dict[str, Any], i: int,
                          state: dict[str, Any], excluded: set[int]) -> dict[str, Any]:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.cfg.max_attempts),
            wait=wait_exponential_jitter(initial=self.cfg.backoff_initial, max=self.cfg.backoff_max),
            retry=retry_if_exception_type(TransientFailure), sleep=anyio.sleep, reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                state["attempts"] += 1
                return await self._attempt(request, prepared, key, i, state["attempts"], excluded)
        raise AssertionError("unreachable")

    async def _attempt(self, request: WithdrawalRequest, prepared: wd.Prepared, key: dict[str, Any], i: int,
                       attempt: int, excluded: set[int]) -> dict[str, Any]:
        quorum = preferred_quorum(key, self.view.healthy(), excluded)
        if quorum is None:
            raise TransientFailure(f"fewer than {key['threshold']} healthy parties outside {sorted(excluded)}")
        policy = self.view.policy_digest(request.key_id, quorum)
        presig = await self.pool.reserve(request.key_id, quorum)
        params: dict[str, Any] = {"key_id": request.key_id, "digest": prepared.digests[i],
                                  "withdrawal": request.encode(), "input": i, "policy": policy}
        if presig is not None:
            params["presig_id"] = presig
        execution = _execution(request.request_id, i, attempt)
        try:
            out = await self.coord.run("sign", quorum, params, execution=execution,
                                       round_timeout=self.cfg.sign_round_timeout)
        except CeremonyFailed as exc:
            return await self._failed(request, prepared, i, quorum, presig, execution, exc, excluded)
        return self._signature(out.result, prepared, i)

    def _signature(self, result: dict[str, Any], prepared: wd.Prepared, i: int) -> dict[str, Any]:
        if bytes.fromhex(result["public_key"]) != prepared.public_key or bytes.fromhex(result["digest"]) \
                != prepared.digests[i]:
            raise TransientFailure("the parties signed for another key or digest")
        return {"r": result["r"], "s": result["s"], "v": result["v"]}

    async def _failed(self, request: WithdrawalRequest, prepared: wd.Prepared, i: int, quorum: tuple[int, ...],
                      presig: str | None, execution: str, exc: CeremonyFailed, excluded: set[int]) -> dict[str, Any]:
        reports = exc.reports
        rules = {r.get("rule") for r in reports.values() if r.get("status") == "rejected"}
        if any(r and FINAL_RULES.match(r) for r in rules):
            rule = next(r for r in rules if r and FINAL_RULES.match(r))
            reason = next(str(r["reason"]) for r in reports.values() if r.get("rule") == rule)
            if presig is not None and all(r.get("status") == "rejected" for r in reports.values()) \
                    and set(reports) == set(quorum):
                await self.pool.give_back(request.key_id, quorum, presig)
            await self.coord.abort(execution, f"refused: {reason}", wait=0.1)
            raise PolicyRefusal(reason, rule)
        for r in reports.values():
            m = _ALREADY_SIGNED.search(str(r.get("reason", "")))
            if m:  # signed before this worker (or its predecessor) recorded it: fetch that outcome
                earlier = await self._earlier_result(m.group(1))
                if earlier is not None:
                    return self._signature(earlier, prepared, i)
        await self.coord.abort(execution, f"attempt failed: {exc.reason}", wait=0.1)
        if "policy-version" in rules:
            await self.view.refresh()  # a policy was just applied: bind the new digest on the retry
        if exc.culprits:
            excluded.update(exc.culprits)
        log.warning("request %s attempt %s on %s failed: %s (culprits %s)", request.request_id, execution, quorum,
                    exc.reason, exc.culprits)
        raise TransientFailure(exc.reason, exc.culprits)

    async def _earlier_result(self, execution: str) -> dict[str, Any] | None:
        from handlers.jetstream import subscribe_outcomes

        async with subscribe_outcomes(self.coord.js, execution) as outcomes:
            with anyio.move_on_after(2.0):
                while True:
                    party, raw = await outcomes.next()
                    rep = self.coord._open(raw, party)
                    if rep and rep.get("status") == "completed":
                        return rep["result"]
        return None


def _request_id_of(data: bytes) -> str | None:
    try:
        rid = json.loads(data).get("request_id")
    except Exception:
        return None
    return rid if isinstance(rid, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,80}", rid) else None
