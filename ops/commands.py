"""``conclave up | down | status | keygen | presign | sign | replay``.

Every command takes ``--data-dir`` (default ``$CONCLAVE_HOME`` or
``./.conclave``) and ``--json``. Exit codes follow ``ops.cli``: 0 success,
2 bad usage or no deployment, 3 the ceremony aborted or was refused, 4 it
timed out or the deployment is unreachable.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import anyio

from ops.deploy import DeployError, Deployment, default_home, pid_alive
from ops.output import emit, fail, say

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_ABORTED, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4


def _dep(args) -> Deployment:
    return Deployment(Path(args.data_dir) if args.data_dir else default_home())


def _existing(args) -> Deployment:
    """The deployment named by ``--data-dir``; DeployError if `conclave up` never made one there."""
    dep = _dep(args)
    if not dep.exists():
        raise DeployError(f"no deployment in {dep.home}: run `conclave up`")
    return dep


def _usage_errors(func):
    """Report a DeployError as bad usage (exit 2), with --json honoured."""

    def run(args) -> int:
        try:
            return func(args)
        except DeployError as exc:
            return fail(args, EXIT_USAGE, str(exc))

    return run


# -- up / down -------------------------------------------------------------------


def cmd_up(args) -> int:
    from ops.broker import EmbeddedNats

    dep = _dep(args)
    store = None
    if args.postgres:
        store = {"kind": "postgres", "dsn": args.postgres, "schema": args.postgres_schema}
    try:
        scheduler = {k: v for k, v in (("shards", args.shards), ("pool_low", args.pool_low),
                                       ("pool_high", args.pool_high),
                                       ("refill_parallel", args.refill_parallel)) if v is not None}
        cfg = dep.init(parties=args.parties, threshold=args.threshold, level=args.security_level,
                       nats_url=args.nats, store=store, round_timeout=args.round_timeout, prime_pool=args.prime_pool,
                       scheduler=scheduler)
    except DeployError as exc:
        return fail(args, EXIT_USAGE, str(exc))
    nats_info: dict[str, Any] = {"url": cfg["nats"]["url"], "embedded": cfg["nats"]["embedded"]}
    if args.nats and cfg["nats"]["embedded"]:
        return fail(args, EXIT_USAGE, f"{dep.home} runs its own embedded nats-server; "
                                       "start a new data directory to use an external one")
    if args.nats and cfg["nats"]["url"] != args.nats:
        dep.set_nats_url(args.nats)
        nats_info["url"] = args.nats
    if cfg["nats"]["embedded"]:
        pid = dep.nats_pid()
        if pid_alive(pid):
            nats_info.update(pid=pid, started=False)
        else:
            url = cfg["nats"]["url"]
            port = int(url.rsplit(":", 1)[1]) if url else None
            server = EmbeddedNats(store_dir=dep.home / "nats", port=port, log_file=dep.home / "nats" / "nats.log")
            say("starting the embedded nats-server")
            url = server.start(detach=True)
            (dep.home / "nats" / "nats.pid").write_text(str(server.pid))
            dep.set_nats_url(url)
            nats_info.update(url=url, pid=server.pid, started=True)
    parties = []
    started = []
    for i in dep.party_ids():
        pid = dep.party_pid(i)
        if pid_alive(pid):
            parties.append({"id": i, "pid": pid, "started": False})
            continue
        pid = dep.start_party(i)
        started.append((i, pid))
        parties.append({"id": i, "pid": pid, "started": True})
    try:
        for i, pid in started:
            dep.wait_ready(i, pid)
        worker = {"pid": dep.worker_pid(), "started": False}
        if not pid_alive(worker["pid"]):
            worker = {"pid": dep.start_worker(), "started": True}
            dep.wait_worker_ready(worker["pid"])
    except DeployError as exc:
        return fail(args, EXIT_UNAVAILABLE, str(exc))
    out = {"data_dir": str(dep.home), "nats": nats_info, "parties": parties, "worker": worker,
           "level": cfg["level"], "threshold": cfg["threshold"]}
    human = [f"conclave up in {dep.home} (nats {nats_info['url']}, level {cfg['level']})"]
    human += [f"  party {p['id']}: pid {p['pid']} ({'started' if p['started'] else 'already running'})"
              for p in parties]
    human.append(f"  withdrawal worker: pid {worker['pid']} ({'started' if worker['started'] else 'already running'})")
    if cfg["nats"]["embedded"]:
        human.append("  WARNING: wallets without a policy file sign under the development policy, "
                     "which allows every withdrawal")
    emit(args, out, "\n".join(human))
    return EXIT_OK


def cmd_down(args) -> int:
    dep = _existing(args)
    stopped = []
    for name in dep.worker_names():
        if dep.stop_pid(dep.worker_pid(name)):
            stopped.append(name)
    for i in dep.party_ids():
        if dep.stop_pid(dep.party_pid(i)):
            stopped.append(f"party-{i}")
    cfg = dep.config()
    if cfg["nats"]["embedded"] and dep.stop_pid(dep.nats_pid()):
        stopped.append("nats-server")
    emit(args, {"stopped": stopped}, "stopped " + (", ".join(stopped) if stopped else "nothing (not running)"))
    return EXIT_OK


# -- status ----------------------------------------------------------------------


async def _gather_status(dep: Deployment) -> dict[str, Any]:
    from ops.client import Coordinator

    cfg = dep.config()
    out: dict[str, Any] = {"data_dir": str(dep.home), "level": cfg["level"], "threshold": cfg["threshold"],
                           "nats": {"url": cfg["nats"]["url"], "embedded": cfg["nats"]["embedded"]}}
    if cfg["nats"]["embedded"]:
        pid = dep.nats_pid()
        out["nats"].update(pid=pid, running=pid_alive(pid))
    snaps: dict[int, dict | None] = {}
    reachable = True
    try:
        if cfg["nats"]["embedded"] and not out["nats"]["running"]:
            raise ConnectionRefusedError("the embedded nats-server is not running")
        with anyio.fail_after(5):
            async with Coordinator(dep) as c:
                for i in dep.party_ids():
                    snaps[i] = await c.party_status(i)
                out["pools"] = await _pool_levels(c)
    except (TimeoutError, OSError, Exception):
        reachable = False
    out["nats"]["reachable"] = reachable
    parties, keys, flights, pools = [], {}, {}, {}
    for i in dep.party_ids():
        pid = dep.party_pid(i)
        snap = snaps.get(i)
        if snap is None:
            state = "stopped" if not pid_alive(pid) else "unresponsive"
            parties.append({"id": i, "pid": pid if pid_alive(pid) else None, "state": state})
            continue
        parties.append({"id": i, "pid": snap.get("pid"), "state": snap.get("state"), "busy_with": snap.get("busy_with"),
                        "uptime": snap.get("uptime"), "finished": snap.get("finished"),
                        "rejected_messages": snap.get("rejected_messages")})
        for k in snap.get("keys", []):
            keys.setdefault(k["key_id"], dict(k, holders=[]))["holders"].append(i)
        for f in snap.get("ceremonies", []):
            flights.setdefault(f["execution"], {"execution": f["execution"], "kind": f["kind"], "parties": {}})
            flights[f["execution"]]["parties"][str(i)] = {"round": f["round"], "waiting_for": f["waiting_for"],
                                                          "deadline_in": f["deadline_in"]}
        for key_id, pool in snap.get("presignatures", {}).items():
            pools.setdefault(key_id, {})[str(i)] = pool
    warnings = sorted({w for snap in snaps.values() if snap for w in snap.get("warnings", [])})
    out.update(parties=parties, keys=list(keys.values()), ceremonies=list(flights.values()), presignatures=pools,
               warnings=warnings, worker={"pid": dep.worker_pid(), "running": pid_alive(dep.worker_pid())},
               workers={n: {"pid": dep.worker_pid(n), "running": pid_alive(dep.worker_pid(n))}
                        for n in dep.worker_names()})
    out.setdefault("pools", {})
    return out


async def _pool_levels(c) -> dict[str, int]:
    """Ready presignatures per wallet and quorum, as the schedulers see them."""
    from handlers import withdrawals as wq

    await wq.ensure_withdrawal_streams(c.js)
    return await wq.pool_levels(c.js)


def cmd_status(args) -> int:
    dep = _existing(args)
    st = anyio.run(_gather_status, dep)
    lines = [f"data dir {st['data_dir']}  level {st['level']}",
             f"nats {st['nats']['url']} ({'reachable' if st['nats']['reachable'] else 'UNREACHABLE'})"]
    for p in st["parties"]:
        lines.append(f"  party {p['id']}: {p['state']}" + (f" pid {p['pid']}" if p.get("pid") else ""))
    for k in st["keys"]:
        lines.append(f"  key {k['key_id']}: {k['threshold']}-of-{len(k['parties'])} {k['public_key']}")
    for f in st["ceremonies"]:
        lines.append(f"  in flight {f['execution']} ({f['kind']}): {f['parties']}")
    for name, w in (st["workers"] or {"worker": st["worker"]}).items():
        lines.append(f"  withdrawal {name}: {'running pid ' + str(w['pid']) if w['running'] else 'stopped'}")
    for key_id, pool in st["presignatures"].items():
        lines.append(f"  presignatures held by the parties for {key_id}: {pool}")
    for name, n in sorted(st["pools"].items()):
        lines.append(f"  pool {name}: {n} ready")
    lines += [f"  WARNING: {w}" for w in st["warnings"]]
    emit(args, st, "\n".join(lines))
    return EXIT_OK


# -- ceremonies ------------------------------------------------------------------


def _run(args, kind: str, participants, params, **kw) -> tuple[int, Any]:
    from ops.client import CeremonyFailed, Coordinator

    dep = _existing(args)

    def report(party: int, rep: dict) -> None:
        if not args.json:
            say(f"  party {party}: {rep.get('status')}")

    from engine.ceremony import tracing

    tracing.install("conclave-coordinator")

    async def go():
        async with Coordinator(dep, url=args.nats) as c:
            return await c.run(kind, participants, params, timeout=args.timeout, on_report=report, **kw)

    try:
        return EXIT_OK, anyio.run(go)
    except CeremonyFailed as exc:
        code = EXIT_UNAVAILABLE if exc.status == "timeout" else EXIT_ABORTED
        return fail(args, code, str(exc), execution=exc.execution, status=exc.status, reason=exc.reason,
                     culprits=exc.culprits), None
    except TimeoutError:
        return fail(args, EXIT_UNAVAILABLE, "cannot reach the NATS server"), None


def cmd_keygen(args) -> int:
    dep = _existing(args)
    cfg = dep.config()
    n = args.parties or cfg["parties"]
    t = args.threshold or cfg["threshold"]
    if not 2 <= t <= n <= cfg["parties"]:
        return fail(args, EXIT_USAGE, f"need 2 <= threshold <= parties <= {cfg['parties']} (the deployment's size)")
    if not args.json:
        say(f"running a {t}-of-{n} key generation (keygen + aux-info) over NATS")
    code, outcome = _run(args, "keygen", range(1, n + 1), {"threshold": t})
    if outcome is None:
        return code
    res = outcome.result
    out = {"key_id": res["key_id"], "public_key": res["public_key"], "threshold": res["threshold"],
           "parties": res["parties"], "seconds": round(outcome.seconds, 3)}
    emit(args, out, f"key {out['key_id']}\n  public key {out['public_key']}\n  {t}-of-{n}, {outcome.seconds:.2f}s")
    return EXIT_OK


def _key_and_signers(args, dep: Deployment) -> tuple[dict, tuple[int, ...]]:
    """The key's public record and the signers: ``--signers``, or the first t holders that answer."""
    st = anyio.run(_gather_status, dep)
    alive = [p["id"] for p in st["parties"] if p["state"] in ("idle", "busy")]
    if not alive:
        raise DeployError("no party is running: start them with `conclave up`")
    key = next((k for k in st["keys"] if k["key_id"] == args.key), None)
    if key is None:
        raise DeployError(f"no running party knows key {args.key!r} (parties up: {alive})")
    t = key["threshold"]
    if args.signers:
        try:
            ids = tuple(sorted({int(x) for x in args.signers.split(",") if x.strip()}))
        except ValueError:
            raise DeployError("--signers takes comma-separated party ids, for example 1,3") from None
        if len(ids) != t or not set(ids) <= set(key["parties"]):
            raise DeployError(f"--signers must name exactly {t} of the key's parties {key['parties']}")
        return key, ids
    chosen = [i for i in alive if i in key["parties"]][:t]
    if len(chosen) < t:
        raise DeployError(f"only parties {alive} are up; {t} signers are needed")
    return key, tuple(chosen)


