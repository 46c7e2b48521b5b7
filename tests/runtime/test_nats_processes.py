"""The party runtime as real processes: ``conclave up`` starts an embedded
nats-server and three ``python -m ops.party`` processes, and the tests drive
them through the CLI (``ops.commands``) and :class:`ops.client.Coordinator`.

Every deployment carries a wiretap: a core-NATS subscriber on
``conclave.mpc.>`` and ``conclave.out.>`` that sees every publish, including
the ones JetStream deduplicates. It records each ``Nats-Msg-Id`` with every
payload published under it; a party that re-sends after a crash must re-send
byte-identical envelopes, so no msg id may ever carry two different payloads.

Nothing here touches the system NATS on port 4222: each deployment starts its
own nats-server on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import coincurve
import pytest

from engine.ceremony.store import PartyStore
from engine.crypto import ecdsa
from handlers.jetstream import MAX_MSG_SIZE, MPC_STREAM, PublishError, close, connect, party_consumer_name, publish
from handlers.party import CRASH_ENV
from ops import commands
from ops.broker import EmbeddedNats
from ops.client import CeremonyFailed, CeremonyOutcome, Coordinator, new_execution_id
from ops.deploy import Deployment, pid_alive
from schemas.envelope import Identity, seal
from tests.helpers_openssl import openssl_verify

REPO = Path(__file__).resolve().parents[2]
PRIME_POOL = REPO / "tests" / "fixtures" / "safe_primes.json"
ROUND_TIMEOUT = 30.0  # comfortably above a party's restart time
SHORT_TIMEOUT = 3.0  # for the "party gone for good" deployment

pytestmark = pytest.mark.timeout(300)


# --------------------------------------------------------------------------- helpers


def _parser() -> argparse.ArgumentParser:
    # the runtime subcommands exactly as `conclave` registers them (ops/cli.py adds only
    # the offline commands around these, which these tests do not need)
    parser = argparse.ArgumentParser(prog="conclave")
    commands.configure(parser.add_subparsers(dest="command", required=True))
    return parser


def conclave(home: Path, command: str, *args: Any) -> tuple[int, dict[str, Any] | None]:
    """Run ``conclave <command> --data-dir home --json args...`` in-process: (exit code, JSON output)."""
    parsed = _parser().parse_args([command, "--data-dir", str(home), "--json", *map(str, args)])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = parsed.func(parsed)
    lines = [line for line in buf.getvalue().splitlines() if line.strip()]
    return code, (json.loads(lines[-1]) if lines else None)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def check_signature(result: dict[str, Any], public_key: str, digest: bytes) -> None:
    """OpenSSL accepts the DER signature, s is low, and v recovers the group key."""
    assert result["public_key"] == public_key
    assert bytes.fromhex(result["digest"]) == digest
    pub = bytes.fromhex(public_key)
    r, s, v = int(result["r"], 16), int(result["s"], 16), int(result["v"])
    der = bytes.fromhex(result["der"])
    assert openssl_verify(pub, digest, der), "OpenSSL rejects the signature"
    assert ecdsa.der_decode(der) == (r, s)
    assert 0 < s <= ecdsa.HALF_Q, "signature is not low-S"
    assert ecdsa.recover(digest, ecdsa.Signature(r, s, v)).to_bytes() == pub
    recovered = coincurve.PublicKey.from_signature_and_message(
        r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v]), digest, hasher=None)
    assert recovered.format(compressed=True) == pub


def _ours(pid: int, home: Path) -> bool:
    """Only ever signal processes this deployment started (guards against reused pids)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return str(home) in cmdline or str(home.resolve()) in cmdline


