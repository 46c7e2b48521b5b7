"""``conclave demo``: the withdrawal service end to end on the embedded default.

What an exchange would see, in one command and a fresh data directory:

1. ``conclave up``: the embedded nats-server, three party processes and the
   withdrawal worker;
2. a 2-of-3 distributed key generation over NATS;
3. a real policy for the new wallet installed at every party (per-tx limits,
   a destination allowlist, an approval tier signed by three approver keys made
   for this run, and initiator roles);
4. a batch of mixed Ethereum and Bitcoin (regtest) withdrawals published at once
   on ``conclave.withdrawals.<shard>``, some of them policy violations and one a
   resubmitted request id, with every result awaited on ``conclave.results.<id>``;
5. every signed transaction checked independently of the worker: the demo
   rebuilds the digests itself and verifies each signature (and, for Ethereum,
   the sender address recovered from the raw transaction);
6. a clean shutdown, also on an error or Ctrl-C.

The exit code is non-zero when a signature fails, a violation was signed, an
allowed withdrawal was refused, or a result did not arrive in time. Nothing
secret is printed: the approvers' private keys live only in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import secrets
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import coincurve
import rlp
from eth_hash.auto import keccak

from engine import withdrawal as wd
from engine.ceremony.policies import PolicyBook
from engine.chains import ethereum
from engine.crypto import ecdsa
from engine.policy import Policy, load_policy
from handlers import withdrawals as wq
from handlers.jetstream import publish
from ops.client import CeremonyFailed, Coordinator
from ops.deploy import Deployment
from ops.output import say
from ops.scheduler import SchedulerConfig
from schemas.withdrawal import WithdrawalRequest, WithdrawalResult, sign_approval

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 3, 130

ETH, BTC = 10**18, 10**8  # base units per coin
GWEI = 10**9
NETWORK = "regtest"

# Customers' addresses: from keys nobody holds (sha256 of a label), so the demo needs no files.
ALLOWED_ETH = {
    "alice": "0xBe5B9ce567d8fe06Cc5ac22fA560083277d6d395",
    "bob": "0x706b697b34Dc8b981ea22f82154DDDD317292b20",
    "carol": "0x4120aC8905d61c70eCB0Dcd788D897aD9D083c5F",
}
ALLOWED_BTC = {
    "alice": "bcrt1qauu205zsrkdx40w6cgaq2z9aygwvayaewpmxw8",
    "bob": "bcrt1q8479xcg0zh45xgf3m59thd50dvdtn8chqcnmjl",
    "carol": "bcrt1qns2mkq0523p0sejw77e3zdxkqnrahvdz3wqfxk",
}
STRANGER_ETH = "0x8e009cBb5Ef558629AfF9D9203cDF595a7635501"  # not on the allowlist
STRANGER_BTC = "bcrt1q3n5ffa8vjtsgv7h4j2ntewncy35tevg4vxcfc3"
APPROVERS = ("ops-1", "ops-2", "ops-3")


# -- the policy ----------------------------------------------------------------------


def policy_toml(approver_keys: dict[str, bytes]) -> str:
    """The demo wallet's policy; ``approver_keys`` maps approver name -> x-only public key."""
    allow = ",\n    ".join(f'"{a}"' for a in [*ALLOWED_ETH.values(), *ALLOWED_BTC.values()])
    approvers = "\n".join(f'{name} = "{key.hex()}"' for name, key in approver_keys.items())
    names = ", ".join(f'"{n}"' for n in approver_keys)
    return f"""\
version = 1
description = "conclave demo hot wallet: ETH + regtest BTC"

[roles]
allowed = ["withdrawals", "treasury"]

[initiators]
"exchange-hot" = "withdrawals"
"treasury-desk" = "treasury"
auditor = "viewer"

[destinations]
allow = [
    {allow},
]

[limits.ETH]
max_per_tx = "{1 * ETH}"                  # 1 ETH

[limits.BTC]
max_per_tx = {BTC // 2}                       # 0.5 BTC

[approvers]
{approvers}

[[approvals]]
asset = "ETH"
above = "{ETH // 2}"                       # > 0.5 ETH: two of the three approvers
required = 2
approvers = [{names}]
"""


