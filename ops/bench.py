"""``conclave bench``: phase timings of a 2-of-3 ceremony and the primitive costs behind them.

For each security level the bench

1. generates the safe primes once (two per party, three parties; prime search
   is not a protocol phase and is reported separately),
2. runs keygen (2-of-3), aux-info (3 parties, reusing those Paillier keys),
   presign with signers (1, 2) and sign of a random digest, ``runs`` times,
3. measures, in the same process, the cost of one secp256k1 point
   multiplication (G), one |N|-bit exponent powmod modulo a real Paillier N of
   the level (N) and modulo N² (N²), as medians over batches taken before and
   after the ceremony runs,
4. compares the per-party presign median with the CGGMP21 cost model
   ``n·(12G + 56N + 33N²)``, n = number of presign participants.

All parties run sequentially in one process, so a phase time is the sum of
every party's work; presign per party = presign / 2. On a shared machine only
medians and ratios measured within one run mean much.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import secrets
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

__all__ = ["PHASES", "run_bench", "measure_primitives", "measure_presign", "cmd_bench", "configure_parser",
           "format_table"]

PHASES = ("keygen", "aux_info", "presign", "sign")
PARTIES = 3
THRESHOLD = 2
SIGNERS = (1, 2)
DEFAULT_LEVELS = ("cggmp21-128", "dev-2048")
DEFAULT_RUNS = 5

# CGGMP21 presign cost model, per party: n·(12 G + 56 N + 33 N²)
MODEL = {"G": 12, "N": 56, "N2": 33}

# primitive timing: batches of roughly this many seconds, this many per sampling pass
_BATCH_SECONDS = 0.05
_BATCHES_PER_PASS = 7

PrimeSource = Callable[[int], int]


def _progress(out: TextIO | None, text: str) -> None:
    if out is not None:
        print(text, file=out, flush=True)


# primitives ---------------------------------------------------------------


def _batched(op: Callable[[Any], Any], make_input: Callable[[], Any], batches: int) -> list[float]:
    """Per-operation seconds for each of ``batches`` batches (inputs prepared outside the clock)."""
    # calibrate the batch size so one batch takes about _BATCH_SECONDS
    probe = [make_input() for _ in range(3)]
    t0 = time.perf_counter()
    for x in probe:
        op(x)
    per_op = max((time.perf_counter() - t0) / len(probe), 1e-7)
    size = max(1, min(2000, round(_BATCH_SECONDS / per_op)))
    samples = []
    for _ in range(batches):
        inputs = [make_input() for _ in range(size)]
        t0 = time.perf_counter()
        for x in inputs:
            op(x)
        samples.append((time.perf_counter() - t0) / size)
    return samples


def measure_primitives(n: int, batches: int = _BATCHES_PER_PASS) -> dict[str, list[float]]:
    """Per-batch per-operation seconds for G, N and N² (see the module docstring).

    ``n`` is a real Paillier modulus; exponents are uniform with exactly |N| bits.
    """
    import gmpy2
    from gmpy2 import mpz

    from engine.crypto.group import Q, base_mul

    n = mpz(n)
    nn = n * n
    nbits = int(n.bit_length())
    top = 1 << (nbits - 1)
    point = base_mul(1 + secrets.randbelow(Q - 1))  # a random point, not the generator

    def scalar() -> int:
        return 1 + secrets.randbelow(Q - 1)

    def exp_input(mod: Any) -> Callable[[], tuple[Any, Any, Any]]:
        bound = int(mod)
        return lambda: (mpz(1 + secrets.randbelow(bound - 1)), mpz(secrets.randbits(nbits) | top), mod)

    return {
        "G": _batched(lambda k: point * k, scalar, batches),
        "N": _batched(lambda a: gmpy2.powmod(*a), exp_input(n), batches),
        "N2": _batched(lambda a: gmpy2.powmod(*a), exp_input(nn), batches),
    }


# ceremony -----------------------------------------------------------------


def _paillier_keys(level, primes: PrimeSource, progress: TextIO | None,
                   parties: int = PARTIES) -> tuple[dict, float]:
    """Two distinct safe primes per party, all distinct; returns (keys, seconds spent)."""
    from engine.crypto.paillier import PaillierSecretKey

    bits = level.prime_bits
    got: list[int] = []
    t0 = time.perf_counter()
    attempts = 0
    while len(got) < 2 * parties:
        attempts += 1
        if attempts > 4 * parties + 8:
            raise RuntimeError("the prime source keeps returning duplicates")
        _progress(progress, f"[{level.name}] safe prime {len(got) + 1}/{2 * parties} ({bits} bits)…")
        p = int(primes(bits))
        if p.bit_length() != bits:
            raise ValueError(f"prime source returned a {p.bit_length()}-bit value, wanted {bits}")
        if p not in got:
            got.append(p)
    keys = {i: PaillierSecretKey(got[2 * k], got[2 * k + 1]) for k, i in enumerate(range(1, parties + 1))}
    return keys, time.perf_counter() - t0


def _no_primes(bits: int) -> int:
    """The prime source of a simulation whose Paillier keys are given: any prime request is a bug."""
    raise RuntimeError("bench run asked for fresh primes")


def _one_run(level, keys: dict) -> dict[str, float]:
    from engine.crypto import ecdsa
    from engine.simulation import Simulation

    sim = Simulation(PARTIES, THRESHOLD, level=level, primes=_no_primes)
    shares = sim.keygen()
    aux = sim.aux_info(keys)
    presigs = sim.presign(shares, aux, SIGNERS)
    digest = secrets.token_bytes(32)
    sig = sim.sign(presigs, digest)
    if not ecdsa.verify_digest(sig.public_key.to_bytes(), digest, sig.r, sig.s, require_low_s=True):
        raise RuntimeError("bench signature does not verify")
    return {phase: sim.timings[phase] for phase in PHASES}


def bench_level(
    level_name: str, runs: int, primes: PrimeSource | None = None, progress: TextIO | None = sys.stderr
) -> dict[str, Any]:
    from engine.crypto.primes import generate_safe_prime
    from engine.crypto.security import get_level

    level = get_level(level_name)
    keys, prime_seconds = _paillier_keys(level, primes or generate_safe_prime, progress)
    n = keys[1].n

    _progress(progress, f"[{level.name}] primitives (before runs)…")
    samples = measure_primitives(n)
    per_run: list[dict[str, float]] = []
    for r in range(runs):
        t0 = time.perf_counter()
        per_run.append(_one_run(level, keys))
        _progress(progress, f"[{level.name}] run {r + 1}/{runs}: {time.perf_counter() - t0:.1f} s")
    _progress(progress, f"[{level.name}] primitives (after runs)…")
    for name, more in measure_primitives(n).items():
        samples[name].extend(more)

    phases = {p: statistics.median(run[p] for run in per_run) for p in PHASES}
    prims = {name: statistics.median(v) for name, v in samples.items()}
    n_parties = len(SIGNERS)
    presign_pp = phases["presign"] / n_parties
    sign_pp = phases["sign"] / n_parties
    model = n_parties * sum(MODEL[k] * prims[k] for k in MODEL)
    return {
        "phases": phases,
        "phase_min": {p: min(run[p] for run in per_run) for p in PHASES},
        "phase_max": {p: max(run[p] for run in per_run) for p in PHASES},
        "presign_per_party_s": presign_pp,
        "sign_per_party_s": sign_pp,
        "primitives": prims,
        "model_presign_per_party_s": model,
        "ratio_presign_to_model": presign_pp / model,
        "ratio_sign_to_presign": sign_pp / presign_pp,
        "presign_participants": n_parties,
        "modulus_bits": int(n).bit_length(),
        "prime_generation_s": prime_seconds,
        "per_run": per_run,
        "runs": runs,
    }


def measure_presign(level_name: str, primes: PrimeSource | None = None, runs: int = 3,
                    progress: TextIO | None = sys.stderr) -> dict[str, Any]:
    """Per-party presign time of ``runs`` presigns by signers (1, 2), against the cost model at that modulus.

    For callers that need the presign baseline without a whole bench (``conclave
    loadtest``). A 2-of-2 key is enough: a presign with two signers does the same
    work whoever else holds shares, and its untimed aux-info then costs two
    parties' proofs instead of three.
    """
    from engine.crypto.primes import generate_safe_prime
    from engine.crypto.security import get_level
    from engine.simulation import Simulation

    level = get_level(level_name)
    n_parties = len(SIGNERS)
    keys, prime_seconds = _paillier_keys(level, primes or generate_safe_prime, progress, parties=n_parties)
    sim = Simulation(n_parties, n_parties, level=level, primes=_no_primes)
    shares = sim.keygen()
    _progress(progress, f"[{level.name}] aux-info for the presign baseline (not timed)…")
    aux = sim.aux_info(keys)
    per_party = []
    for r in range(runs):
        before = sim.timings.get("presign", 0.0)
        sim.presign(shares, aux, SIGNERS)
        per_party.append((sim.timings["presign"] - before) / n_parties)
        _progress(progress, f"[{level.name}] presign {r + 1}/{runs}: {per_party[-1]:.3f} s per party")
    prims = {name: statistics.median(v) for name, v in measure_primitives(keys[1].n).items()}
    model = n_parties * sum(MODEL[k] * prims[k] for k in MODEL)
    presign_pp = statistics.median(per_party)
    return {
        "presign_per_party_s": presign_pp,
        "presign_runs_per_party_s": per_party,
        "primitives": prims,
        "model_presign_per_party_s": model,
        "ratio_presign_to_model": presign_pp / model,
        "presign_participants": n_parties,
        "modulus_bits": int(keys[1].n).bit_length(),
        "prime_generation_s": prime_seconds,
    }


def machine_info() -> dict[str, Any]:
    import coincurve
    import gmpy2

    cpu = None
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    return {
        "nproc": nproc,
        "cpu_model": cpu or platform.processor() or "unknown",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "gmpy2": gmpy2.version(),
        "gmp": gmpy2.mp_version(),
        "coincurve": getattr(coincurve, "__version__", None) or _dist_version("coincurve"),
    }


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def run_bench(
    levels: Sequence[str] = DEFAULT_LEVELS,
    runs: int = DEFAULT_RUNS,
    primes: PrimeSource | None = None,
    progress: TextIO | None = sys.stderr,
) -> dict[str, Any]:
    """The whole bench; ``primes`` (bits -> safe prime) replaces prime generation, e.g. in tests."""
    started = time.perf_counter()
    result: dict[str, Any] = {"levels": {}, "machine": machine_info()}
    for name in levels:
        result["levels"][name] = bench_level(name, runs, primes, progress)
    result["wall_s"] = time.perf_counter() - started
    result["date_utc"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return result


# output -------------------------------------------------------------------


def _fmt_s(s: float) -> str:
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def _rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    names = list(result["levels"])
    header = ["", *names]
    lv = [result["levels"][n] for n in names]
    rows: list[list[str]] = []
    for p in PHASES:
        rows.append([f"{p} (median, all parties)", *(_fmt_s(x["phases"][p]) for x in lv)])
    for p in PHASES:
        rows.append([f"{p} (min … max)", *(f"{_fmt_s(x['phase_min'][p])} … {_fmt_s(x['phase_max'][p])}" for x in lv)])
    rows += [
        ["presign per party", *(_fmt_s(x["presign_per_party_s"]) for x in lv)],
        ["sign per party", *(_fmt_s(x["sign_per_party_s"]) for x in lv)],
        ["G: point mul", *(_fmt_s(x["primitives"]["G"]) for x in lv)],
        ["N: powmod mod N", *(_fmt_s(x["primitives"]["N"]) for x in lv)],
        ["N²: powmod mod N²", *(_fmt_s(x["primitives"]["N2"]) for x in lv)],
        ["model presign/party n(12G+56N+33N²)", *(_fmt_s(x["model_presign_per_party_s"]) for x in lv)],
        ["ratio presign/party ÷ model", *(f"{x['ratio_presign_to_model']:.2f}" for x in lv)],
        ["ratio sign/party ÷ presign/party", *(f"{x['ratio_sign_to_presign']:.4f}" for x in lv)],
        ["modulus |N| bits", *(str(x["modulus_bits"]) for x in lv)],
        ["runs", *(str(x["runs"]) for x in lv)],
        ["prime generation (not a phase)", *(_fmt_s(x["prime_generation_s"]) for x in lv)],
    ]
    return header, rows


def format_table(result: dict[str, Any]) -> str:
    header, rows = _rows(result)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    m = result["machine"]
    out = [
        f"machine: {m['nproc']} CPUs, {m['cpu_model']}, Python {m['python']}, {m['gmp']}",
        line(header),
        line(["-" * w for w in widths]),
        *(line(r) for r in rows),
        f"total wall time {result['wall_s']:.1f} s",
    ]
    return "\n".join(out)


def format_markdown(result: dict[str, Any], command: str) -> str:
    header, rows = _rows(result)
    m = result["machine"]
    md = [
        f"## conclave bench, {result['date_utc']}",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, {m['gmp']}, "
        f"gmpy2 {m['gmpy2']}, coincurve {m['coincurve']}. One run on a possibly shared machine.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", *("---:" for _ in header[1:])]) + "|",
        *("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows),
        "",
        f"Total wall time {result['wall_s']:.1f} s.",
        "",
    ]
    return "\n".join(md)


def _command_line(args) -> str:
    parts = ["conclave", "bench", "--levels", ",".join(args.levels_list), "--runs", str(args.runs)]
    if args.json:
        parts.append("--json")
    if args.out:
        parts += ["--out", args.out]
    return shlex.join(parts)


# CLI ----------------------------------------------------------------------


def configure_parser(p) -> None:
    p.add_argument(
        "--levels",
        default=",".join(DEFAULT_LEVELS),
        help=f"comma-separated security levels (default {','.join(DEFAULT_LEVELS)})",
    )
    p.add_argument("--runs", type=int, default=DEFAULT_RUNS, help=f"ceremonies per level (default {DEFAULT_RUNS})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", metavar="FILE.md", help="also write (overwrite) a Markdown section with the table")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args, primes: PrimeSource | None = None, progress: TextIO | None = sys.stderr) -> int:
    from engine.crypto.security import LEVELS
    from ops.cli import EXIT_OK, UsageError

    levels = [x.strip() for x in args.levels.split(",") if x.strip()]
    if not levels:
        raise UsageError("--levels names no level")
    for name in levels:
        if name not in LEVELS:
            raise UsageError(f"unknown security level {name!r}; choose from {', '.join(LEVELS)}")
    if len(set(levels)) != len(levels):
        raise UsageError("--levels names a level twice")
    if args.runs < 1:
        raise UsageError("--runs must be at least 1")
    args.levels_list = levels
    result = run_bench(levels, args.runs, primes=primes, progress=progress)
    command = _command_line(args)
    result["command"] = command
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    if args.out:
        pathlib.Path(args.out).write_text(format_markdown(result, command))
        _progress(progress, f"wrote {args.out}")
    return EXIT_OK
