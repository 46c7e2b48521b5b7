"""An exchange's side of Conclave's withdrawal service, in nats-py and the standard library only.

This is integration documentation that runs. It shows the whole contract:

* a request is JSON published with JetStream on ``conclave.withdrawals.<shard>``,
  with the header ``Nats-Msg-Id: <request_id>`` so that a retried publish is
  dropped by the broker (the service also remembers every request id, so the
  same id never signs twice, even much later);
* the result is JSON on ``conclave.results.<request_id>``. It is also kept in the
  CONCLAVE_RESULTS stream, so a result that was published before we listened
  (say, for a request id sent again) can be read back at any time.

Usage (see README.md next to this file)::

    python exchange_client.py --nats nats://127.0.0.1:PORT request1.json request2.json
    python exchange_client.py --nats nats://127.0.0.1:PORT --key KEY_ID --count 5 --to 0xADDRESS
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import secrets
import sys
import time
from pathlib import Path

import nats
from nats.js.errors import NotFoundError

RESULTS_STREAM = "CONCLAVE_RESULTS"


def shard_of(request_id: str, shards: int) -> int:
    # must match the service (handlers/withdrawals.py shard_of): the first 8 bytes of
    # sha256(request_id), big-endian, modulo the deployment's shard count
    return int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big") % shards


def generated(args: argparse.Namespace) -> list[dict]:
    """``--count`` Ethereum EIP-1559 transfers of ``--value`` wei to ``--to``."""
    batch = secrets.token_hex(3)  # request ids must be unique per withdrawal: [A-Za-z0-9_-]{1,80}
    return [{
        "request_id": f"ex-{batch}-{n:03d}", "key_id": args.key, "path": args.path, "chain": "ethereum",
        "tx": {"chain_id": 1, "nonce": n, "to": args.to, "value": str(args.value), "gas": 21000,
               "max_fee_per_gas": "30000000000", "max_priority_fee_per_gas": "1000000000", "data": "0x"},
        "initiator": args.initiator, "approvals": [], "metadata": {"source": "exchange_client example"},
    } for n in range(args.count)]


def describe(result: dict, seconds: float | None) -> str:
    took = "" if seconds is None else f" ({seconds:.2f}s)"
    if result["status"] == "signed":
        inputs = len(result["signatures"])
        return f"{result['request_id']}: signed{took}, tx {result['tx_hash']}, {inputs} signature(s)"
    return f"{result['request_id']}: {result['status']}{took}, {result['rule'] or '-'}: {result['reason']}"


async def run(args: argparse.Namespace, requests: list[dict]) -> int:
    nc = await nats.connect(args.nats, name="exchange-client-example")
    js = nc.jetstream()
    pending = {r["request_id"]: 0.0 for r in requests}  # request id -> when it was published
    results: dict[str, dict] = {}
    all_in = asyncio.Event()

    def record(data: bytes) -> None:
        result = json.loads(data)
        rid = result["request_id"]
        if rid in pending and rid not in results:
            results[rid] = result
            print(describe(result, time.monotonic() - pending[rid] if pending[rid] else None), flush=True)
            if args.raw:
                print(json.dumps(result, indent=2), flush=True)
            if len(results) == len(pending):
                all_in.set()

    async def on_result(msg) -> None:
        record(msg.data)

    # 1. listen first, so no result can slip by between publishing and subscribing
    sub = await nc.subscribe("conclave.results.>", cb=on_result)
    try:
        # 2. publish every request; the PubAck means the service has it durably
        for request in requests:
            rid = request["request_id"]
            subject = f"conclave.withdrawals.{shard_of(rid, args.shards)}"
            pending[rid] = time.monotonic()
            ack = await js.publish(subject, json.dumps(request).encode(), headers={"Nats-Msg-Id": rid})
            print(f"queued {rid} on {subject} (stream seq {ack.seq}{', duplicate' if ack.duplicate else ''})")
        # 3. a result published before we subscribed (a request id sent again) is in the results stream
        for rid in pending:
            try:
                stored = await js.get_last_msg(RESULTS_STREAM, f"conclave.results.{rid}")
            except NotFoundError:
                continue
            record(stored.data)
        # 4. wait, but not forever: a deployment without a running worker never answers
        try:
            await asyncio.wait_for(all_in.wait(), timeout=args.timeout)
        except asyncio.TimeoutError:
            missing = sorted(set(pending) - set(results))
            print(f"no result within {args.timeout:g}s for: {', '.join(missing)}", file=sys.stderr)
    finally:
        await sub.unsubscribe()
        await nc.drain()
    statuses = [r["status"] for r in results.values()]
    print(f"{len(results)}/{len(pending)} results: " +
          ", ".join(f"{statuses.count(s)} {s}" for s in ("signed", "rejected", "failed")))
    return 0 if len(results) == len(pending) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Send withdrawal requests to Conclave and print the results.")
    ap.add_argument("files", nargs="*", help="request JSON files (default: generate --count requests)")
    ap.add_argument("--nats", required=True, help="the deployment's NATS URL (nats.url in conclave.json)")
    ap.add_argument("--shards", type=int, default=2, help="the deployment's shard count (default 2)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for all results")
    ap.add_argument("--raw", action="store_true", help="also print each result's full JSON")
    gen = ap.add_argument_group("generated Ethereum transfers (without files)")
    gen.add_argument("--key", help="the wallet's key id (from `conclave keygen`)")
    gen.add_argument("--path", help="HD path of the sending address, e.g. m/0/1 (default: the root key)")
    gen.add_argument("--count", type=int, default=3)
    gen.add_argument("--to", default="0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")
    gen.add_argument("--value", type=int, default=10**16, help="wei (default 0.01 ETH)")
    gen.add_argument("--initiator", default="exchange-hot")
    args = ap.parse_args(argv)
    if args.files:
        requests = [json.loads(Path(f).read_text()) for f in args.files]
    elif args.key:
        requests = generated(args)
    else:
        ap.error("give request files, or --key KEY_ID to generate requests")
    return asyncio.run(run(args, requests))


if __name__ == "__main__":
    sys.exit(main())