class Wiretap:
    """Core-NATS subscriber seeing every publish on the MPC and outcome subjects."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._payloads: dict[str, set[bytes]] = defaultdict(set)
        self._log: list[tuple[float, str, str, bytes]] = []  # (monotonic time, subject, msg id, data)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="wiretap", daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(20), f"wiretap did not subscribe: {self._error!r}"
        assert self._error is None, self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        nc = await connect(self.url, "conclave-test-wiretap")

        async def record(msg) -> None:
            msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
            data = bytes(msg.data)
            with self._lock:
                self._payloads[msg_id].add(data)
                self._log.append((time.monotonic(), msg.subject, msg_id, data))

        try:
            for subject in ("conclave.mpc.>", "conclave.out.>"):
                await nc.subscribe(subject, cb=record, pending_bytes_limit=512 * 1024 * 1024)
            await nc.flush()
            self._ready.set()
            await self._stop.wait()
        finally:
            await close(nc)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def conflicts(self) -> dict[str, int]:
        """Msg ids that were published with more than one distinct payload."""
        with self._lock:
            return {mid: len(p) for mid, p in self._payloads.items() if len(p) > 1}

    def published(self, prefix: str = "") -> list[tuple[float, str, str, bytes]]:
        """(time, subject, msg id, data) of every publish whose msg id starts with ``prefix``, in order."""
        with self._lock:
            return [m for m in self._log if m[2].startswith(prefix)]

    def wait_for(self, prefix: str, timeout: float = 30.0) -> tuple[float, str, str, bytes]:
        return wait_until(lambda: next(iter(self.published(prefix)), None), timeout, f"a publish of {prefix}*")


class Cluster:
    """A deployment made by ``conclave up``, with its wiretap."""

    def __init__(self, home: Path, round_timeout: float) -> None:
        self.home = home
        self.dep = Deployment(home)
        self.round_timeout = round_timeout
        self.tap: Wiretap | None = None

    def up(self) -> None:
        code, out = conclave(self.home, "up", "--security-level", "dev-2048", "--prime-pool", PRIME_POOL, "--pool-high", "0",
                             "--round-timeout", self.round_timeout)
        assert code == 0, out
        assert [p["started"] for p in out["parties"]] == [True, True, True]
        self.tap = Wiretap(self.url)
        self.tap.start()

    @property
    def url(self) -> str:
        return self.dep.config()["nats"]["url"]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def pid_files(self) -> list[Path]:
        return [self.home / "nats" / "nats.pid", *sorted(self.home.glob("party-*/party.pid"))]

    def down(self) -> None:
        if self.tap is not None:
            self.tap.stop()
        pids = []
        for f in self.pid_files():
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(f.read_text().strip()))
        pids = [p for p in pids if pid_alive(p) and _ours(p, self.home)]
        for pid in pids:  # a test may have left a party stopped (SIGSTOP): SIGTERM needs it running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        try:
            conclave(self.home, "down")
        finally:
            for pid in pids:
                if pid_alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    # -- parties --
    def start_party(self, i: int, env: dict[str, str] | None = None) -> int:
        pid = self.dep.start_party(i, extra_env=env)
        self.dep.wait_ready(i, pid)
        return pid

    def restart_party(self, i: int, env: dict[str, str] | None = None) -> int:
        self.dep.stop_pid(self.dep.party_pid(i))
        return self.start_party(i, env)

    def ensure_running(self, i: int, not_pid: int | None = None) -> None:
        """Party ``i`` runs, and not as process ``not_pid`` (one started with fault injection)."""
        pid = self.dep.party_pid(i)
        if pid_alive(pid) and pid != not_pid:
            return
        self.dep.stop_pid(pid)
        self.start_party(i)

    def status(self) -> dict[str, Any]:
        code, out = conclave(self.home, "status")
        assert code == 0, out
        return out

    def party_status(self, i: int) -> dict[str, Any]:
        return next(p for p in self.status()["parties"] if p["id"] == i)

    def replay(self, execution: str) -> dict[str, Any]:
        code, out = conclave(self.home, "replay", execution)
        assert code == 0, out
        return out

    def log_tail(self, i: int, n: int = 3000) -> str:
        return (self.dep.party_dir(i) / "party.log").read_text(errors="replace")[-n:]

    def assert_no_conflicting_resends(self) -> None:
        assert self.tap is not None
        assert self.tap.conflicts() == {}, "a msg id was published with two different payloads"


class Background:
    """One ceremony run by a Coordinator in its own thread (and event loop)."""

    def __init__(self, dep: Deployment, kind: str, participants: tuple[int, ...], params: dict[str, Any], *,
                 execution: str | None = None, timeout: float = 150.0, round_timeout: float | None = None) -> None:
        self.dep = dep
        self.kind = kind
        self.participants = participants
        self.params = params
        self.execution = execution or new_execution_id(kind)
        self.timeout = timeout
        self.round_timeout = round_timeout
        self.outcome: CeremonyOutcome | None = None
        self.error: BaseException | None = None
        self.t0 = time.monotonic()
        self.elapsed: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"ceremony-{self.execution}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        async def go() -> CeremonyOutcome:
            async with Coordinator(self.dep) as c:
                if self.round_timeout is not None:
                    c.round_timeout = self.round_timeout
                return await c.run(self.kind, self.participants, self.params, execution=self.execution,
                                    timeout=self.timeout)

        try:
            self.outcome = anyio.run(go)
        except BaseException as exc:  # re-raised by result()
            self.error = exc
        finally:
            self.elapsed = time.monotonic() - self.t0

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float | None = None) -> CeremonyOutcome:
        self._thread.join(self.timeout + 20 if timeout is None else timeout)
        assert not self._thread.is_alive(), f"ceremony {self.execution} still running"
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome


def run_ceremony(dep: Deployment, kind: str, participants: tuple[int, ...], params: dict[str, Any],
                 **kw: Any) -> CeremonyOutcome:
    return Background(dep, kind, participants, params, **kw).result()


def digest_of(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


async def pending_acks(url: str, party: int) -> int:
    """Messages delivered to party ``party``'s durable consumer and not acknowledged."""
    nc = await connect(url, "conclave-test-inspect")
    try:
        info = await nc.jetstream().consumer_info(MPC_STREAM, party_consumer_name(party))
        return info.num_ack_pending
    finally:
        await close(nc)


