"""``conclave demo``: the main job end to end on the embedded default.

Starts the embedded broker and three party processes in a fresh data
directory, runs a 2-of-3 distributed key generation over NATS, signs a batch
of digests, checks every signature three ways (verify under the group key,
low-S, recovery id), prints a summary and shuts everything down.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from engine.crypto import ecdsa
from ops.client import CeremonyFailed, Coordinator
from ops.deploy import Deployment
from ops.output import say

EXIT_OK, EXIT_FAILED = 0, 3


def _check(sig: dict, digest: bytes, public_key: str) -> bool:
    r, s, v = int(sig["r"], 16), int(sig["s"], 16), int(sig["v"])
    return ecdsa.is_releasable(bytes.fromhex(public_key), digest, r, s, v) and \
        ecdsa.der_decode(bytes.fromhex(sig["der"])) == (r, s)


def cmd_demo(args) -> int:
    from ops import commands

    home = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="conclave-demo-"))
    dep = Deployment(home)
    up_args = ["up", "--data-dir", str(home), "--parties", "3", "--threshold", "2",
               "--security-level", args.security_level, "--json"]
    if args.prime_pool:
        up_args += ["--prime-pool", args.prime_pool]
    from ops.cli import main as cli_main

    t_start = time.perf_counter()
    say(f"[1/4] starting nats-server and 3 party processes in {home}")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli_main(up_args)
    if code != 0:
        print(buf.getvalue())
        return code
    summary: dict = {"data_dir": str(home), "security_level": args.security_level}
    try:
        summary.update(anyio.run(_ceremonies, dep, args.signatures))
    except CeremonyFailed as exc:
        summary.update(ok=False, error=str(exc), culprits=exc.culprits)
    finally:
        say("[4/4] shutting down")
        with contextlib.redirect_stdout(io.StringIO()):
            commands.cmd_down(argparse.Namespace(data_dir=str(home), json=True))
        if not args.data_dir and not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    summary["total_seconds"] = round(time.perf_counter() - t_start, 2)
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    return EXIT_OK if summary.get("ok") else EXIT_FAILED


async def _ceremonies(dep: Deployment, count: int) -> dict:
    async with Coordinator(dep) as c:
        say("[2/4] distributed key generation (keygen + aux-info), 2-of-3, over NATS")
        kg = await c.run("keygen", (1, 2, 3), {"threshold": 2})
        key = kg.result
        say(f"      key {key['key_id']} public key {key['public_key']} ({kg.seconds:.2f}s)")
        say(f"[3/4] signing {count} digests (presign + sign each) with parties 1 and 3")
        rows, times = [], []
        for n in range(count):
            digest = hashlib.sha256(f"conclave demo withdrawal #{n + 1}".encode()).digest()
            out = await c.run("sign", (1, 3), {"key_id": key["key_id"], "digest": digest})
            ok = _check(out.result, digest, key["public_key"])
            times.append(out.seconds)
            rows.append({"digest": digest.hex(), "r": out.result["r"], "s": out.result["s"], "v": out.result["v"],
                         "verified": ok, "seconds": round(out.seconds, 3)})
            say(f"      #{n + 1} {digest.hex()[:16]}… {'verified' if ok else 'FAILED VERIFICATION'} ({out.seconds:.2f}s)")
    return {
        "ok": all(r["verified"] for r in rows),
        "key_id": key["key_id"],
        "public_key": key["public_key"],
        "keygen_seconds": round(kg.seconds, 3),
        "sign_median_seconds": round(statistics.median(times), 3),
        "signatures": rows,
    }


def _print_summary(s: dict) -> None:
    if "error" in s:
        print(f"demo FAILED: {s['error']}")
        return
    verified = sum(r["verified"] for r in s["signatures"])
    print("Conclave demo: 2-of-3 threshold ECDSA over NATS JetStream, 3 party processes")
    print(f"  security level   {s['security_level']}")
    print(f"  key              {s['key_id']}")
    print(f"  public key       {s['public_key']}")
    print(f"  keygen           {s['keygen_seconds']:.2f}s (keygen + aux-info, fresh Paillier keys)")
    print(f"  signatures       {verified}/{len(s['signatures'])} verified under the group key, low-S, v recovers the key")
    print(f"  sign (median)    {s['sign_median_seconds']:.2f}s (presign + sign, over NATS)")
    for r in s["signatures"]:
        print(f"    {r['digest'][:16]}…  r={r['r'][:16]}…  s={r['s'][:16]}…  v={r['v']}  {'ok' if r['verified'] else 'FAIL'}")
    print(f"  total            {s['total_seconds']:.2f}s, everything shut down")


def configure(sub) -> None:
    p = sub.add_parser("demo", help="start everything, run a 2-of-3 keygen and a batch of signatures, stop")
    p.add_argument("--signatures", type=int, default=5)
    p.add_argument("--security-level", default="cggmp21-128")
    p.add_argument("--data-dir", help="keep the deployment here (default: a temporary directory, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    p.add_argument("--prime-pool", metavar="FILE", help="pregenerated safe primes (tests only)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)
