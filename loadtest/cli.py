"""``conclave loadtest`` (also ``python -m loadtest``): load a deployment as an exchange would, and report.

The run: bring up a deployment (or attach to one), measure the baselines while
it is idle, make the wallet, then the scenario's load phases; every request goes
out on ``conclave.withdrawals.<shard>`` and every result comes back on
``conclave.results.<id>``. The output directory gets ``result.json``,
``report.md``, ``latency_cdf.png`` and ``timeline.png``.

Exit codes: 0 every issued request signed; 2 bad usage; 3 some request was
rejected, failed, lost or not published; 4 the deployment or broker could not
be brought up or reached.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

from handlers import withdrawals as wq
from handlers.jetstream import close
from loadtest.baselines import coincurve_sign, connect_or_fail, nats_round_trip, presign_cost
from loadtest.driver import LoadSpec
from loadtest.errors import EXIT_UNSIGNED, EXIT_USAGE, LoadtestError
from loadtest.report import render_markdown, scenario_figures, summary_text, targets
from loadtest.scenarios import PROCESS_CONTROL, SCENARIOS, Context, Settings, scheduler_options
from loadtest.target import Target, allow_everything, attach, check_key, keygen, probe, start
from ops.bench import DEFAULT_LEVELS, machine_info
from ops.output import emit, fail, say

__all__ = ["configure", "cmd_loadtest"]

DEFAULT_REQUESTS = {"burst": 500, "sustained": 100, "shards": 500, "faults": 60}
DEFAULT_RATE = 2.0  # sustained
DEFAULT_LATENCY_SAMPLES = 100  # burst: one at a time first
DEFAULT_CONCURRENCY = 4  # faults
# options that shape a deployment this command starts; an attached one is used as it is
OWN_DEPLOYMENT_ONLY = ("nats", "pool", "security_level", "shards", "refill_parallel", "keep")


def _usage(message: str) -> LoadtestError:
    return LoadtestError(message, EXIT_USAGE)


def resolve(args: argparse.Namespace) -> Settings:
    """Every option checked and every scenario default filled in; LoadtestError (usage) says what to change."""
    scenario = args.scenario
    _check_target(args)
    if args.shards is not None and args.shards < (2 if scenario == "shards" else 1):
        raise _usage("--shards must be at least 1 (2 for the shards scenario: one worker per shard)")
    if args.pool is not None and scenario != "sustained":
        raise _usage("--pool on|off applies to the sustained scenario; burst, shards and faults need the pool on")
    requests = DEFAULT_REQUESTS[scenario] if args.requests is None else args.requests
    for name, value, low in (("--requests", requests, 1), ("--warmup", args.warmup, 0),
                             ("--down-for", args.down_for, 0),
                             ("--latency-samples", args.latency_samples or 0, 0), ("--refill-parallel", args.refill_parallel or 1, 1)):
        if value < low:
            raise _usage(f"{name} must be at least {low}")
    if args.duration <= 0 or args.timeout <= 0:
        raise _usage("--duration and --timeout must be positive (seconds)")
    level = args.security_level or ("cggmp21-128" if not args.key else None)  # attached: the deployment's own
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Settings(
        scenario=scenario, requests=requests, warmup=args.warmup,
        latency_samples=(DEFAULT_LATENCY_SAMPLES if args.latency_samples is None else args.latency_samples)
        if scenario == "burst" else 0,
        load=LoadSpec(*_mode(args), duration=args.duration, timeout=args.timeout), pool=args.pool != "off",
        down_for=args.down_for, level=level, prime_pool=args.prime_pool, shards=args.shards or 2,
        refill_parallel=args.refill_parallel, nats=args.nats, data_dir=args.data_dir, key=args.key, keep=args.keep,
        baselines=not args.no_baselines, out=Path(args.out or f"loadtest-results/{scenario}-{stamp}"))


def _mode(args: argparse.Namespace) -> tuple[float | None, int | None]:
    """(rate, concurrency): a burst is all at once; sustained defaults to a rate, faults to a closed loop."""
    if args.rate is not None and args.concurrency is not None:
        raise _usage("give --rate (open loop) or --concurrency (closed loop), not both")
    if args.rate is not None and args.rate < 0 or args.concurrency is not None and args.concurrency < 1:
        raise _usage("--rate must be 0 (all at once) or more, --concurrency at least 1")
    if args.scenario in ("burst", "shards"):
        if args.rate or args.concurrency:
            raise _usage(f"the {args.scenario} scenario publishes every request at once; for a paced load use "
                         "--scenario sustained --rate R, or --scenario faults --concurrency C")
        return 0.0, None
    if args.rate is None and args.concurrency is None:
        return (DEFAULT_RATE, None) if args.scenario == "sustained" else (None, DEFAULT_CONCURRENCY)
    return args.rate, args.concurrency


def _check_target(args: argparse.Namespace) -> None:
    if args.prime_pool and not Path(args.prime_pool).is_file():
        raise _usage(f"--prime-pool {args.prime_pool}: no such file")
    if not args.key:
        if args.data_dir and (Path(args.data_dir) / "conclave.json").exists():
            raise _usage(f"{args.data_dir} already holds a deployment: add --key KEY_ID to drive it as it is, "
                         "or give a new --data-dir for a fresh one")
        return
    if not args.data_dir:
        raise _usage("--key names a wallet of the running deployment given by --data-dir; give both")
    if args.scenario in PROCESS_CONTROL:
        raise _usage(f"the {args.scenario} scenario stops and starts processes, which it does only to a deployment "
                     "it started itself: leave out --data-dir and --key")
    given = [f"--{name.replace('_', '-')}" for name in OWN_DEPLOYMENT_ONLY if getattr(args, name) not in (None, False)]
    if given:
        raise _usage(f"{', '.join(given)} shape(s) a deployment this command starts; with --key the deployment in "
                     f"{args.data_dir} is used as it is")


def cmd_loadtest(args: argparse.Namespace) -> int:
    try:
        return _run(args, resolve(args))
    except BaseException as exc:
        err = _expected(exc)
        if err is None:
            raise
        return fail(args, err.code, str(err))


def _expected(exc: BaseException) -> LoadtestError | None:
    """The LoadtestError behind ``exc``, also from inside a task group's exception group."""
    if isinstance(exc, LoadtestError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        return next((e for e in map(_expected, exc.exceptions) if e is not None), None)
    return None


def _run(args: argparse.Namespace, s: Settings) -> int:
    started, t0, load_before = _utc_now(), time.perf_counter(), os.getloadavg()[0]
    target = _open(s)
    done = False
    try:
        if s.key:
            s = replace(s, level=target.config["level"])
        baselines = _baselines(target, s)
        key_id = _wallet(target, s)
        say(f"load: {s.scenario}, {s.requests} requests per phase, {s.load.describe()}")
        runs = anyio.run(_drive, target, key_id, s)
        deployment = {**target.describe(), "key_id": key_id}  # before a temp directory goes
        done = True
    finally:
        target.close(remove=done)
    result = {"tool": "conclave loadtest", "scenario": s.scenario, "command": _command(args), "started_utc": started,
              "settings": s.to_json(), "deployment": deployment, "baselines": baselines, "runs": runs,
              "loadavg_1m": {"start": load_before, "end": os.getloadavg()[0]}}  # other work on the machine shows here
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    _write(result, s.out)
    emit(args, result, summary_text(result, str(s.out)))
    return result["exit_code"]


def _open(s: Settings) -> Target:
    if s.key:
        return attach(Path(s.data_dir))
    if s.nats:
        probe(s.nats)
    home = Path(s.data_dir) if s.data_dir else Path(tempfile.mkdtemp(prefix="conclave-loadtest-"))
    say(f"starting a deployment in {home} ({s.level}, {'broker ' + s.nats if s.nats else 'embedded nats-server'})")
    return start(home, made_dir=not s.data_dir, keep=s.keep, level=s.level, prime_pool=s.prime_pool, nats=s.nats,
                 scheduler=scheduler_options(s))


def _baselines(target: Target, s: Settings) -> dict[str, Any]:
    """Measured while the deployment is idle: before the keygen, which starts the pool refill."""
    say("baseline: NATS request/reply round trip and single-key signing")
    out = {"nats_rtt": anyio.run(nats_round_trip, target.url), "coincurve_sign": coincurve_sign()}
    if s.baselines:
        say(f"baseline: primitive costs and in-process presign at {s.level} (skip with --no-baselines)")
        out["presign"] = presign_cost(s.level, s.prime_pool)
    else:
        out["presign"] = {"skipped": "--no-baselines"}
    return out


def _wallet(target: Target, s: Settings) -> str:
    """The wallet the load signs for: --key's once a party holds it, else a new one (and on an external broker a
    policy that allows the load's requests, since the development policy is refused there)."""
    if s.key:
        anyio.run(check_key, target, s.key)
        return s.key
    say("keygen over NATS (not measured)")
    key_id = anyio.run(keygen, target)
    if not target.config["nats"]["embedded"]:
        say("installing a policy without rules for the load test's wallet (external broker)")
        allow_everything(target, key_id)
    return key_id


async def _drive(target: Target, key_id: str, s: Settings) -> list[dict[str, Any]]:
    nc = await connect_or_fail(target.url, "conclave-loadtest")
    try:
        js = nc.jetstream()
        await wq.ensure_withdrawal_streams(js)
        return await SCENARIOS[s.scenario](Context(target, key_id, s, nc, js))
    finally:
        await close(nc)


def _write(result: dict[str, Any], out: Path) -> None:
    """result.json, report.md and the two plots; fills in the verdicts and file names first."""
    from loadtest.plots import write_plots  # matplotlib: only when there is something to draw

    result["machine"] = machine_info()
    result["ok"] = all(r["issued"] > 0 and r["error_count"] == 0 for r in result["runs"])
    result["exit_code"] = 0 if result["ok"] else EXIT_UNSIGNED
    result["scenario_figures"] = scenario_figures(result)
    result["targets"] = targets(result)
    out.mkdir(parents=True, exist_ok=True)
    result["files"] = {"result": "result.json", "report": "report.md", **write_plots(result, out)}
    (out / "report.md").write_text(render_markdown(result))
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _command(args: argparse.Namespace) -> str:
    """The command line, rebuilt from the options that differ from their defaults."""
    parts = ["conclave", "loadtest"]
    for action in args.loadtest_parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest == "help" or value == action.default:
            continue
        parts += [action.option_strings[0]] + ([] if action.nargs == 0 else [str(value)])
    return shlex.join(parts)


def configure(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "loadtest", help="load a deployment with withdrawals over NATS; latency, throughput, errors, report",
        description="Drive withdrawals through conclave.withdrawals.<shard> and conclave.results.<id> as an exchange "
                    "does, and write result.json, report.md and plots. Progress goes to stderr.")
    p.add_argument("--scenario", choices=list(SCENARIOS), default="burst",
                   help="burst (default): a full pool, everything at once; sustained: a paced open loop; shards: "
                        "one worker, then one per shard; faults: a closed loop while party 2 is killed and restarted")
    p.add_argument("--requests", type=int, help="requests per load phase (default: burst 500, sustained 100, "
                                                "shards 500, faults 60)")
    p.add_argument("--rate", type=float, help="open loop at R requests/s; 0 sends all at once (sustained default 2)")
    p.add_argument("--concurrency", type=int, help="closed loop with C requests in flight (faults default 4)")
    p.add_argument("--duration", type=float, default=600.0, help="stop issuing after S seconds (default 600)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="then wait at most S seconds for outstanding results; later ones count as lost (default 120)")
    p.add_argument("--latency-samples", type=int,
                   help=f"burst: withdrawals sent one at a time before the burst, for the latency targets "
                        f"(default {DEFAULT_LATENCY_SAMPLES}; 0 skips them)")
    p.add_argument("--warmup", type=int, default=3, help="withdrawals sent one at a time before measuring (default 3)")
    p.add_argument("--pool", choices=("on", "off"), help="sustained: refill the presignature pool in the background "
                                                          "(on, default) or presign in every withdrawal (off)")
    p.add_argument("--down-for", type=float, default=5.0, help="faults: seconds party 2 stays down (default 5)")
    dep = p.add_argument_group("the deployment (default: a fresh embedded one in a temp directory, torn down after)")
    dep.add_argument("--security-level", choices=DEFAULT_LEVELS, help="cggmp21-128 (default, 3072-bit Paillier) or "
                                                                      "dev-2048")
    dep.add_argument("--prime-pool", metavar="FILE", help="pregenerated safe primes, for the deployment and the "
                                                          "presign baseline (default: generate them)")
    dep.add_argument("--shards", type=int, help="withdrawal request shards (default 2)")
    dep.add_argument("--refill-parallel", type=int, help="presigns in flight while the pool fills (default: 2 for "
                                                         "burst and shards, the deployment's default otherwise)")
    dep.add_argument("--nats", metavar="URL", help="start the deployment against this NATS JetStream broker")
    dep.add_argument("--data-dir", help="put the new deployment here; with --key, drive the one running here as it is")
    dep.add_argument("--key", help="a wallet of the deployment in --data-dir to load (no keygen, nothing started)")
    dep.add_argument("--keep", action="store_true", help="leave the started deployment running afterwards")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the expensive baselines (primitive costs and an in-process presign)")
    p.add_argument("--out", metavar="DIR", help="output directory (default loadtest-results/<scenario>-<UTC time>/)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    p.set_defaults(func=cmd_loadtest, loadtest_parser=p)
