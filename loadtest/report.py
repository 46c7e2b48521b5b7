"""``report.md``, the ratio table against targets, and the short summary printed at the end.

Everything is rendered from the result dict alone (what ``result.json`` holds),
so a report can be regenerated or checked from a stored result.
"""

from __future__ import annotations

from typing import Any

__all__ = ["targets", "scenario_figures", "render_markdown", "summary_text"]

P50_OVER_NATS = 10.0
P99_MS = 25.0
BURST_PER_S = 300.0
PRESIGN_OVER_MODEL = 0.7
# a peer's published figures for threshold ECDSA (GG18) over NATS JetStream: 134-167 signatures per minute
PEER_PER_MIN = (134.0, 167.0)
EXPLAINED = {
    "burst": "the pool filled for both phases; withdrawals one at a time (the latency targets), then, after a few "
             "warm-up ones, every request published at once (the throughput target)",
    "sustained": "an open loop at a fixed rate with the pool refilling in the background (or off: every withdrawal "
                 "presigns)",
    "shards": "the same burst with one worker owning every shard, then with one worker per shard",
    "faults": "a closed loop; once a third of the requests are answered party 2 is SIGKILLed, then restarted with "
              "`conclave up` after --down-for seconds",
}


def _num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"


def _row(figure: str, measured: str, ratio: float | None, target: str, met: bool | None,
         note: str = "") -> dict[str, Any]:
    return {"figure": figure, "measured": measured, "ratio": None if ratio is None else round(ratio, 3),
            "target": target, "met": met, "note": note}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each load figure against its baseline and its target; ``met`` is None where there is nothing to meet."""
    base, runs = result["baselines"], result["runs"]
    nats_p50 = base["nats_rtt"]["p50_ms"]
    sign_ms = base["coincurve_sign"]["median_us"] / 1000
    rows = []
    for run in runs:
        tag = f" ({run['name']})" if len(runs) > 1 else ""
        judged_on = run.get("judged_on")
        rows += _latency_rows(run, tag, nats_p50, judged=judged_on in (None, "latency"))
        rate = run["throughput_per_s"]
        if result["scenario"] in ("burst", "shards") and judged_on in (None, "throughput"):
            rows.append(_row(f"burst throughput{tag}", f"{_num(rate)} signatures/s", rate / BURST_PER_S,
                             f"≥ {BURST_PER_S:g}/s", rate >= BURST_PER_S))
        if run["per_signature_ms"]:
            rows.append(_row(f"wall time per signature under load ÷ single-key coincurve sign{tag}",
                             f"{_num(run['per_signature_ms'], 2)} ms ÷ {sign_ms * 1000:.1f} µs",
                             run["per_signature_ms"] / sign_ms, "— (no target)", None))
        if result["scenario"] == "sustained":
            rows.append(_peer_row(run, result["settings"]["load"]))
    presign = base.get("presign") or {}
    if "ratio_presign_to_model" in presign:
        ratio = presign["ratio_presign_to_model"]
        rows.append(_row("presign per party ÷ cost model n·(12G+56N+33N²)",
                         f"{presign['presign_per_party_s'] * 1000:.1f} ms ÷ "
                         f"{presign['model_presign_per_party_s'] * 1000:.1f} ms", ratio,
                         f"≤ {PRESIGN_OVER_MODEL:g}×", ratio <= PRESIGN_OVER_MODEL))
    return rows


def _latency_rows(run: dict[str, Any], tag: str, nats_p50: float, judged: bool = True) -> list[dict[str, Any]]:
    """The latency targets; a phase that queues on purpose (a burst) shows them without a verdict."""
    lat = run["latency_ms"]
    if not lat["count"]:
        return []
    ratio = lat["p50"] / nats_p50
    note = "" if judged else "the latency targets are for one withdrawal at a time (burst); here requests queue"
    return [
        _row(f"latency p50 ÷ NATS round-trip p50{tag}", f"{_num(lat['p50'])} ms ÷ {nats_p50:.3f} ms", ratio,
             f"≤ {P50_OVER_NATS:g}×", ratio <= P50_OVER_NATS if judged else None, note),
        _row(f"latency p99{tag}", f"{_num(lat['p99'])} ms", lat["p99"] / P99_MS, f"≤ {P99_MS:g} ms",
             lat["p99"] <= P99_MS if judged else None, note),
    ]


def _peer_row(run: dict[str, Any], load: dict[str, Any]) -> dict[str, Any]:
    """Against the top of the peer's range; an offered load below it cannot show more, so it is not judged."""
    low, high = PEER_PER_MIN
    per_min = run["throughput_per_min"]
    offered = None if load["concurrency"] else (load["rate"] or 0) * 60
    judged = offered is None or offered == 0 or offered >= high
    note = "" if judged else (f"the offered load ({offered:g}/min) is below the reference, so it cannot show "
                              f"more; use --rate {high / 60:.1f} or more, or --concurrency")
    return _row(f"sustained throughput vs peer (GG18 over NATS JetStream, {low:g}–{high:g}/min)",
                f"{_num(per_min)} signatures/min", per_min / high, f"≥ {high:g}/min",
                per_min >= high if judged else None, note)


