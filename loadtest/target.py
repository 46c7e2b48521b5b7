"""The deployment under load: one this command starts and stops, or one that is already running.

Everything here is setup or fault injection, never measured work: bringing the
deployment up, the wallet's keygen, a permissive policy on an external broker,
killing and restarting a party, splitting the shards between workers.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from handlers.jetstream import close
from loadtest.baselines import connect_or_fail
from loadtest.errors import EXIT_USAGE, LoadtestError
from ops.cli import main
from ops.client import CeremonyFailed, Coordinator
from ops.deploy import DeployError, Deployment
from ops.procs import pid_alive
from ops.scheduler import SchedulerConfig

__all__ = ["Target", "probe", "start", "attach", "keygen", "check_key", "allow_everything", "kill_party", "restart",
           "split_workers"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# the wallet policy on an external broker, where the development policy is refused: no rule, so every request signs
PERMISSIVE_POLICY = b"""# written by `conclave loadtest` for its own wallet: no rule, so every load-test request signs
version = 1
description = "conclave loadtest: allows every withdrawal"
"""
POLICY_VISIBLE = 30.0  # seconds for every party to report a newly installed policy
WORKER_VIEW = 2.5  # the worker polls party status every second: after this it binds the new policy


@dataclass
class Target:
    """A deployment and what this command may do to it."""

    dep: Deployment
    owned: bool  # started by this command: it may stop, kill and restart its processes
    keep: bool
    made_dir: bool  # the data directory is a temp directory this command created

    @property
    def config(self) -> dict[str, Any]:
        return self.dep.config()

    @property
    def url(self) -> str:
        return self.config["nats"]["url"]

    @property
    def shards(self) -> int:
        return int(self.config["scheduler"].get("shards", 2))

    def scheduler(self) -> SchedulerConfig:
        """What the deployment's workers run with: its config over the scheduler's defaults."""
        return SchedulerConfig.from_config(self.config)

    def describe(self) -> dict[str, Any]:
        cfg, sched = self.config, self.scheduler()
        return {"data_dir": str(self.dep.home), "owned": self.owned, "kept": self.keep or not self.owned,
                "nats_url": self.url, "embedded_broker": cfg["nats"]["embedded"], "level": cfg["level"],
                "parties": cfg["parties"], "threshold": cfg["threshold"], "shards": sched.shards,
                "pool_low": sched.pool_low, "pool_high": sched.pool_high,
                "refill_parallel": sched.refill_parallel, "concurrency_per_shard": sched.concurrency,
                "max_attempts": sched.max_attempts}

    def processes(self) -> dict[str, int]:
        """The deployment's processes on this machine by role, for CPU accounting (the load test is one too)."""
        dep = self.dep
        found = {f"party {i}": dep.party_pid(i) for i in dep.party_ids()}
        found.update({f"worker {n}" if n != "worker" else "worker": dep.worker_pid(n) for n in dep.worker_names()})
        if self.config["nats"]["embedded"]:
            found["nats-server"] = dep.nats_pid()
        found["loadtest"] = os.getpid()
        return {name: pid for name, pid in found.items() if pid}

    def cpu_seconds(self) -> dict[str, tuple[int, float]]:
        """(pid, user + system CPU seconds so far) per process (Linux ``/proc``); gone ones are left out."""
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for name, pid in self.processes().items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            out[name] = (pid, (int(fields[11]) + int(fields[12])) / tick)
        return out

    def close(self, remove: bool) -> None:
        """`conclave down` a deployment this command started (unless --keep); drop its temp directory if asked."""
        if not self.owned or self.keep:
            return
        _conclave("down", "--data-dir", str(self.dep.home))
        if remove and self.made_dir:
            shutil.rmtree(self.dep.home, ignore_errors=True)