def cmd_presign(args) -> int:
    dep = _existing(args)
    key, signers = _key_and_signers(args, dep)
    made = []
    t0 = time.perf_counter()
    for n in range(args.count):
        code, outcome = _run(args, "presign", signers, {"key_id": args.key})
        if outcome is None:
            return code
        made.append(outcome.result["presig_id"])
        if not args.json:
            say(f"  presignature {n + 1}/{args.count}: {made[-1]} ({outcome.seconds:.2f}s)")
    out = {"key_id": args.key, "signers": list(signers), "presignatures": made,
           "seconds": round(time.perf_counter() - t0, 3)}
    emit(args, out, f"{len(made)} presignature(s) for {args.key} with signers {list(signers)}")
    return EXIT_OK


def cmd_sign(args) -> int:
    try:
        digest = bytes.fromhex(args.digest.removeprefix("0x"))
    except ValueError:
        return fail(args, EXIT_USAGE, "--digest must be hex")
    if len(digest) != 32:
        return fail(args, EXIT_USAGE, f"--digest must be 32 bytes (64 hex digits), got {len(digest)}")
    dep = _existing(args)
    key, signers = _key_and_signers(args, dep)
    params: dict[str, Any] = {"key_id": args.key, "digest": digest}
    if args.presig:
        params["presig_id"] = args.presig
    code, outcome = _run(args, "sign", signers, params)
    if outcome is None:
        return code
    res = outcome.result
    out = {"public_key": res["public_key"], "r": res["r"], "s": res["s"], "v": res["v"], "der": res["der"],
           "digest": res["digest"], "signers": res["signers"], "key_id": res["key_id"],
           "execution": outcome.execution, "seconds": round(outcome.seconds, 3)}
    emit(args, out, "\n".join([
        f"signature over {out['digest']} by parties {out['signers']} ({outcome.seconds:.2f}s)",
        f"  r   {out['r']}", f"  s   {out['s']}", f"  v   {out['v']}", f"  der {out['der']}",
        "  checked: verifies under the group key, low-S, v recovers the key",
    ]))
    return EXIT_OK


