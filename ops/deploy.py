"""A deployment on disk: the data directory, its config, keys and processes.

Layout of the data directory (``./.conclave`` unless ``--data-dir`` or
``CONCLAVE_HOME`` says otherwise)::

    conclave.json          parties, level, NATS URL, store, roster of public keys
    coordinator.key        the operator's identity (signs start and abort commands)
    nats/                  the embedded nats-server's JetStream store, pid and log
    party-<i>/identity.key party i's signing and sealing keys (mode 0600)
    party-<i>/kek.key      party i's key-encryption key for its event store (0600)
    party-<i>/events.sqlite, events.sqlite.vault
    party-<i>/party.pid, party.log

``up`` is idempotent: it creates what is missing and starts what is not running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.ceremony.store import StoreConfig, load_kek
from ops.procs import pid_alive, stop_pid
from schemas.envelope import COORDINATOR, Identity, PeerKeys

__all__ = ["Deployment", "DeployError", "default_home", "pid_alive"]

CONFIG = "conclave.json"


class DeployError(RuntimeError):
    """The data directory is missing, inconsistent, or asks for something impossible."""


def default_home() -> Path:
    return Path(os.environ.get("CONCLAVE_HOME") or ".conclave")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass
class Deployment:
    home: Path

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG

    def exists(self) -> bool:
        return self.config_path.exists()

    def config(self) -> dict[str, Any]:
        try:
            return json.loads(self.config_path.read_text())
        except FileNotFoundError:
            raise DeployError(f"no deployment in {self.home}: run `conclave up` first") from None
        except json.JSONDecodeError as exc:
            raise DeployError(f"{self.config_path} is not valid JSON: {exc}") from None

    def party_dir(self, i: int) -> Path:
        return self.home / f"party-{i}"

    def policy_dir(self, i: int) -> Path:
        """Party ``i``'s own copies of the wallets' policies."""
        return self.party_dir(i) / "policies"

    def party_ids(self) -> list[int]:
        return list(range(1, int(self.config()["parties"]) + 1))

    # -- creation --
    def init(self, *, parties: int, threshold: int, level: str, nats_url: str | None,
             store: dict[str, Any] | None, round_timeout: float, prime_pool: str | None,
             scheduler: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create the data directory and keys, or check an existing one agrees."""
        if self.exists():
            cfg = self.config()
            if cfg["parties"] != parties:
                raise DeployError(f"{self.home} already holds a {cfg['parties']}-party deployment")
            return cfg
        if parties < 2 or not 2 <= threshold <= parties:
            raise DeployError("need at least 2 parties and 2 <= threshold <= parties")
        self.home.mkdir(parents=True, exist_ok=True)
        roster: dict[str, Any] = {}
        coord_path = self.home / "coordinator.key"
        if not coord_path.exists():
            _write_secret(coord_path, Identity.generate(COORDINATOR).to_bytes())
        roster[str(COORDINATOR)] = Identity.from_bytes(coord_path.read_bytes()).public().to_json()
        for i in range(1, parties + 1):
            d = self.party_dir(i)
            d.mkdir(exist_ok=True, mode=0o700)
            if not (d / "identity.key").exists():
                _write_secret(d / "identity.key", Identity.generate(i).to_bytes())
            load_kek(d / "kek.key", create=True)
            roster[str(i)] = Identity.from_bytes((d / "identity.key").read_bytes()).public().to_json()
        cfg = {
            "version": 1,
            "parties": parties,
            "threshold": threshold,
            "level": level,
            "nats": {"url": nats_url, "embedded": nats_url is None},
            "store": store or {"kind": "sqlite"},
            "round_timeout": round_timeout,
            "prime_pool": prime_pool,
            "scheduler": dict(scheduler or {}),
            "roster": roster,
        }
        self._write_config(cfg)
        return cfg

    def set_nats_url(self, url: str) -> None:
        cfg = self.config()
        cfg["nats"]["url"] = url
        self._write_config(cfg)

    def _write_config(self, cfg: dict[str, Any]) -> None:
        tmp = self.config_path.with_suffix(".tmp")  # replace atomically: readers never see half a file
        tmp.write_text(json.dumps(cfg, indent=2))
        tmp.replace(self.config_path)

    # -- keys and stores --
    def roster(self) -> dict[int, PeerKeys]:
        return {int(k): PeerKeys.from_json(v) for k, v in self.config()["roster"].items()}

    def coordinator(self) -> Identity:
        return Identity.from_bytes((self.home / "coordinator.key").read_bytes())

    def identity(self, i: int) -> Identity:
        return Identity.from_bytes((self.party_dir(i) / "identity.key").read_bytes())

    def kek(self, i: int) -> bytes:
        return load_kek(self.party_dir(i) / "kek.key")

    def store_config(self, i: int) -> StoreConfig:
        s = self.config()["store"]
        if s.get("kind", "sqlite") == "sqlite":
            return StoreConfig("sqlite", path=str(self.party_dir(i) / "events.sqlite"))
        if s["kind"] == "memory":
            return StoreConfig("memory")
        return StoreConfig("postgres", dsn=s["dsn"], schema=s.get("schema"))

    # -- processes --
    def nats_pid(self) -> int | None:
        return _read_pid(self.home / "nats" / "nats.pid")

    def party_pid(self, i: int) -> int | None:
        return _read_pid(self.party_dir(i) / "party.pid")

    def worker_pid(self, name: str = "worker") -> int | None:
        return _read_pid(self.home / "worker" / f"{name}.pid")

    def worker_names(self) -> list[str]:
        """Every withdrawal worker this deployment has started (``worker`` is `conclave up`'s)."""
        return sorted(p.stem for p in (self.home / "worker").glob("*.pid"))

    def worker_ready_marker(self, name: str = "worker") -> Path:
        return self.home / "worker" / f"{name}.ready"

    def _spawn(self, module: str, args: list[str], directory: Path, name: str,
               extra_env: dict[str, str] | None = None) -> int:
        directory.mkdir(exist_ok=True, mode=0o700)
        env = dict(os.environ)
        env.update(extra_env or {})
        log = open(directory / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--data-dir", str(self.home.resolve()), *args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        log.close()
        (directory / f"{name}.pid").write_text(str(proc.pid))
        return proc.pid

    def start_party(self, i: int, extra_env: dict[str, str] | None = None) -> int:
        """Spawn party ``i`` as its own OS process (detached); return its pid."""
        return self._spawn("ops.party", ["--party", str(i)], self.party_dir(i), "party", extra_env)

    def start_worker(self, shards: list[int] | None = None, name: str = "worker",
                     extra_env: dict[str, str] | None = None) -> int:
        """Spawn a withdrawal worker owning ``shards`` (default: every shard); return its pid."""
        args = ["--name", name] + (["--shards", ",".join(map(str, shards))] if shards is not None else [])
        return self._spawn("ops.worker", args, self.home / "worker", name, extra_env)

    def wait_worker_ready(self, pid: int, name: str = "worker", timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _read_pid(self.worker_ready_marker(name)) == pid:
                return
            if not pid_alive(pid):
                tail = (self.home / "worker" / f"{name}.log").read_text(errors="replace")[-2000:]
                raise DeployError(f"the withdrawal worker exited during start-up; log tail:\n{tail}")
            time.sleep(0.05)
        raise DeployError(f"the withdrawal worker did not become ready within {timeout:g}s")

    def stop_pid(self, pid: int | None, timeout: float = 10.0) -> bool:
        """SIGTERM, wait, then SIGKILL. True if something was stopped."""
        return stop_pid(pid, timeout)

    def wait_ready(self, i: int, pid: int, timeout: float = 30.0) -> None:
        """Wait for party ``i`` to write its ready marker (connected and subscribed)."""
        marker = self.party_dir(i) / "party.ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _read_pid(marker) == pid:
                return
            if not pid_alive(pid):
                tail = (self.party_dir(i) / "party.log").read_text(errors="replace")[-2000:]
                raise DeployError(f"party {i} exited during start-up; log tail:\n{tail}")
            time.sleep(0.05)
        raise DeployError(f"party {i} did not become ready within {timeout:g}s")