def scenario_figures(result: dict[str, Any]) -> dict[str, Any]:
    """The one figure a scenario exists for, beside the per-run table."""
    runs = result["runs"]
    if result["scenario"] == "shards" and len(runs) == 2:
        one, split = runs[0]["throughput_per_s"], runs[1]["throughput_per_s"]
        return {"one_worker_per_s": one, "worker_per_shard_per_s": split,
                "ratio": round(split / one, 3) if one else None}
    if result["scenario"] == "sustained":
        return {"signatures_per_s": runs[0]["throughput_per_s"], "signatures_per_min": runs[0]["throughput_per_min"]}
    if result["scenario"] == "faults":
        return {"phases": {k: {"issued": v["issued"], "signed": v["signed"], "errors": v["errors"],
                               "retries": v["retries"]["total"], "latency_ms": v["latency_ms"]}
                           for k, v in runs[0].get("phases", {}).items()}}
    figures = {"signatures_per_s": runs[-1]["throughput_per_s"]}  # a burst's last phase is the burst itself
    if len(runs) > 1:
        figures["one_at_a_time_latency_ms"] = runs[0]["latency_ms"]
    return figures


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "—"}[met]


def _table(header: list[str], rows: list[list[str]], align: str = "l") -> list[str]:
    sep = ["---"] + [("---:" if align == "r" else "---") for _ in header[1:]]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |",
            *("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows)]


def _setup(result: dict[str, Any]) -> list[str]:
    d, s, m, load = result["deployment"], result["settings"], result["machine"], result["loadavg_1m"]
    started = "started by this run" + ("" if not d["owned"] else ", kept running (--keep)" if d["kept"]
                                        else ", torn down after it")
    broker = "embedded nats-server" if d["embedded_broker"] else "external NATS broker"
    pool = "off" if d["pool_high"] == 0 else (f"refill below {d['pool_low']} up to {d['pool_high']}, "
                                               f"{d['refill_parallel']} presign(s) in flight while refilling")
    rows = [
        ["deployment", f"{started if d['owned'] else 'already running (--data-dir/--key), left as it was'}; "
                       f"{broker} at {d['nats_url']}"],
        ["data directory", f"`{d['data_dir']}`"],
        ["security level", d["level"]],
        ["parties / threshold", f"{d['parties']} / {d['threshold']} (quorum 1, 2 while every party is healthy)"],
        ["shards / requests in flight per shard", f"{d['shards']} / {d['concurrency_per_shard']}"],
        ["sign attempts per request", str(d["max_attempts"])],
        ["presignature pool", pool],
        ["wallet", f"`{d['key_id']}`"],
        ["load", f"{s['load']['mode']}; {s['requests']} requests per phase after {s['warmup']} warm-up; issuing "
                 f"stops after {s['load']['duration']:g} s, then {s['load']['timeout']:g} s for outstanding results"],
        ["requests", "Ethereum EIP-1559 transfers on HD paths m/0/k, JSON on `conclave.withdrawals.<shard>`; results "
                     "from one subscription on `conclave.results.*` and `conclave.deadletter.*`"],
        ["machine", f"{m['nproc']} CPUs ({m['cpu_model']}), {m['platform']}, Python {m['python']}, {m['gmp']}, "
                    f"coincurve {m['coincurve']}; the load generator shares it with the broker, parties and worker"],
        ["load average (1 min)", f"{load['start']:.2f} at the start, {load['end']:.2f} at the end"
                                 + (" (above the CPU count: other work competed with this run)"
                                    if max(load.values()) > m["nproc"] else "")],
    ]
    return _table(["", ""], rows)


def _summary(result: dict[str, Any]) -> list[str]:
    runs = result["runs"]
    header = ["", *(r["name"] for r in runs)]

    def row(label: str, fn) -> list[str]:
        return [label, *(fn(r) for r in runs)]

    lat = lambda r, k: _num(r["latency_ms"][k])  # noqa: E731
    rows = [
        row("requests issued / not issued", lambda r: f"{r['issued']} / {r['not_issued']}"),
        row("signed", lambda r: str(r["signed"])),
        row("errors (lost included)", lambda r: str(r["error_count"])),
        row("lost (no result in time)", lambda r: str(r["lost"])),
        row("throughput, signatures/s", lambda r: _num(r["throughput_per_s"], 2)),
        row("throughput, signatures/min", lambda r: _num(r["throughput_per_min"], 0)),
        row("averaged over (first publish → last signature)", lambda r: f"{_num(r['window_s'], 2)} s"),
        row("latency p50 / p90 / p99 (ms)", lambda r: f"{lat(r, 'p50')} / {lat(r, 'p90')} / {lat(r, 'p99')}"),
        row("latency min / mean / max (ms)", lambda r: f"{lat(r, 'min')} / {lat(r, 'mean')} / {lat(r, 'max')}"),
        row("retries (total)", lambda r: str(r["retries"]["total"])),
        row("retries per request → requests", lambda r: _dist(r["retries"]["per_request"])),
        row("dead-lettered", lambda r: str(r["deadlettered"])),
        row("pool before load → after", lambda r: f"{r['pool']['before_load']} → {r['pool']['after_load']}"),
        row("pool fill before the phase (not measured)", _fill),
    ]
    out = _table(header, rows, "r")
    out += ["", "Latency counts signed requests only, from just before the publish to the arrival of the result."]
    return out


def _dist(d: dict[str, int]) -> str:
    return ", ".join(f"{k}→{v}" for k, v in d.items()) or "—"


def _fill(run: dict[str, Any]) -> str:
    f = run["pool"]["fill"]
    return "—" if not f else f"{f['start']} → {f['level']} in {f['seconds']:g} s"


def _baselines(result: dict[str, Any]) -> list[str]:
    b = result["baselines"]
    nats, sign = b["nats_rtt"], b["coincurve_sign"]
    rows = [[f"NATS request/reply round trip, {nats['requests']} × {nats['payload_bytes']} B, p50 / p99",
             f"{nats['p50_ms']:.3f} / {nats['p99_ms']:.3f} ms"],
            ["single-key secp256k1 sign (coincurve `sign_recoverable`), median", f"{sign['median_us']:.1f} µs"]]
    p = b.get("presign") or {}
    if "primitives" in p:
        g = p["primitives"]
        rows += [["G: secp256k1 point multiplication", f"{g['G'] * 1e6:.1f} µs"],
                 [f"N: powmod mod a {p['modulus_bits']}-bit Paillier N", f"{g['N'] * 1e3:.2f} ms"],
                 ["N²: powmod mod N²", f"{g['N2'] * 1e3:.2f} ms"],
                 ["presign per party, model n·(12G+56N+33N²), n = 2", f"{p['model_presign_per_party_s'] * 1e3:.1f} ms"],
                 [f"presign per party, measured in process (median of {p['runs']})",
                  f"{p['presign_per_party_s'] * 1e3:.1f} ms"],
                 ["Paillier primes for these", p["primes"]]]
    else:
        rows.append(["primitives and presign", p.get("skipped", "not measured")])
    return _table(["baseline", "value"], rows)


def _targets(result: dict[str, Any]) -> list[str]:
    rows = [[t["figure"], t["measured"], "—" if t["ratio"] is None else f"{t['ratio']:.2f}", t["target"],
             _verdict(t["met"]) + (f" ({t['note']})" if t["note"] else "")] for t in result["targets"]]
    return _table(["figure", "measured", "ratio", "target", "verdict"], rows)


def _errors(result: dict[str, Any]) -> list[str]:
    rows = [[r["name"], kind, str(n)] for r in result["runs"] for kind, n in r["errors"].items()]
    if not rows:
        return ["No errors: every issued request was signed."]
    return _table(["phase", "kind", "requests"], rows)


def _fault(result: dict[str, Any]) -> list[str]:
    run = result["runs"][0]
    out = ["### Events", ""] + _table(["t (s)", "event"], [[f"{e['t']:.2f}", e["label"]] for e in run["events"]])
    phases = run.get("phases", {})
    if phases:
        rows = [[name, str(p["issued"]), str(p["signed"]), str(p["error_count"]), str(p["retries"]["total"]),
                 _num(p["latency_ms"]["p50"]), _num(p["latency_ms"]["p99"]), _num(p["latency_ms"]["max"])]
                for name, p in phases.items()]
        out += ["", "### Before, during and after the fault (by issue time)", ""]
        out += _table(["phase", "issued", "signed", "errors", "retries", "p50 ms", "p99 ms", "max ms"],
                      rows, "r")
    return out


def _scenario_line(result: dict[str, Any]) -> list[str]:
    f = result["scenario_figures"]
    if result["scenario"] == "shards" and "ratio" in f:
        return [f"One worker per shard: {_num(f['worker_per_shard_per_s'], 2)} signatures/s against "
                f"{_num(f['one_worker_per_s'], 2)} with one worker: **× {_num(f['ratio'], 2)}**.", ""]
    if result["scenario"] == "sustained":
        return [f"Sustained throughput: **{_num(f['signatures_per_s'], 2)} signatures/s = "
                f"{_num(f['signatures_per_min'], 0)} signatures/min**.", ""]
    return []


def _cpu(result: dict[str, Any]) -> list[str]:
    """CPU milliseconds per signature by process: what bounds throughput on this machine."""
    runs = [r for r in result["runs"] if r.get("cpu", {}).get("ms_per_signature")]
    if not runs:
        return ["No process could be read (an external broker's server, or no signature)."]
    names = list(dict.fromkeys(n for r in runs for n in r["cpu"]["ms_per_signature"]))
    rows = [[n, *(_num(r["cpu"]["ms_per_signature"].get(n), 2) for r in runs)] for n in names]
    rows.append(["**all processes**", *(f"**{_num(r['cpu']['total_ms_per_signature'], 2)}**" for r in runs)])
    nproc = result["machine"]["nproc"]
    out = _table(["CPU ms per signature", *(r["name"] for r in runs)], rows, "r")
    return out + ["", f"User + system CPU of each process during the phase, divided by the signatures it produced. "
                      f"With {nproc} CPUs, {nproc} × 1000 ÷ the total is the most signatures per second these "
                      f"processes could give if nothing else ran."]


def render_markdown(result: dict[str, Any]) -> str:
    verdict = ("every request was signed" if result["ok"]
               else "**not every request was signed** (see Errors)")
    md = [
        f"# conclave loadtest: {result['scenario']}", "",
        f"{EXPLAINED[result['scenario']].capitalize()}.", "",
        f"Command: `{result['command']}`", "",
        f"Started {result['started_utc']}, wall time {result['wall_s']:.1f} s; exit code {result['exit_code']}: "
        f"{verdict}.", "",
        "## Setup", "", *_setup(result), "",
        "## Summary", "", *_scenario_line(result), *_summary(result), "",
        "## CPU by process", "", *_cpu(result), "",
        "## Baselines (same run, before the load)", "", *_baselines(result), "",
        "## Against targets", "", *_targets(result), "",
        "## Errors", "", *_errors(result), "",
    ]
    if result["scenario"] == "faults":
        md += ["## The fault", "", *_fault(result), ""]
    md += ["## Files", "", *(f"- `{name}`" for name in result["files"].values()), ""]
    return "\n".join(md)


def summary_text(result: dict[str, Any], out_dir: str) -> str:
    """The few lines printed when the run ends."""
    lines = [f"conclave loadtest {result['scenario']} ({result['deployment']['level']}): "
             + ("every request signed" if result["ok"] else "NOT every request signed")]
    for r in result["runs"]:
        lat = r["latency_ms"]
        errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "none"
        lines.append(f"  {r['name']}: {r['signed']}/{r['issued']} signed, errors: {errors}; "
                     f"{_num(r['throughput_per_s'], 2)} signatures/s ({_num(r['throughput_per_min'], 0)}/min); "
                     f"latency p50 {_num(lat['p50'])} ms, p99 {_num(lat['p99'])} ms, max {_num(lat['max'])} ms; "
                     f"retries {r['retries']['total']}")
    lines += [f"  {line.replace('**', '')}" for line in _scenario_line(result) if line]
    met = [t for t in result["targets"] if t["met"] is not None]
    lines.append(f"  targets met: {sum(t['met'] for t in met)} of {len(met)}"
                 + "".join(f"\n    {_verdict(t['met']).strip('*')}: {t['figure']} = {t['measured']} (target "
                           f"{t['target']})" for t in met))
    lines += [f"    not judged: {t['figure']}: {t['note']}" for t in result["targets"]
              if t["met"] is None and t["note"]]
    d = result["deployment"]
    if d["owned"] and d["kept"]:
        lines.append(f"  deployment left running in {d['data_dir']}: load it again with --data-dir {d['data_dir']} "
                     f"--key {d['key_id']}; stop it with `conclave down --data-dir {d['data_dir']}`")
    lines.append("  files: " + ", ".join(f"{out_dir.rstrip('/')}/{name}" for name in result["files"].values()))
    return "\n".join(lines)