@contextlib.contextmanager
def frozen(pid: int):
    """SIGSTOP a party process for the duration (always SIGCONT afterwards)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("conclave") / "deploy", ROUND_TIMEOUT)
    try:
        c.up()
        yield c
    finally:
        c.down()


@pytest.fixture(scope="module")
def group_key(cluster) -> dict[str, Any]:
    """One 2-of-3 key, made once through ``conclave keygen``."""
    code, out = conclave(cluster.home, "keygen", "--threshold", 2, "--parties", 3)
    assert code == 0, (out, cluster.log_tail(1))
    return out


@pytest.fixture(autouse=True)
def _no_conflicting_resends(request):
    """After every test: whatever deployment it used never saw one msg id with two payloads."""
    yield
    for name in ("cluster", "short"):
        if name in request.fixturenames:
            c = request.getfixturevalue(name)
            c = c[0] if isinstance(c, tuple) else c
            c.assert_no_conflicting_resends()


# --------------------------------------------------------------------------- 1. end to end


def test_keygen_and_sign_end_to_end(cluster, group_key):
    assert group_key["threshold"] == 2 and group_key["parties"] == [1, 2, 3]
    key_id, pub = group_key["key_id"], group_key["public_key"]
    assert len(bytes.fromhex(pub)) == 33

    # (a party answers status from a snapshot refreshed just after it acks, so allow it a moment)
    st = wait_until(lambda: (s := cluster.status())["ceremonies"] == [] and s, 10, "no ceremony in flight")
    assert st["nats"]["reachable"]
    (key,) = [k for k in st["keys"] if k["key_id"] == key_id]
    assert key["holders"] == [1, 2, 3] and key["public_key"] == pub

    for signers in ("1,2", "2,3", "1,3"):
        digest = digest_of(f"end to end {signers}")
        code, out = conclave(cluster.home, "sign", "--key", key_id, "--digest", digest.hex(), "--signers", signers)
        assert code == 0, out
        assert out["signers"] == [int(x) for x in signers.split(",")] and out["key_id"] == key_id
        check_signature(out, pub, digest)
        rep = cluster.replay(out["execution"])
        assert rep["verdict"] == "completed at every participant"
        assert {p for p, s in rep["parties"].items() if s["status"] == "completed"} == set(signers.split(","))

    # a presignature made ahead, then spent
    code, out = conclave(cluster.home, "presign", "--key", key_id, "--signers", "1,3", "--count", 1)
    assert code == 0, out
    (presig,) = out["presignatures"]
    digest = digest_of("end to end with a presignature")
    code, out = conclave(cluster.home, "sign", "--key", key_id, "--digest", digest.hex(), "--signers", "1,3",
                         "--presig", presig)
    assert code == 0, out
    check_signature(out, pub, digest)
    pools = cluster.status()["presignatures"][key_id]
    assert pools["1"] == pools["3"] == {"available": 0, "consumed": 1}


# --------------------------------------------------------------------------- 2. crash and restart

KEYGEN_TOKENS = ["keygen-1", "keygen-2", "keygen-3", "aux-1", "aux-2", "aux-3"]
SIGN_TOKENS = ["presign-1", "presign-2", "presign-3", "sign-1"]
CRASH_CASES = [(t, p) for t in KEYGEN_TOKENS + SIGN_TOKENS for p in ("after-commit", "after-publish")]
VICTIM = 2


def _ceremony_for(token: str, label: str, group_key) -> tuple[str, tuple[int, ...], dict[str, Any]]:
    if token in KEYGEN_TOKENS:
        return "keygen", (1, 2, 3), {"threshold": 2}
    return "sign", (1, 2), {"key_id": group_key["key_id"], "digest": digest_of(label)}


def _outcome_or_victim_log(cluster, bg) -> CeremonyOutcome:
    """The background ceremony's outcome; on failure, the victim's log tail goes in the assertion."""
    try:
        return bg.result()
    except CeremonyFailed as exc:
        raise AssertionError(f"{exc}\n--- party {VICTIM} log ---\n{cluster.log_tail(VICTIM)}") from exc


@pytest.mark.parametrize(("token", "point"), CRASH_CASES, ids=[f"{t}:{p}" for t, p in CRASH_CASES])
def test_crash_and_restart_at_every_round_boundary(cluster, group_key, token, point):
    dep = cluster.dep
    crashing = cluster.restart_party(VICTIM, {CRASH_ENV: f"{token}:{point}"})
    kind, participants, params = _ceremony_for(token, f"crash {token}:{point}", group_key)
    bg = Background(dep, kind, participants, params)
    try:
        wait_until(lambda: not pid_alive(crashing) or bg.done(), 60, f"party {VICTIM} to crash at {token}")
        assert not pid_alive(crashing), f"party {VICTIM} never crashed; ceremony: {bg.error or bg.outcome}"
        died = time.monotonic()
        restarted = cluster.start_party(VICTIM)
        outcome = _outcome_or_victim_log(cluster, bg)
    finally:
        cluster.ensure_running(VICTIM, not_pid=crashing)
    assert set(outcome.reports) == set(participants)

    if kind == "keygen":
        assert outcome.result["threshold"] == 2 and outcome.result["parties"] == [1, 2, 3]
        # the restarted party's share is good: it signs with party 1 under the new key
        digest = digest_of(f"after crash {token}:{point}")
        sig = run_ceremony(dep, "sign", (1, VICTIM), {"key_id": outcome.result["key_id"], "digest": digest})
        check_signature(sig.result, outcome.result["public_key"], digest)
    else:
        check_signature(outcome.result, group_key["public_key"], params["digest"])

    # the restarted party re-sent the very bytes of the round it crashed in, and never different ones
    cluster.assert_no_conflicting_resends()
    sent = cluster.tap.published(f"{outcome.execution}:{token}:{VICTIM}:")
    assert sent, f"party {VICTIM} sent nothing for {token}"
    by_id: dict[str, list[float]] = defaultdict(list)
    for at, _, msg_id, _ in sent:
        by_id[msg_id].append(at)
    for msg_id, times in by_id.items():
        if point == "after-commit":  # killed before publishing: only the restarted process sent it
            assert min(times) > died, msg_id
        else:  # published, killed before the ack, published again (deduplicated) on restart
            assert min(times) < died < max(times), msg_id

    rep = cluster.replay(outcome.execution)
    assert rep["verdict"] == "completed at every participant", rep["verdict"]
    mine = [e for e in rep["timeline"] if e["party"] == VICTIM]
    names = [e["event"] for e in mine]
    assert names.count("Resumed") == 1, names
    resumed = mine[names.index("Resumed")]
    assert resumed["pid"] == restarted
    last_round = [e for e in mine[: names.index("Resumed")] if e["event"] == "RoundAdvanced"][-1]
    assert last_round["round"] == token
    assert resumed["resent"] == len(last_round["sent"])
    assert set(by_id) == {m for m in last_round["sent"] if m.startswith(f"{outcome.execution}:{token}:")}
    assert names[-1] == "Completed"


def test_crash_with_a_fetched_batch_in_hand(cluster):
    """The victim fetches several messages at once and dies after handling the first: the
    others, delivered but never acked, must still be processed after the restart."""
    dep = cluster.dep
    crashing = cluster.restart_party(VICTIM, {CRASH_ENV: "keygen-1:after-commit"})
    ex = new_execution_id("keygen")
    try:
        with frozen(crashing):
            time.sleep(1.0)  # let its pending pull request (0.5 s) expire: the next fetch takes all three at once
            bg = Background(dep, "keygen", (1, 2, 3), {"threshold": 2}, execution=ex)
            # both peers' keygen-1 broadcasts queue up behind the start message
            cluster.tap.wait_for(f"{ex}:keygen-1:1:")
            cluster.tap.wait_for(f"{ex}:keygen-1:3:")
        wait_until(lambda: not pid_alive(crashing), 30, f"party {VICTIM} to crash")
        # the dead process held the peers' keygen-1 messages, delivered and never acked
        assert anyio.run(pending_acks, cluster.url, VICTIM) >= 2
        cluster.start_party(VICTIM)
        t0 = time.monotonic()
        outcome = _outcome_or_victim_log(cluster, bg)
    finally:
        cluster.ensure_running(VICTIM, not_pid=crashing)
    assert outcome.result["parties"] == [1, 2, 3]
    # not held up until the broker's ack wait (30 s) redelivers the unacked messages
    assert time.monotonic() - t0 < 20


# --------------------------------------------------------------------------- 3. bad messages


def test_bad_messages_to_a_live_party(cluster, group_key):
    dep, tap = cluster.dep, cluster.tap
    target = 2
    pid = dep.party_pid(target)
    before = cluster.party_status(target)
    assert before["pid"] == pid

    # a finished execution A whose envelopes to the target we can replay
    a = run_ceremony(dep, "sign", (1, target), {"key_id": group_key["key_id"], "digest": digest_of("A")})
    _, a_subject, _, a_data = tap.wait_for(f"{a.execution}:presign-1:1:{target}")
    assert a_subject == f"conclave.mpc.{a.execution}.presign-1.{target}"

    b_ex = new_execution_id("sign")
    digest = digest_of("B")
    oversize_refused: list[Exception] = []

    async def inject() -> None:
        nc = await connect(cluster.url, "conclave-test-attacker")
        js = nc.jetstream()
        n = 0

        async def put(subject: str, data: bytes) -> None:
            nonlocal n
            n += 1
            await publish(js, subject, data, f"attacker-{b_ex}-{n}", retry_for=10)

        try:
            _, start_subject, _, start = tap.wait_for(f"{b_ex}:start:0:all")
            _, bcast_subject, _, bcast = tap.wait_for(f"{b_ex}:presign-1:1:all")
            direct_subject = f"conclave.mpc.{b_ex}.presign-1.{target}"
            # (a) garbage, on B's subject and on an execution nobody knows
            await put(direct_subject, b"\x00not an envelope")
            await put(f"conclave.mpc.nobody-knows-{b_ex[-8:]}.presign-1.{target}", b"\x00not an envelope")
            # (b) a real envelope stored twice (another Nats-Msg-Id), and the coordinator's start likewise
            await put(bcast_subject, bcast)
            await put(start_subject, start)
            # (c) a real envelope of execution A on execution B's subject
            await put(direct_subject, a_data)
            # (d) an envelope claiming to come from party 1, signed with party 3's key
            me3 = dep.identity(3)
            forger = Identity(party=1, sign_secret=me3.sign_secret, box_secret=me3.box_secret)
            forged = seal(forger, dep.roster(), protocol="presign", execution=b_ex, round="presign-2",
                          recipient=target, body=b"\x01forged", confidential=False)
            await put(f"conclave.mpc.{b_ex}.presign-2.{target}", forged)
            # (e) over the stream's 4 MiB limit (under the server's 8 MiB max_payload): refused at publish
            try:
                await publish(js, direct_subject, b"\xff" * (MAX_MSG_SIZE + 1), f"attacker-{b_ex}-huge",
                              retry_for=5)
            except PublishError as exc:
                oversize_refused.append(exc)
            # ... so a message just under it instead
            await put(direct_subject, b"\xff" * (MAX_MSG_SIZE - 1024))
        finally:
            await close(nc)

    # the target is frozen while party 1 starts B and the attacker's messages queue up behind
    # party 1's real ones; thawed, it must reject them all and still finish B
    with frozen(pid):
        bg = Background(dep, "sign", (1, target), {"key_id": group_key["key_id"], "digest": digest}, execution=b_ex)
        anyio.run(inject)
    outcome = bg.result()
    check_signature(outcome.result, group_key["public_key"], digest)
    assert oversize_refused, "the broker stored a message above the stream's max_msg_size"

    after = cluster.party_status(target)
    assert after["pid"] == pid and after["state"] in ("idle", "busy")
    # unknown execution + replayed start are not tied to a running ceremony: counted in status
    assert after["rejected_messages"] >= before["rejected_messages"] + 2

    rep = cluster.replay(b_ex)
    assert rep["parties"][str(target)]["status"] == "completed"
    reasons = [e["reason"] for e in rep["timeline"] if e["party"] == target and e["event"] == "MessageRejected"]
    # 4 MiB - 1 KiB is under the envelope limit too, so that one fails as undecodable like the garbage
    assert sum("not a msgpack envelope" in r for r in reasons) == 2, reasons
    for want in ("duplicate message", "subject mismatch", "bad signature for claimed sender 1"):
        assert sum(want in r for r in reasons) == 1, (want, reasons)
    assert len(reasons) == 5, reasons
    # the forged envelope was rejected, not blamed on party 1
    assert rep["parties"][str(target)].get("culprits") in (None, [])
    # the replayed start drew no second (contradicting) outcome from the target, under any msg id
    outcomes = {d for _, subject, _, d in tap.published() if subject == f"conclave.out.{b_ex}.{target}"}
    assert len(outcomes) == 1

    # and an honest sign still works
    digest = digest_of("after the attack")
    code, out = conclave(cluster.home, "sign", "--key", group_key["key_id"], "--digest", digest.hex(),
                         "--signers", f"1,{target}")
    assert code == 0, out
    check_signature(out, group_key["public_key"], digest)


# --------------------------------------------------------------------------- 4. a party gone for good


@pytest.fixture(scope="class")
def short(tmp_path_factory):
    """A deployment whose rounds time out after 3 s, and a 2-of-3 key made on it."""
    c = Cluster(tmp_path_factory.mktemp("conclave-short") / "deploy", SHORT_TIMEOUT)
    try:
        c.up()
        # keygen's aux rounds may take longer than 3 s on a busy machine: this one ceremony gets 30 s rounds
        kg = run_ceremony(c.dep, "keygen", (1, 2, 3), {"threshold": 2}, round_timeout=ROUND_TIMEOUT)
        yield c, kg.result
    finally:
        c.down()


def _vault_has(dep: Deployment, party: int, entry: str) -> bool:
    store = PartyStore(party, dep.store_config(party), dep.kek(party))
    try:
        return store.vault.get(entry) is not None
    finally:
        store.close()


class TestPartyGoneForGood:
    def test_sign_aborts_blaming_the_missing_party(self, short):
        c, key = short
        dep = c.dep
        c.ensure_running(1)
        c.ensure_running(2)
        dep.stop_pid(dep.party_pid(2))
        assert not pid_alive(dep.party_pid(2))

        digest = digest_of("nobody answers")
        bg = Background(dep, "sign", (1, 2), {"key_id": key["key_id"], "digest": digest}, timeout=60)
        with pytest.raises(CeremonyFailed) as info:
            bg.result()
        exc = info.value
        assert exc.status == "aborted" and exc.culprits == [2], exc
        assert "timed out" in exc.reason
        # the 3 s round timeout, the 1 s expiry sweep, the coordinator's 2 s grace for other reports
        assert SHORT_TIMEOUT <= bg.elapsed <= SHORT_TIMEOUT + 6, bg.elapsed

        rep = c.replay(bg.execution)
        p1 = rep["parties"]["1"]
        assert p1["status"] == "aborted" and p1["culprits"] == [2]
        assert rep["parties"]["2"]["status"] == "no record"
        assert not _vault_has(dep, 1, f"ceremony:{bg.execution}"), "party 1 kept the aborted ceremony's data key"

        # party 2 comes back and finds the start in its backlog, older than the round deadline:
        # it records the ceremony as aborted without computing anything for it
        c.start_party(2)
        wait_until(lambda: c.replay(bg.execution)["parties"]["2"]["status"] == "aborted", 30,
                   "party 2 to record the abort")
        p2 = c.replay(bg.execution)["parties"]["2"]
        assert "start arrived" in p2["reason"] and p2["round"] is None, p2
        assert c.tap.published(f"{bg.execution}:presign-1:2:") == []
        assert not _vault_has(dep, 2, f"ceremony:{bg.execution}")
        wait_until(lambda: c.status()["ceremonies"] == [], 30, "no ceremony in flight")
        st = c.status()
        assert all(p["state"] == "idle" for p in st["parties"]), st["parties"]

    def test_presignature_is_never_used_twice(self, short):
        c, key = short
        dep = c.dep
        c.ensure_running(1)
        c.ensure_running(2)
        pre = run_ceremony(dep, "presign", (1, 2), {"key_id": key["key_id"]}, round_timeout=ROUND_TIMEOUT)
        presig = pre.result["presig_id"]
        assert _vault_has(dep, 1, f"presig:{presig}")

        dep.stop_pid(dep.party_pid(2))
        first = Background(dep, "sign", (1, 2), {"key_id": key["key_id"], "digest": digest_of("first"),
                                                 "presig_id": presig}, timeout=60)
        with pytest.raises(CeremonyFailed) as info:
            first.result()
        assert info.value.status == "aborted" and info.value.culprits == [2]
        # party 1 spent the presignature on the first attempt and destroyed its secrets
        assert not _vault_has(dep, 1, f"presig:{presig}")
        assert not _vault_has(dep, 1, f"ceremony:{first.execution}")

        c.start_party(2)
        wait_until(lambda: c.status()["ceremonies"] == [], 30, "party 2 to work through its backlog")
        # the start was stale by then: party 2 aborts without a partial signature, so no
        # signature for the aborted request exists anywhere
        assert c.replay(first.execution)["parties"]["2"]["status"] == "aborted"
        assert c.tap.published(f"{first.execution}:sign-1:2:") == []
        pools = c.status()["presignatures"][key["key_id"]]
        assert pools["1"] == pools["2"] == {"available": 0, "consumed": 1}, pools
        assert not _vault_has(dep, 2, f"presig:{presig}")

        digest = digest_of("second")
        code, out = conclave(c.home, "sign", "--key", key["key_id"], "--digest", digest.hex(), "--signers", "1,2",
                             "--presig", presig)
        assert code == 3, out
        assert out["status"] == "rejected", out
        assert "presignature already used" in out["reason"], out
        second = out["execution"]
        # nobody computed a partial signature from it for the second execution
        assert c.tap.published(f"{second}:sign-1:") == []
        # at most one execution ever saw a sign-1 message from each party for this presignature
        for party in (1, 2):
            users = {m[2].split(":")[0] for m in c.tap.published() if f":sign-1:{party}:" in m[2]
                     and m[2].split(":")[0] in (first.execution, second)}
            assert len(users) <= 1, (party, users)


# --------------------------------------------------------------------------- 5. broker restart


def test_broker_restart_during_keygen(cluster):
    dep = cluster.dep
    for i in (1, 2, 3):
        cluster.ensure_running(i)
    ex = new_execution_id("keygen")
    bg = Background(dep, "keygen", (1, 2, 3), {"threshold": 2}, execution=ex)
    cluster.tap.wait_for(f"{ex}:aux-1:")  # mid-ceremony: keygen done, aux-info under way

    old = dep.nats_pid()
    assert _ours(old, cluster.home)
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: not pid_alive(old), 10, "the nats-server to die")
    time.sleep(0.5)
    server = EmbeddedNats(store_dir=cluster.home / "nats", port=cluster.port,
                          log_file=cluster.home / "nats" / "nats.log")
    server.start(detach=True)
    (cluster.home / "nats" / "nats.pid").write_text(str(server.pid))

    try:
        outcome = bg.result()
    except CeremonyFailed as exc:
        raise AssertionError(f"{exc}\n--- party 1 log ---\n{cluster.log_tail(1)}") from exc
    assert outcome.result["parties"] == [1, 2, 3]
    assert cluster.replay(ex)["verdict"] == "completed at every participant"
    # every party reconnected by itself: status answers from all three, same pids
    st = cluster.status()
    assert st["nats"]["reachable"] and st["nats"]["pid"] == server.pid
    assert all(p["state"] == "idle" for p in st["parties"])
    digest = digest_of("after the broker restart")
    sig = run_ceremony(dep, "sign", (2, 3), {"key_id": outcome.result["key_id"], "digest": digest})
    check_signature(sig.result, outcome.result["public_key"], digest)