def cmd_abort(args) -> int:
    from ops.client import Coordinator

    dep = _existing(args)

    async def go():
        async with Coordinator(dep, url=args.nats) as c:
            return await c.abort(args.execution, args.reason, wait=args.wait)

    try:
        reports = anyio.run(go)
    except TimeoutError:
        return fail(args, EXIT_UNAVAILABLE, "cannot reach the NATS server")
    out = {"execution": args.execution,
           "parties": {str(p): {k: r.get(k) for k in ("status", "reason") if k in r} for p, r in sorted(reports.items())}}
    lines = [f"abort requested for {args.execution}"]
    lines += [f"  party {p}: {r.get('status')}: {r.get('reason', '')}" for p, r in sorted(reports.items())]
    if not reports:
        lines.append("  no party reported on it (unknown execution, or every participant is down)")
    emit(args, out, "\n".join(lines))
    return EXIT_OK


def cmd_replay(args) -> int:
    from ops.replay import render, render_request, replay, replay_request

    dep = _existing(args)
    if (args.execution is None) == (args.request is None):
        return fail(args, EXIT_USAGE, "give an execution id or --request REQUEST_ID")
    if args.request is not None:
        report = replay_request(dep, args.request)
        emit(args, report, render_request(report))
    else:
        report = replay(dep, args.execution)
        emit(args, report, render(report))
    return EXIT_OK


