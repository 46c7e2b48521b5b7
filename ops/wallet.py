"""``conclave withdraw | address | policy``: the exchange-facing commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import anyio

from engine.ceremony.policies import PolicyBook
from engine.policy import PolicyError, load_policy
from engine.withdrawal import wallet_address
from ops.commands import (EXIT_ABORTED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, _existing, _gather_status,
                          _usage_errors, common)
from ops.output import emit, fail
from schemas.withdrawal import RequestError, WithdrawalRequest

__all__ = ["configure", "submit_and_wait"]


def _key(dep, key_id: str) -> dict[str, Any]:
    st = anyio.run(_gather_status, dep)
    for k in st["keys"]:
        if k["key_id"] == key_id:
            return k
    raise KeyError(key_id)


async def submit_and_wait(dep, request: WithdrawalRequest, timeout: float):
    """Queue one request on its shard and wait for its result."""
    from handlers import withdrawals as wq
    from ops.client import Coordinator
    from ops.scheduler import SchedulerConfig

    shards = SchedulerConfig.from_config(dep.config()).shards
    async with Coordinator(dep) as c:
        await wq.ensure_withdrawal_streams(c.js)
        await wq.submit(c.js, request, shards)
        return await wq.wait_result(c.js, request.request_id, timeout)


def _request_from_args(args) -> WithdrawalRequest:
    if args.request:
        text = sys.stdin.read() if args.request == "-" else Path(args.request).read_text()
        return WithdrawalRequest.from_json(text)
    missing = [f"--{n}" for n in ("key", "to", "value", "request_id") if not getattr(args, n)]
    if missing:
        raise RequestError(f"give --request FILE.json, or {', '.join(missing)} for an Ethereum transfer")
    return WithdrawalRequest.from_json({
        "request_id": args.request_id, "key_id": args.key, "path": args.path, "chain": "ethereum",
        "tx": {"chain_id": args.chain_id, "nonce": args.nonce, "to": args.to, "value": args.value, "gas": args.gas,
               "max_fee_per_gas": args.max_fee, "max_priority_fee_per_gas": args.priority_fee, "data": "0x"},
        "initiator": args.initiator, "approvals": [], "metadata": {}})


def cmd_withdraw(args) -> int:
    dep = _existing(args)
    try:
        request = _request_from_args(args)
    except (RequestError, OSError) as exc:
        return fail(args, EXIT_USAGE, f"bad request: {exc}")
    try:
        result = anyio.run(submit_and_wait, dep, request, args.timeout)
    except TimeoutError:
        return fail(args, EXIT_UNAVAILABLE, f"no result for {request.request_id} within {args.timeout:g}s "
                                            "(is the withdrawal worker running? see `conclave status`)",
                    request_id=request.request_id)
    out = result.to_json()
    if result.request_hash not in (None, request.request_hash().hex()):
        return fail(args, EXIT_USAGE, f"request id {request.request_id} was already used for a different request; "
                                      "choose a new id (the stored result belongs to the other request)",
                    original=out)
    if result.status == "signed":
        human = f"{result.request_id}: signed\n  tx hash {result.tx_hash}\n  raw {result.raw_tx}"
    else:
        human = f"{result.request_id}: {result.status}: {result.reason}"
    emit(args, out, human)
    return EXIT_OK if result.status == "signed" else EXIT_ABORTED


def cmd_address(args) -> int:
    dep = _existing(args)
    try:
        key = _key(dep, args.key)
    except KeyError:
        return fail(args, EXIT_USAGE, f"unknown key {args.key} (no running party holds it)")
    try:
        addr = wallet_address(bytes.fromhex(key["public_key"]), args.chain, args.path, args.network)
    except RequestError as exc:
        return fail(args, EXIT_USAGE, str(exc))
    emit(args, {"address": addr}, addr)
    return EXIT_OK


def _load(path: str):
    data = Path(path).read_bytes()
    return data, load_policy(data)


def cmd_policy_check(args) -> int:
    try:
        _, policy = _load(args.file)
    except (OSError, PolicyError) as exc:
        return fail(args, EXIT_USAGE, f"{args.file}: {exc}")
    out = {"file": args.file, "valid": True, "version": policy.version, "digest": policy.digest.hex()}
    emit(args, out, f"{args.file}: valid policy version {policy.version} ({policy.digest.hex()[:16]})")
    return EXIT_OK


def cmd_policy_apply(args) -> int:
    dep = _existing(args)
    try:
        data, policy = _load(args.file)
    except (OSError, PolicyError) as exc:
        return fail(args, EXIT_USAGE, f"{args.file}: {exc}")
    parties = [int(p) for p in args.party.split(",")] if args.party else dep.party_ids()
    for i in parties:
        PolicyBook(dep.policy_dir(i), allow_dev=False).install(args.key, data)
    out = {"key_id": args.key, "version": policy.version, "digest": policy.digest.hex(), "parties": parties}
    emit(args, out, f"policy version {policy.version} ({policy.digest.hex()[:16]}) installed for {args.key} "
                    f"at parties {parties}")
    return EXIT_OK


def configure(sub: argparse._SubParsersAction) -> None:

    w = common(sub.add_parser("withdraw", help="submit one withdrawal request and wait for its result"))
    w.add_argument("--request", metavar="FILE.json", help="the request JSON ('-' reads stdin)")
    w.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the result")
    eth = w.add_argument_group("an Ethereum transfer without a request file")
    eth.add_argument("--request-id")
    eth.add_argument("--key")
    eth.add_argument("--path")
    eth.add_argument("--to")
    eth.add_argument("--value", help="wei")
    eth.add_argument("--chain-id", type=int, default=1)
    eth.add_argument("--nonce", type=int, default=0)
    eth.add_argument("--gas", type=int, default=21000)
    eth.add_argument("--max-fee", default="30000000000", help="max fee per gas, wei")
    eth.add_argument("--priority-fee", default="1000000000", help="max priority fee per gas, wei")
    eth.add_argument("--initiator", default="cli")
    w.set_defaults(func=_usage_errors(cmd_withdraw))

    a = common(sub.add_parser("address", help="the wallet's address for a key and HD path"))
    a.add_argument("--key", required=True)
    a.add_argument("--path", help="non-hardened BIP-32 path, e.g. m/0/7")
    a.add_argument("--chain", choices=("ethereum", "bitcoin"), default="ethereum")
    a.add_argument("--network", choices=("mainnet", "testnet", "signet", "regtest"), default="mainnet")
    a.set_defaults(func=_usage_errors(cmd_address))

    p = sub.add_parser("policy", help="check or install a wallet policy")
    psub = p.add_subparsers(dest="policy_command", required=True)
    c = common(psub.add_parser("check", help="validate a policy file"))
    c.add_argument("file")
    c.set_defaults(func=cmd_policy_check)
    ap = common(psub.add_parser("apply", help="install a new policy version for a wallet at the local parties"))
    ap.add_argument("--key", required=True)
    ap.add_argument("--party", help="comma-separated parties to install at (default: every local party)")
    ap.add_argument("file")
    ap.set_defaults(func=_usage_errors(cmd_policy_apply))