async def install_policy(c: Coordinator, key_id: str, text: str, threshold: int) -> tuple[Policy, list[int]]:
    """Write the policy into every party's own directory (as `conclave policy apply` does), wait until
    the signing quorum reports it, then give the worker time to see that; return it and who confirmed."""
    data = text.encode()
    policy = load_policy(data)
    parties = c.dep.party_ids()
    for i in parties:
        PolicyBook(c.dep.policy_dir(i), allow_dev=False).install(key_id, data)

    async def confirmed() -> set[int]:
        found = set()
        for i in parties:
            st = await c.party_status(i)
            if st and st.get("policies", {}).get(key_id, {}).get("digest") == policy.digest.hex():
                found.add(i)
        return found

    # the worker signs with the first `threshold` healthy parties, so those must confirm; the rest are
    # reported, not waited for
    quorum = set(parties[:threshold])
    seen: set[int] = set()
    with anyio.move_on_after(20):
        while not quorum <= seen:
            seen |= await confirmed()
            await anyio.sleep(0.2)
    if not quorum <= seen:
        raise TimeoutError(f"parties {sorted(quorum - seen)} did not report policy {policy.digest.hex()[:16]}")
    # the worker binds each session to the digest it last saw in the parties' status (refreshed every second)
    await anyio.sleep(2 * SchedulerConfig().health_every + 0.5)
    return policy, sorted(seen | await confirmed())


# -- the batch -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One withdrawal of the batch and what the policy must answer."""

    request: WithdrawalRequest
    expect: str  # "signed", or the rule that must refuse it
    note: str = ""
    resubmitted: bool = False  # the same request id sent again


def _eth(rid: str, key_id: str, to: str, wei: int, *, path: str | None = None, nonce: int = 0,
         initiator: str = "exchange-hot") -> WithdrawalRequest:
    return WithdrawalRequest.from_json({
        "request_id": rid, "key_id": key_id, "path": path, "chain": "ethereum",
        "tx": {"chain_id": 1, "nonce": nonce, "to": to, "value": str(wei), "gas": 21000,
               "max_fee_per_gas": str(30 * GWEI), "max_priority_fee_per_gas": str(1 * GWEI), "data": "0x"},
        "initiator": initiator, "approvals": [], "metadata": {"customer_ticket": rid}})


def _btc(rid: str, key_id: str, group_key: bytes, path: str | None, pays: list[tuple[str, int]],
         inputs: list[int], *, fee: int = 2_000, initiator: str = "exchange-hot") -> WithdrawalRequest:
    """Spend the wallet's own P2WPKH outputs (``inputs``, in sats; fake prevout txids) for ``path``,
    paying ``pays`` and returning the change to the same address."""
    change = sum(inputs) - sum(amount for _, amount in pays) - fee
    own = wd.wallet_address(group_key, "bitcoin", path, NETWORK)
    outputs = [{"address": a, "amount": n} for a, n in pays] + ([{"address": own, "amount": change}] if change else [])
    txins = [{"txid": hashlib.sha256(f"{rid}/prevout/{n}".encode()).hexdigest(), "vout": n, "amount": amount}
             for n, amount in enumerate(inputs)]
    return WithdrawalRequest.from_json({
        "request_id": rid, "key_id": key_id, "path": path, "chain": "bitcoin",
        "tx": {"network": NETWORK, "inputs": txins, "outputs": outputs},
        "initiator": initiator, "approvals": [], "metadata": {"customer_ticket": rid}})


def _approved(request: WithdrawalRequest, approvers: dict[str, bytes], *names: str) -> WithdrawalRequest:
    return request.with_approvals(sign_approval(request, n, approvers[n]) for n in names)