def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every deployment command takes."""
    p.add_argument("--data-dir", help="deployment directory (default: $CONCLAVE_HOME or ./.conclave)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def configure(sub: argparse._SubParsersAction) -> None:

    up = common(sub.add_parser("up", help="start the broker (embedded unless --nats) and the party processes"))
    up.add_argument("--parties", type=int, default=3)
    up.add_argument("--threshold", type=int, default=2, help="default threshold for keygen")
    up.add_argument("--nats", help="use this NATS JetStream server instead of an embedded one")
    up.add_argument("--security-level", default="cggmp21-128", help="cggmp21-128 (default) or dev-2048")
    up.add_argument("--postgres", metavar="DSN", help="keep the event stores in PostgreSQL instead of SQLite")
    up.add_argument("--postgres-schema", help="schema for the PostgreSQL tables")
    up.add_argument("--round-timeout", type=float, default=120.0, help="seconds a party waits for a round")
    up.add_argument("--prime-pool", metavar="FILE", help="pregenerated safe primes (tests and demos only)")
    up.add_argument("--shards", type=int, help="withdrawal request shards (default 2)")
    up.add_argument("--pool-low", type=int, help="refill a presignature pool below this many (default 2)")
    up.add_argument("--pool-high", type=int, help="refill up to this many presignatures (default 8)")
    up.add_argument("--refill-parallel", type=int, help="presigns in flight while refilling a pool (default 1)")
    up.set_defaults(func=_usage_errors(cmd_up))

    down = common(sub.add_parser("down", help="stop what `conclave up` started"))
    down.set_defaults(func=_usage_errors(cmd_down))

    status = common(sub.add_parser("status", help="parties, keys, ceremonies in flight, presignature counts"))
    status.set_defaults(func=_usage_errors(cmd_status))

    kg = common(sub.add_parser("keygen", help="distributed key generation over NATS"))
    kg.add_argument("--threshold", type=int)
    kg.add_argument("--parties", type=int)
    kg.add_argument("--nats", help="override the deployment's NATS URL")
    kg.add_argument("--timeout", type=float, help="give up after this many seconds")
    kg.set_defaults(func=_usage_errors(cmd_keygen))

    ps = common(sub.add_parser("presign", help="make presignatures for a key"))
    ps.add_argument("--key", required=True)
    ps.add_argument("--count", type=int, default=1)
    ps.add_argument("--signers", help="comma-separated party ids (default: the first t that are up)")
    ps.add_argument("--nats")
    ps.add_argument("--timeout", type=float)
    ps.set_defaults(func=_usage_errors(cmd_presign))

    sg = common(sub.add_parser("sign", help="sign a 32-byte digest over NATS"))
    sg.add_argument("--key", required=True)
    sg.add_argument("--digest", required=True, help="32-byte hash, hex")
    sg.add_argument("--signers", help="comma-separated party ids (default: the first t that are up)")
    sg.add_argument("--presig", help="use this presignature (default: presign now)")
    sg.add_argument("--nats")
    sg.add_argument("--timeout", type=float)
    sg.set_defaults(func=_usage_errors(cmd_sign))

    ab = common(sub.add_parser("abort", help="ask every party to abandon a ceremony (secrets destroyed)"))
    ab.add_argument("execution")
    ab.add_argument("--reason", default="aborted by the operator")
    ab.add_argument("--wait", type=float, default=5.0, help="seconds to collect the parties' reports")
    ab.add_argument("--nats")
    ab.set_defaults(func=_usage_errors(cmd_abort))

    rp = common(sub.add_parser("replay", help="timeline of one ceremony, or one withdrawal's decisions, "
                                              "across every party's store"))
    rp.add_argument("execution", nargs="?")
    rp.add_argument("--request", metavar="REQUEST_ID", help="a withdrawal's policy decisions and signatures")
    rp.set_defaults(func=_usage_errors(cmd_replay))
