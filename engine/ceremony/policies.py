"""A party's own copy of each wallet's policy.

Each party reads policies from its own directory (``<party dir>/policies/<key id>.toml``),
never from the coordinator, so a compromised coordinator cannot loosen them.
``conclave policy apply`` writes the file into every local party's directory;
in a distributed deployment each party's operator installs it.

A wallet without a file gets the built-in development policy (allow everything)
only when ``allow_dev`` is set, which the embedded single-machine deployment does.
Against an external broker a wallet without an explicit policy cannot sign.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from engine.policy import DEV_POLICY, Policy, PolicyError, load_policy

__all__ = ["PolicyBook", "NoPolicy", "policy_path"]

log = logging.getLogger("conclave.policy")

_KEY_ID = re.compile(r"[A-Za-z0-9_.:-]{1,80}")


class NoPolicy(Exception):
    """No usable policy for a wallet; the message says why."""


def policy_path(directory: Path, key_id: str) -> Path:
    if not _KEY_ID.fullmatch(key_id) or key_id.startswith("."):
        raise ValueError(f"invalid key id {key_id!r}")
    return directory / f"{key_id}.toml"


class PolicyBook:
    """Loads a wallet's policy file when it changes; falls back to the dev policy if allowed."""

    def __init__(self, directory: Path | str | None, *, allow_dev: bool) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.allow_dev = allow_dev
        self._cache: dict[str, tuple[tuple[int, int], Policy]] = {}
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"PolicyBook({self.directory}, allow_dev={self.allow_dev})"

    def get(self, key_id: str) -> Policy:
        """The policy in force for ``key_id``; raise NoPolicy when there is none."""
        path = policy_path(self.directory, key_id) if self.directory is not None else None
        try:
            st = path.stat() if path is not None else None
        except FileNotFoundError:
            st = None
        if st is None:
            if not self.allow_dev:
                raise NoPolicy(f"no policy installed for wallet {key_id}: "
                               "a deployment on an external broker signs only under an explicit policy")
            if key_id not in self._warned:
                self._warned.add(key_id)
                log.warning("WALLET %s HAS NO POLICY: the development policy allows EVERY withdrawal. "
                            "Install one with `conclave policy apply --key %s FILE`.", key_id, key_id)
            return DEV_POLICY
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(key_id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            policy = load_policy(path.read_bytes())
        except (OSError, PolicyError) as exc:
            raise NoPolicy(f"the policy file for wallet {key_id} is unusable: {exc}") from None
        self._cache[key_id] = (stamp, policy)
        log.info("wallet %s: policy version %s (%s) in force", key_id, policy.version, policy.digest.hex()[:16])
        return policy

    def install(self, key_id: str, data: bytes) -> Policy:
        """Validate and atomically write a new policy version for ``key_id``."""
        if self.directory is None:
            raise NoPolicy("this party has no policy directory")
        policy = load_policy(data)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = policy_path(self.directory, key_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return policy

    def uses_dev(self) -> list[str]:
        """Wallets this party has signed for under the development policy."""
        return sorted(self._warned)