def build_batch(key_id: str, group_key: bytes, approvers: dict[str, bytes], tag: str) -> list[Case]:
    """Twelve withdrawals (six allowed, six violations) and one resubmitted request id."""
    a, b, c = ALLOWED_ETH["alice"], ALLOWED_ETH["bob"], ALLOWED_ETH["carol"]
    rid = lambda name: f"{tag}-{name}"  # noqa: E731 - a run tag keeps ids unique in a reused data dir
    big = _eth(rid("eth-04"), key_id, a, 8 * ETH // 10, path="m/0/1", nonce=1, initiator="treasury-desk")
    short = _eth(rid("eth-05"), key_id, b, 3 * ETH // 4, path="m/0/2", nonce=1)
    eth02 = _eth(rid("eth-02"), key_id, b, ETH // 4, path="m/0/1")
    return [
        Case(_eth(rid("eth-01"), key_id, a, ETH // 10), "signed"),
        Case(eth02, "signed"),
        Case(_eth(rid("eth-03"), key_id, c, ETH // 20, path="m/0/2"), "signed"),
        Case(_approved(big, approvers, "ops-1", "ops-3"), "signed", "2 of 3 approvals"),
        Case(_approved(short, approvers, "ops-2"), "approvals", "1 approval, 2 needed"),
        Case(_eth(rid("eth-06"), key_id, a, 5 * ETH // 2, path="m/0/1", nonce=2), "limits.max_per_tx"),
        Case(_eth(rid("eth-07"), key_id, STRANGER_ETH, ETH // 10, nonce=1), "destinations"),
        Case(_eth(rid("eth-08"), key_id, c, ETH // 100, nonce=2, initiator="mallory"), "initiator"),
        Case(_btc(rid("btc-01"), key_id, group_key, "m/0/1", [(ALLOWED_BTC["alice"], BTC // 10)],
                  [3 * BTC // 10]), "signed", "1 input + change"),
        Case(_btc(rid("btc-02"), key_id, group_key, "m/0/2", [(ALLOWED_BTC["bob"], BTC // 4)],
                  [BTC // 5, 15 * BTC // 100]), "signed", "2 inputs + change"),
        Case(_btc(rid("btc-03"), key_id, group_key, None, [(ALLOWED_BTC["carol"], 8 * BTC // 10)], [BTC]),
             "limits.max_per_tx"),
        Case(_btc(rid("btc-04"), key_id, group_key, "m/0/1", [(STRANGER_BTC, BTC // 100)], [BTC // 20]),
             "destinations"),
        Case(eth02, "signed", "same id again: original result", resubmitted=True),
    ]


# -- streaming -------------------------------------------------------------------------


@dataclass
class Outcome:
    """What came back for one case."""

    case: Case
    published: float = 0.0
    duplicate_ack: bool = False  # the broker recognised the Nats-Msg-Id
    result: WithdrawalResult | None = None
    seconds: float | None = None
    problems: list[str] = field(default_factory=list)  # anything unexpected, verification included
    verified: bool = False  # a signed result that passed every independent check

    @property
    def status(self) -> str:
        return self.result.status if self.result else "timeout"

    @property
    def as_expected(self) -> bool:
        if self.result is None:
            return False
        if self.case.expect == "signed":
            return self.result.status == "signed"
        return self.result.status == "rejected" and self.result.rule == self.case.expect


async def stream(c: Coordinator, cases: list[Case], timeout: float) -> list[Outcome]:
    """Publish every request at once, then wait for every result (``timeout`` s overall)."""
    shards = SchedulerConfig.from_config(c.dep.config()).shards
    outcomes = [Outcome(case) for case in cases]

    async def submit(o: Outcome) -> None:
        o.published = time.perf_counter()
        ack = await wq.submit(c.js, o.case.request, shards)
        o.duplicate_ack = bool(ack.duplicate)

    async def await_result(o: Outcome, deadline: float) -> None:
        rid = o.case.request.request_id
        try:
            o.result = await wq.wait_result(c.js, rid, max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            say(f"      {rid}: no result within {timeout:g}s")
            return
        o.seconds = time.perf_counter() - o.published
        say(f"      {rid:<14} {o.result.status:<8} {o.result.rule or '':<18} {o.seconds:6.2f}s")

    async with anyio.create_task_group() as tg:
        for o in outcomes:
            tg.start_soon(submit, o)
    deadline = time.monotonic() + timeout
    async with anyio.create_task_group() as tg:
        for o in outcomes:
            tg.start_soon(await_result, o, deadline)
    return outcomes


async def requeue(c: Coordinator, request: WithdrawalRequest, timeout: float) -> WithdrawalResult | None:
    """Queue ``request`` again under a fresh Nats-Msg-Id, as an exchange would after the broker's
    duplicate window: the broker stores it, so the worker's requests bucket must answer."""
    rid = request.request_id
    shards = SchedulerConfig.from_config(c.dep.config()).shards
    # the answer is re-published on the result subject; the results stream may drop it as a
    # duplicate, but a plain subscriber still sees exactly what the worker sent
    sub = await c.nc.subscribe(wq.result_subject(rid), max_msgs=1)
    try:
        await publish(c.js, wq.withdrawal_subject(wq.shard_of(rid, shards)), request.encode(),
                      f"{rid}:requeued-{secrets.token_hex(4)}")
        msg = await sub.next_msg(timeout=timeout)
        return WithdrawalResult.from_json(msg.data)
    except Exception:  # nats' own timeout types included: no answer is the finding
        return None
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


# -- independent verification -----------------------------------------------------------


def _sigs(result: WithdrawalResult) -> list[tuple[int, int, int]]:
    return [(int(s["r"], 16), int(s["s"], 16), int(s["v"])) for s in result.signatures]


def _verify_ethereum_raw(prepared: wd.Prepared, result: WithdrawalResult, group_key: bytes) -> list[str]:
    """Decode the raw EIP-1559 transaction, re-hash its fields and recover its sender from (r, s, v)."""
    digest, request = prepared.digests[0], prepared.request
    try:
        raw = bytes.fromhex((result.raw_tx or "").removeprefix("0x"))
        fields = rlp.decode(raw[1:]) if raw[:1] == bytes([ethereum.TX_TYPE]) else []
    except (ValueError, rlp.DecodingError):
        fields = []
    if len(fields) != 12:
        return ["raw transaction is not a signed EIP-1559 transaction"]
    problems = []
    if keccak(raw[:1] + rlp.encode(fields[:9])) != digest:
        problems.append("raw transaction's fields differ from the request's")
    v, r, s = (int.from_bytes(x, "big") for x in fields[9:])
    if not ecdsa.is_releasable(prepared.public_key, digest, r, s, v):
        problems.append("raw transaction's signature fails verification")
    else:
        sender = ethereum.address(ecdsa.recover(digest, ecdsa.Signature(r, s, v)).to_bytes())
        if sender != wd.wallet_address(group_key, "ethereum", request.path):
            problems.append(f"sender {sender} is not the wallet's address for path {request.path or 'm'}")
    if ethereum.tx_hash(raw) != result.tx_hash:
        problems.append("tx hash is not keccak(raw transaction)")
    return problems


def verify(request: WithdrawalRequest, result: WithdrawalResult, group_key: bytes) -> list[str]:
    """Problems with a signed result, found without trusting the worker: [] when it checks out."""
    prepared = wd.prepare(request, group_key)  # our own digests: one per Ethereum tx, one per Bitcoin input
    sigs = _sigs(result)
    if len(sigs) != len(prepared.digests):
        return [f"{len(sigs)} signature(s) for {len(prepared.digests)} digest(s)"]
    problems = [f"input {i}: signature does not verify (low-S, recovery id) under the derived key"
                for i, (digest, (r, s, v)) in enumerate(zip(prepared.digests, sigs))
                if not ecdsa.is_releasable(prepared.public_key, digest, r, s, v)]
    if problems:
        return problems
    if request.chain == "ethereum":
        return _verify_ethereum_raw(prepared, result, group_key)
    # each input's BIP-143 sighash was checked above; now bind those signatures to the raw transaction
    raw, txid = wd.assemble(prepared, sigs)
    if raw != result.raw_tx or txid != result.tx_hash:
        return ["raw transaction or txid differs from the one rebuilt from the request and signatures"]
    return []


# -- the run ----------------------------------------------------------------------------


def _amount(request: WithdrawalRequest, group_key: bytes) -> str:
    """What leaves the wallet (Bitcoin change excluded), in coins."""
    if request.chain == "ethereum":
        return f"{Decimal(request.tx.value).scaleb(-18).normalize():f} ETH"
    own = wd.wallet_address(group_key, "bitcoin", request.path, NETWORK)
    sats = sum(o.amount for o in request.tx.outputs if o.address != own)
    return f"{Decimal(sats).scaleb(-8).normalize():f} BTC"


async def _run(dep: Deployment, timeout: float) -> dict[str, Any]:
    async with Coordinator(dep) as c:
        say("[2/6] distributed key generation (keygen + aux-info), 2-of-3, over NATS")
        kg = await c.run("keygen", (1, 2, 3), {"threshold": 2})
        key = kg.result
        key_id, group_key = key["key_id"], bytes.fromhex(key["public_key"])
        say(f"      key {key_id} ({kg.seconds:.2f}s)")

        approver_secrets = {n: coincurve.PrivateKey().secret for n in APPROVERS}  # never printed
        xonly = {n: coincurve.PublicKeyXOnly.from_secret(s).format() for n, s in approver_secrets.items()}
        say("[3/6] installing the wallet's policy at every party")
        policy, confirmed = await install_policy(c, key_id, policy_toml(xonly), key["threshold"])
        say(f"      policy version {policy.version}, sha256 {policy.digest.hex()}, in force at parties {confirmed}")

        tag = secrets.token_hex(2)
        cases = build_batch(key_id, group_key, approver_secrets, tag)
        say(f"[4/6] streaming {len(cases)} withdrawal requests (published at once, results as they arrive)")
        t0 = time.perf_counter()
        outcomes = await stream(c, cases, timeout)
        batch_seconds = time.perf_counter() - t0

        say("[5/6] verifying every signed transaction independently; re-queueing a duplicate")
        first: dict[str, Outcome] = {}
        for o in outcomes:
            rid = o.case.request.request_id
            if not o.as_expected:
                want = o.case.expect if o.case.expect == "signed" else f"rejected by {o.case.expect}"
                got = o.status if o.result is None or o.status == "signed" else \
                    f"{o.status} ({o.result.rule}: {o.result.reason})"
                o.problems.append(f"expected {want}, got {got}")
            if o.result is not None and o.result.status == "signed" and not o.case.resubmitted:
                failures = verify(o.case.request, o.result, group_key)
                o.verified = not failures
                o.problems += failures
            if o.case.resubmitted:
                orig = first.get(rid)
                if orig is None or orig.result is None or o.result is None or o.result != orig.result:
                    o.problems.append("a resubmitted request id did not get the original result")
            first.setdefault(rid, o)
        dup = next((o for o in outcomes if o.case.resubmitted), None)
        requeued_ok = dup_same = False
        if dup is not None and first[dup.case.request.request_id].result is not None:
            dup_same = dup.result == first[dup.case.request.request_id].result
            requeued = await requeue(c, dup.case.request, 30.0)
            requeued_ok = requeued is not None and requeued == first[dup.case.request.request_id].result
            if not requeued_ok:
                dup.problems.append("re-queued after the duplicate window, it did not get the original result")

    return {"key_id": key_id, "public_key": key["public_key"], "keygen_seconds": round(kg.seconds, 3), "run_tag": tag,
            "policy": {"version": policy.version, "digest": policy.digest.hex(), "confirmed_by": confirmed,
                       "toml": policy.source.decode()},
            "batch_seconds": round(batch_seconds, 3),
            "withdrawals": [_row(o, group_key) for o in outcomes],
            "duplicate": None if dup is None else {
                "request_id": dup.case.request.request_id, "broker_dropped_resubmission": dup.duplicate_ack,
                "resubmission_got_original": dup_same, "requeued_result_is_original": requeued_ok}}


def _row(o: Outcome, group_key: bytes) -> dict[str, Any]:
    req, res = o.case.request, o.result
    return {"request_id": req.request_id, "chain": req.chain, "path": req.path, "amount": _amount(req, group_key),
            "expected": o.case.expect, "status": o.status, "rule": res.rule if res else None,
            "reason": res.reason if res else None, "note": o.case.note, "tx_hash": res.tx_hash if res else None,
            "inputs": len(res.signatures) if res else 0, "seconds": None if o.seconds is None else round(o.seconds, 3),
            "resubmitted": o.case.resubmitted, "verified": o.verified,
            "problems": [f"{req.request_id}: {p}" for p in o.problems]}


@contextlib.contextmanager
def _ignoring_ctrl_c() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def cmd_demo(args) -> int:
    from ops import commands
    from ops.cli import main as cli_main

    home = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="conclave-demo-"))
    dep = Deployment(home)
    up_args = ["up", "--data-dir", str(home), "--parties", "3", "--threshold", "2",
               "--security-level", args.security_level, "--json"]
    if args.prime_pool:
        up_args += ["--prime-pool", args.prime_pool]

    t_start = time.perf_counter()
    summary: dict[str, Any] = {"data_dir": str(home), "security_level": args.security_level}
    code = EXIT_FAILED
    try:
        say(f"[1/6] starting nats-server, 3 party processes and the withdrawal worker in {home}")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            up_code = cli_main(up_args)
        if up_code != 0:
            print(buf.getvalue())
            return up_code
        summary.update(anyio.run(_run, dep, args.timeout))
        problems = [p for w in summary["withdrawals"] for p in w["problems"]]
        summary.update(ok=not problems, problems=problems)
        code = EXIT_OK if not problems else EXIT_FAILED
    except CeremonyFailed as exc:
        summary.update(ok=False, error=str(exc), culprits=exc.culprits)
    except Exception as exc:  # DeployError, TimeoutError, a broker error: reported below; shutdown still runs
        summary.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        say("interrupted")
        summary.update(ok=False, error="interrupted")
        code = EXIT_INTERRUPTED
    finally:
        say("[6/6] shutting down")
        with _ignoring_ctrl_c():  # a second Ctrl-C must not leave processes behind
            if dep.exists():
                with contextlib.redirect_stdout(io.StringIO()):
                    commands.cmd_down(argparse.Namespace(data_dir=str(home), json=True))
            if not args.data_dir and not args.keep:
                shutil.rmtree(home, ignore_errors=True)
    summary["total_seconds"] = round(time.perf_counter() - t_start, 2)
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    return code


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _short_hash(h: str | None) -> str:
    return "-" if not h else f"{h[:10]}…{h[-4:]}"


def _print_summary(s: dict[str, Any]) -> None:
    if "withdrawals" not in s:
        print(f"demo FAILED: {s.get('error', 'unknown error')}")
        print(f"  total            {s['total_seconds']:.2f}s, everything shut down")
        return
    rows = s["withdrawals"]
    short = lambda rid: rid.removeprefix(f"{s['run_tag']}-")  # noqa: E731
    print("Conclave demo: 2-of-3 threshold ECDSA withdrawals over NATS JetStream, 3 party processes + 1 worker")
    print(f"  security level   {s['security_level']}")
    print(f"  key              {s['key_id']}")
    print(f"  public key       {s['public_key']}")
    print(f"  keygen           {s['keygen_seconds']:.2f}s (keygen + aux-info)")
    print(f"  policy           version {s['policy']['version']}, sha256 {s['policy']['digest']}")
    print(f"  batch            {len(rows)} requests in {s['batch_seconds']:.2f}s (published at once)")
    print()
    head = f"  {'request':<12} {'chain':<8} {'amount':>9}  {'status':<8} {'rule / reason':<46} {'tx hash':<16} latency"
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in rows:
        if r["status"] == "signed" and r["resubmitted"]:
            why = r["note"]
        elif r["status"] == "signed":
            why = "allow: " + ", ".join(x for x in (f"path {r['path'] or 'm'}", r["note"]) if x)
        elif r["rule"] or r["reason"]:
            why = f"{r['rule']}: {(r['reason'] or '').removeprefix('policy: ')}"
        else:
            why = "no result"
        flag = "" if not r["problems"] else "  <-- UNEXPECTED"
        latency = "-" if r["seconds"] is None else f"{r['seconds']:.2f}s"
        print(f"  {short(r['request_id']):<12} {r['chain']:<8} {r['amount']:>9}  {r['status']:<8} {_cut(why, 46):<46} "
              f"{_short_hash(r['tx_hash']):<16} {latency:>7}{flag}")
    print()
    signed = [r for r in rows if r["status"] == "signed" and not r["resubmitted"]]
    verified = sum(r["verified"] for r in signed)
    print(f"  {verified}/{len(signed)} signed transactions verified")
    print("    (digests rebuilt here; ECDSA, low-S and recovery id under the derived key; ETH: sender recovered"
          " from the raw tx; BTC: each input against its BIP-143 sighash)")
    rejected = Counter(r["rule"] for r in rows if r["status"] == "rejected")
    print("  rejections by rule: " + (", ".join(f"{rule} {n}" for rule, n in sorted(rejected.items())) or "none"))
    d = s.get("duplicate")
    if d:
        rid, ok = short(d["request_id"]), lambda good, text: text if good else "NO: " + text  # noqa: E731
        dropped = "dropped by the broker (same Nats-Msg-Id)" if d["broker_dropped_resubmission"] else "stored again"
        print(f"  duplicate        {rid} sent twice in the batch: the second publish was {dropped}; "
              + ok(d["resubmission_got_original"], "it got the original result"))
        print(f"                   {rid} re-queued under a new message id (as after the broker's 1 h window): "
              + ok(d["requeued_result_is_original"], "the worker answered with the original result, "
                                                     "no second signature"))
    print(f"  request ids      prefixed with this run's tag \"{s['run_tag']}-\" (unique in a reused data dir)")
    if s["ok"]:
        print(f"  all {len(rows)} outcomes as expected")
    else:
        print("  FAILED:")
        for p in s.get("problems", []):
            print(f"    {p}")
    print(f"  total            {s['total_seconds']:.2f}s, everything shut down")


def configure(sub) -> None:
    p = sub.add_parser("demo", help="start everything, make a 2-of-3 wallet with a policy, stream a batch of "
                                    "withdrawals, verify them, stop")
    p.add_argument("--signatures", type=int, help=argparse.SUPPRESS)  # the old digest-signing demo's; ignored
    p.add_argument("--security-level", default="cggmp21-128", help="cggmp21-128 (default, 3072-bit) or dev-2048")
    p.add_argument("--timeout", type=float, default=150.0, help="seconds to wait for all withdrawal results")
    p.add_argument("--data-dir", help="keep the deployment here (default: a temporary directory, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    p.add_argument("--prime-pool", metavar="FILE", help="pregenerated safe primes (tests only)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)