def _conclave(*argv: str) -> tuple[int, str]:
    """A `conclave` command run in this process; its output is returned, since stdout belongs to the report."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue().strip()


def start(home: Path, made_dir: bool, keep: bool, level: str, prime_pool: str | None, nats: str | None,
          scheduler: dict[str, int | None]) -> Target:
    """`conclave up` a new deployment in ``home``; on failure stop whatever did start and say why."""
    argv = ["up", "--data-dir", str(home), "--security-level", level]
    for flag, value in (("--prime-pool", prime_pool), ("--nats", nats), *((f"--{k.replace('_', '-')}", v)
                                                                         for k, v in scheduler.items())):
        if value is not None:
            argv += [flag, str(value)]
    code, text = _conclave(*argv)
    target = Target(Deployment(home), owned=True, keep=False, made_dir=made_dir)
    if code != 0:
        if target.dep.exists():
            target.close(remove=False)
        raise LoadtestError(f"the deployment did not start (`conclave {' '.join(argv)}` exited {code}):\n{text}\n"
                            f"logs are under {home}")
    target.keep = keep
    return target


def probe(url: str) -> None:
    """LoadtestError unless the broker at ``url`` answers: checked before anything is created for it."""

    async def connect_and_close() -> None:
        await close(await connect_or_fail(url, "conclave-loadtest-probe"))

    anyio.run(connect_and_close)


def attach(home: Path) -> Target:
    dep = Deployment(home)
    if not dep.exists():
        raise LoadtestError(f"no deployment in {home}: start one with `conclave up --data-dir {home}`, or leave out "
                            "--data-dir/--key to let the load test start its own", EXIT_USAGE)
    return Target(dep, owned=False, keep=True, made_dir=False)


async def keygen(target: Target) -> str:
    """A new wallet on every party (keygen + aux-info over NATS): the one the load signs for."""
    try:
        async with Coordinator(target.dep) as c:
            out = await c.run("keygen", target.dep.party_ids(), {"threshold": int(target.config["threshold"])})
    except CeremonyFailed as exc:
        raise LoadtestError(f"keygen failed: {exc}; see the party logs under {target.dep.home}") from None
    except TimeoutError:
        raise LoadtestError(f"cannot reach the deployment's broker at {target.url}") from None
    return out.result["key_id"]


async def check_key(target: Target, key_id: str) -> None:
    """LoadtestError unless a running party of the deployment holds ``key_id``."""
    for status in await _statuses(target):
        if any(k["key_id"] == key_id for k in status.get("keys", [])):
            return
    raise LoadtestError(f"no running party in {target.dep.home} holds key {key_id!r}: see `conclave status "
                        f"--data-dir {target.dep.home}`", EXIT_USAGE)


async def _statuses(target: Target) -> list[dict[str, Any]]:
    try:
        async with Coordinator(target.dep) as c:
            found = [await c.party_status(i) for i in target.dep.party_ids()]
    except TimeoutError:
        raise LoadtestError(f"cannot reach the deployment's broker at {target.url}: is it up? "
                            f"(`conclave status --data-dir {target.dep.home}`)") from None
    return [s for s in found if s]


def allow_everything(target: Target, key_id: str) -> None:
    """Install a policy without rules for the load test's wallet (an external broker refuses the development one)."""
    path = target.dep.home / "loadtest-policy.toml"
    path.write_bytes(PERMISSIVE_POLICY)
    code, text = _conclave("policy", "apply", "--data-dir", str(target.dep.home), "--key", key_id, str(path), "--json")
    if code != 0:
        raise LoadtestError(f"installing the load test's policy failed:\n{text}")
    anyio.run(_wait_policy, target, key_id, json.loads(text.splitlines()[-1])["digest"])


async def _wait_policy(target: Target, key_id: str, digest: str) -> None:
    deadline = time.monotonic() + POLICY_VISIBLE
    while time.monotonic() < deadline:
        seen = [s.get("policies", {}).get(key_id, {}).get("digest") for s in await _statuses(target)]
        if len(seen) == len(target.dep.party_ids()) and set(seen) == {digest}:
            await anyio.sleep(WORKER_VIEW)
            return
        await anyio.sleep(0.5)
    raise LoadtestError(f"the parties did not report the load test's policy within {POLICY_VISIBLE:g}s")


def kill_party(target: Target, party: int) -> int:
    """SIGKILL one party process (no chance to clean up) and wait until it is gone; returns its pid."""
    pid = target.dep.party_pid(party)
    if not pid_alive(pid):
        raise LoadtestError(f"party {party} is not running, so it cannot be killed for the fault")
    os.kill(pid, signal.SIGKILL)
    while pid_alive(pid):  # also reaps it: the party is our child when this process ran `conclave up`
        time.sleep(0.02)
    return pid


async def restart(target: Target) -> None:
    """`conclave up` in a child process: it starts whatever is not running and waits until it is ready."""
    argv = [sys.executable, "-m", "ops.cli", "up", "--data-dir", str(target.dep.home.resolve())]
    done = await anyio.run_process(argv, check=False, cwd=PROJECT_ROOT)
    if done.returncode != 0:
        raise LoadtestError(f"`conclave up` could not restart the deployment:\n{done.stderr.decode(errors='replace')}")


def split_workers(target: Target) -> list[str]:
    """Stop the worker owning every shard and start one worker per shard in its place."""
    dep = target.dep
    dep.stop_pid(dep.worker_pid())
    names = [f"worker-s{shard}" for shard in range(target.shards)]
    pids = {name: dep.start_worker([shard], name=name) for shard, name in enumerate(names)}
    try:
        for name, pid in pids.items():
            dep.wait_worker_ready(pid, name)
    except DeployError as exc:
        raise LoadtestError(f"a shard worker did not start: {exc}") from None
    return names
