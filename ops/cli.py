"""The ``conclave`` command line.

Exit codes: 0 success, 2 bad usage, 3 the ceremony aborted (a party misbehaved
or a check failed), 1 an internal error (our bug).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys
from collections.abc import Sequence

from engine.protocols.base import InternalError
from ops.output import emit, fail

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3

_PHASE_NAMES = {"keygen": "keygen", "aux": "aux_info", "presign": "presign", "sign": "sign"}


class UsageError(Exception):
    pass


def _parse_signers(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        ids = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError("--signers takes comma-separated party ids, for example 1,3") from None
    if len(set(ids)) != len(ids):
        raise UsageError("--signers lists a party twice")
    return ids


def _parse_digest(args) -> bytes:
    if args.digest is not None:
        text = args.digest.removeprefix("0x")
        try:
            digest = bytes.fromhex(text)
        except ValueError:
            raise UsageError("--digest must be hex") from None
        if len(digest) != 32:
            raise UsageError(f"--digest must be 32 bytes (64 hex digits), got {len(digest)} bytes")
        return digest
    return hashlib.sha256(args.message.encode()).digest()


def _prime_source(args, bits: int):
    """Primes from --prime-pool (consumed without reuse), or freshly generated with progress."""
    from engine.crypto.primes import generate_safe_prime, is_safe_prime

    if args.prime_pool:
        data = json.loads(pathlib.Path(args.prime_pool).read_text())
        pool = [int(p, 16) for p in data.get(str(bits), [])]
        pool.reverse()

        def from_pool(want: int) -> int:
            if not pool:
                raise UsageError(f"--prime-pool has too few {want}-bit safe primes")
            p = pool.pop()
            if p.bit_length() != want or not is_safe_prime(p):
                raise UsageError("--prime-pool holds a value that is not a safe prime of the right size")
            return p

        return from_pool

    made = [0]

    def generate(want: int) -> int:
        made[0] += 1
        if not args.json or sys.stderr.isatty():
            print(f"generating {want}-bit safe prime #{made[0]}…", file=sys.stderr, flush=True)
        return generate_safe_prime(want)

    return generate


def cmd_simulate(args) -> int:
    from engine.cheats import describe, parse_cheat
    from engine.crypto import ecdsa
    from engine.crypto.security import UnknownLevel, get_level
    from engine.simulation import Aborted, Simulation

    if args.list_cheats:
        kinds = describe()
        if args.json:
            print(json.dumps({"cheats": kinds}))
        else:
            for c in kinds:
                print(f"{c['kind']:<22} {c['phase']:<9} {c['effect']}")
        return EXIT_OK
    if args.parties is None or args.threshold is None:
        raise UsageError("--parties and --threshold are required")
    if (args.digest is None) == (args.message is None):
        raise UsageError("give exactly one of --digest or --message")
    digest = _parse_digest(args)
    signers = _parse_signers(args.signers)
    try:
        level = get_level(args.security_level)
    except UnknownLevel as exc:
        raise UsageError(str(exc)) from None
    cheat = None
    if args.cheat:
        try:
            cheat = parse_cheat(args.cheat)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not 1 <= cheat.party <= args.parties:
            raise UsageError(f"--cheat names party {cheat.party}, but parties are 1..{args.parties}")
    try:
        sim = Simulation(
            args.parties,
            args.threshold,
            level=level,
            primes=_prime_source(args, level.prime_bits),
            cheat=cheat,
            progress=None if args.json else _phase_progress,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if signers is None:
        signers = sim.party_ids[: args.threshold]
        if cheat is not None and _cheat_needs_signer(cheat) and cheat.party not in signers:
            signers = tuple(sorted((cheat.party,) + sim.party_ids[: args.threshold - 1]))
    if len(signers) != args.threshold or not set(signers) <= set(sim.party_ids):
        raise UsageError(f"--signers must name exactly {args.threshold} of the parties 1..{args.parties}")
    if cheat is not None and _cheat_needs_signer(cheat) and cheat.party not in signers:
        raise UsageError(f"a {cheat.phase} cheat needs party {cheat.party} among --signers")
    try:
        ceremony = sim.run(digest, signers)
    except Aborted as exc:
        a = exc.abort
        out = {
            "aborted": True,
            "phase": _PHASE_NAMES.get(exc.phase, exc.phase),
            "round": a.round,
            "culprits": list(a.culprits),
            "attributable": a.attributable,
            "reason": a.reason,
            "messages": list(a.messages),
            "timings": {k: round(v, 4) for k, v in sim.timings.items()},
        }
        emit(args, out, human=f"ABORTED in {out['phase']}: culprits {out['culprits']}: {a.reason}")
        return EXIT_ABORTED
    sig = ceremony.signature
    pub = sig.public_key.to_bytes()
    # belt and braces: the engine verified already; check recovery from the outside too
    if not ecdsa.is_releasable(pub, digest, sig.r, sig.s, sig.v):
        print("internal error: released signature failed the final check", file=sys.stderr)
        return EXIT_INTERNAL
    out = {
        "public_key": pub.hex(),
        "r": f"{sig.r:064x}",
        "s": f"{sig.s:064x}",
        "v": sig.v,
        "der": sig.der().hex(),
        "digest": digest.hex(),
        "signers": list(sig.signers),
        "parties": args.parties,
        "threshold": args.threshold,
        "security_level": level.name,
        "timings": {k: round(v, 4) for k, v in ceremony.timings.items()},
    }
    emit(args, out, human=_describe_signature(out))
    return EXIT_OK


def _phase_progress(phase: str, seconds: float | None) -> None:
    label = phase.replace("_", "-")
    if seconds is None:
        print(f"{label}…", file=sys.stderr, flush=True)
    else:
        print(f"{label} done in {seconds:.3f} s", file=sys.stderr, flush=True)


def _describe_signature(out: dict) -> str:
    signers = ", ".join(str(s) for s in out["signers"])
    timings = " · ".join(f"{k.replace('_', '-')} {v:.3f} s" for k, v in out["timings"].items())
    rows = [
        f"{out['threshold']}-of-{out['parties']} signature by parties {signers} ({out['security_level']})",
        f"  public key  {out['public_key']}",
        f"  digest      {out['digest']}",
        f"  r           {out['r']}",
        f"  s           {out['s']}  (low-S)",
        f"  v           {out['v']}",
        f"  DER         {out['der']}",
        "  checked     verifies under the group key; v recovers the group key",
        f"  timings     {timings}",
    ]
    return "\n".join(rows)


def _cheat_needs_signer(cheat) -> bool:
    return cheat.phase in ("presign", "sign")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conclave", description="Threshold ECDSA (CGGMP21) signing engine")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser(
        "simulate",
        help="run keygen, aux-info, presign and sign with every party in this process",
        description="Rehearse a full ceremony in one process. Exit 0 with a signature, 3 on an abort.",
    )
    sim.add_argument("--parties", type=int, help="number of parties n")
    sim.add_argument("--threshold", type=int, help="signers needed t (2 <= t <= n)")
    sim.add_argument("--signers", help="comma-separated ids of the t signers (default: 1..t)")
    sim.add_argument("--digest", help="32-byte message hash, hex")
    sim.add_argument("--message", help="text to sign (its SHA-256 is signed)")
    sim.add_argument("--security-level", default="cggmp21-128", help="cggmp21-128 (default, 3072-bit) or dev-2048")
    sim.add_argument("--cheat", metavar="PARTY:KIND", help="make one party misbehave; the run must abort")
    sim.add_argument("--list-cheats", action="store_true", help="list the cheat kinds and exit")
    sim.add_argument("--prime-pool", metavar="FILE", help="JSON of pregenerated safe primes {bits: [hex, ...]}")
    sim.add_argument("--json", action="store_true", help="print one JSON object")
    sim.set_defaults(func=cmd_simulate)

    from ops.bench import configure_parser as _configure_bench

    _configure_bench(
        sub.add_parser(
            "bench",
            help="time keygen, aux-info, presign and sign and compare presign with the CGGMP21 cost model",
            description="Benchmark a 2-of-3 ceremony per security level; progress goes to stderr.",
        )
    )
    from ops.commands import configure as _configure_runtime

    _configure_runtime(sub)
    from ops.wallet import configure as _configure_wallet

    _configure_wallet(sub)
    from ops.demo import configure as _configure_demo

    _configure_demo(sub)
    from ops.bench_runtime import configure as _configure_bench_runtime

    _configure_bench_runtime(sub)
    from loadtest.withdrawals import configure as _configure_bench_withdrawals

    _configure_bench_withdrawals(sub)
    from loadtest.cli import configure as _configure_loadtest

    _configure_loadtest(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        return fail(args, EXIT_USAGE, str(exc))
    except InternalError as exc:
        # our bug: no party is blamed; the message never carries secrets
        if getattr(args, "json", False):
            print(json.dumps({"error": f"internal error: {exc}", "internal": True}))
        print(f"conclave: internal error (please report): {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
