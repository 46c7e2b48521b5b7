"""Withdrawal policy: one TOML file per wallet, evaluated by every party on its own copy.

A threshold wallet is only as strict as the laxest party that co-signs, so each
party loads its own copy of the policy, evaluates every request independently
with :func:`evaluate` and refuses to join the signing session if it says no.
The SHA-256 of the exact file bytes (:attr:`Policy.digest`) is bound into the
signing session, so parties running different policies cannot sign together.

:func:`evaluate` is pure: the clock (``now``) and the velocity history are
arguments, so a decision can be replayed and audited from the event log.

Loading is strict. Unknown keys, wrong types and impossible values are
:class:`PolicyError`\\ s naming the key: a typo such as ``max_per_txn`` must
not silently turn a limit off.

Format (every table is optional; an absent table means "no restriction")::

    version = 3                                   # required, integer >= 0
    description = "exchange hot wallet, ETH+BTC"  # optional

    # Who may initiate. If [initiators] is present, [roles] must be too (and vice
    # versa); an initiator not listed, or whose role is not allowed, is rejected.
    # Without both tables any initiator is accepted.
    [roles]
    allowed = ["treasury", "withdrawals"]

    [initiators]
    "exchange-hot" = "withdrawals"
    alice = "treasury"
    auditor = "viewer"                            # listed, but may not initiate

    # UTC time window [start, end); days default to all seven. "24:00" is a valid end.
    [window]
    days = ["mon", "tue", "wed", "thu", "fri"]
    start = "08:00"
    end = "20:00"

    # Destination allowlist, compared case-insensitively. Absent: any destination;
    # present but empty: no destination at all.
    [destinations]
    allow = ["0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"]

    # Per-asset limits in base units (wei, sats), as integers or decimal strings
    # (TOML integers stop at 2**63, so wei amounts are usually strings). Every key
    # is optional; an asset with no [limits.<ASSET>] table has no limits at all.
    # daily_* are rolling 24 h totals including the request being evaluated.
    [limits.ETH]
    max_per_tx = "50000000000000000000"           # 50 ETH
    daily_amount = "200000000000000000000"        # 200 ETH per rolling 24 h
    daily_count = 50

    [limits.BTC]
    max_per_tx = 50000000                         # 0.5 BTC

    # Approver BIP-340 x-only public keys (32 bytes hex). One key per name.
    [approvers]
    ops-1 = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
    ops-2 = "c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5"
    ops-3 = "f9308a019258c31049344f85f89d5229b531c845836f99b08601f113bce036f9"

    # Approval tiers: when the amount is strictly above `above`, `required` distinct
    # approvers from `approvers` must sign the request hash. The tier with the
    # highest exceeded `above` for the asset applies.
    [[approvals]]
    asset = "ETH"
    above = "100000000000000000"                  # > 0.1 ETH: one approval
    required = 1
    approvers = ["ops-1", "ops-2", "ops-3"]

    [[approvals]]
    asset = "ETH"
    above = "10000000000000000000"                # > 10 ETH: two approvals
    required = 2
    approvers = ["ops-1", "ops-2", "ops-3"]

Assets are ``ETH`` and ``BTC`` (an unknown asset name is an error, so a typo
cannot leave an asset unlimited).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Any, NoReturn

import coincurve

from schemas.withdrawal import APPROVER_NAME, BitcoinTx, EthereumTx, WithdrawalRequest, verify_approval

__all__ = [
    "ASSETS", "DAYS", "DEV_POLICY_TOML", "DEV_POLICY", "PolicyError", "Window", "AssetLimits", "ApprovalTier",
    "Policy", "Spend", "Withdrawal", "Decision", "load_policy", "spend_of", "evaluate",
]

# asset -> (decimals, base-unit name), for amounts in human-readable reasons
ASSETS: Mapping[str, tuple[int, str]] = MappingProxyType({"ETH": (18, "wei"), "BTC": (8, "sat")})
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = datetime.weekday()
VELOCITY_WINDOW = 86_400.0

# Allows everything: no initiator roles, window, allowlist, limits or approvals.
# Only for the embedded development deployment (ops demo / simulate); a policy
# loaded from these exact bytes has ``dev=True`` so production can refuse it.
DEV_POLICY_TOML = """\
# Development policy: ALLOWS EVERYTHING (no roles, window, allowlist, limits or approvals).
# Only for the embedded development deployment. Never use it for a wallet holding real funds.
version = 0
description = "development policy: allows everything"
"""

_TOP_KEYS = ("version", "description", "roles", "initiators", "window", "destinations", "limits", "approvers",
             "approvals")
_ROLE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DECIMAL = re.compile(r"[0-9]{1,78}")
_TIME = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])|24:00")
_XONLY_HEX = re.compile(r"[0-9a-fA-F]{64}")
_MAX_NAME = 200


class PolicyError(ValueError):
    """An invalid policy file; the message names the offending key."""


def _fail(key: str, message: str) -> NoReturn:
    raise PolicyError(f"{key}: {message}")


# ---------------------------------------------------------------- rules


@dataclass(frozen=True)
class Window:
    """Allowed UTC days (0 = Monday) and minutes of the day ``[start, end)``."""

    days: frozenset[int]
    start: int
    end: int

    def contains(self, at: datetime) -> bool:
        minute = at.hour * 60 + at.minute
        return at.weekday() in self.days and self.start <= minute < self.end

    def describe(self) -> str:
        return f"{_days_text(self.days)} {_hhmm(self.start)}-{_hhmm(self.end)}"


@dataclass(frozen=True)
class AssetLimits:
    """Limits for one asset in base units; None means that limit is not set."""

    max_per_tx: int | None = None
    daily_amount: int | None = None
    daily_count: int | None = None


@dataclass(frozen=True)
class ApprovalTier:
    """Above ``above`` base units of ``asset``, ``required`` of ``approvers`` must sign."""

    asset: str
    above: int
    required: int
    approvers: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    """A parsed policy. Two policies are equal iff their source bytes are (the digest is the identity)."""

    version: int
    digest: bytes
    dev: bool
    source: bytes
    description: str | None = field(default=None, compare=False)
    initiators: Mapping[str, str] | None = field(default=None, compare=False)  # None: anyone may initiate
    allowed_roles: frozenset[str] = field(default=frozenset(), compare=False)
    window: Window | None = field(default=None, compare=False)
    destinations: frozenset[str] | None = field(default=None, compare=False)  # lower-cased; None: anywhere
    limits: Mapping[str, AssetLimits] = field(default_factory=lambda: MappingProxyType({}), compare=False)
    approvers: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}), compare=False)
    tiers: tuple[ApprovalTier, ...] = field(default=(), compare=False)

    def velocity_limited(self, asset: str) -> bool:
        """Whether :func:`evaluate` reads the spend history for ``asset`` (a 24 h limit is set)."""
        limits = self.limits.get(asset)
        return limits is not None and (limits.daily_amount is not None or limits.daily_count is not None)

    @property
    def digest_hex(self) -> str:
        return self.digest.hex()

    def tier_for(self, asset: str, amount: int) -> ApprovalTier | None:
        """The tier with the highest ``above`` that ``amount`` exceeds, if any."""
        exceeded = [t for t in self.tiers if t.asset == asset and amount > t.above]
        return max(exceeded, key=lambda t: t.above, default=None)


# ---------------------------------------------------------------- loading


def _table(v: Any, key: str, allowed: Collection[str] | None = None) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        _fail(key, "must be a table")
    if allowed is not None:
        for k in v:
            if k not in allowed:
                _fail(f"{key}.{k}", f"unknown key (allowed: {', '.join(allowed)})")
    return v


def _int(v: Any, key: str, lo: int = 0) -> int:
    if type(v) is not int or v < lo:  # bool is an int subclass: `daily_count = true` is a typo
        _fail(key, f"must be an integer >= {lo}")
    return v


def _amount(v: Any, key: str) -> int:
    if type(v) is int:
        n = v
    elif isinstance(v, str) and _DECIMAL.fullmatch(v):
        n = int(v)
    else:
        _fail(key, "must be a non-negative integer (an int or a decimal string, in base units)")
    if not 0 <= n < 2**256:
        _fail(key, "must be a non-negative integer below 2**256")
    return n


def _str_list(v: Any, key: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        _fail(key, "must be a list of strings")
    return v


def _minutes(v: Any, key: str) -> int:
    m = _TIME.fullmatch(v) if isinstance(v, str) else None
    if m is None:
        _fail(key, 'must be a "HH:MM" string between "00:00" and "24:00"')
    return 1440 if v == "24:00" else int(m.group(1)) * 60 + int(m.group(2))


def _parse_roles(doc: Mapping[str, Any]) -> tuple[Mapping[str, str] | None, frozenset[str]]:
    if "initiators" not in doc and "roles" not in doc:
        return None, frozenset()
    if "roles" not in doc:
        _fail("roles", "required when [initiators] is present")
    if "initiators" not in doc:
        _fail("initiators", "required when [roles] is present (otherwise nobody could initiate)")
    roles = _table(doc["roles"], "roles", ("allowed",))
    if "allowed" not in roles:
        _fail("roles.allowed", "required")
    allowed = _str_list(roles["allowed"], "roles.allowed")
    for r in allowed:
        if not _ROLE.fullmatch(r):
            _fail("roles.allowed", f"role {r!r} must match {_ROLE.pattern}")
    initiators: dict[str, str] = {}
    for name, role in _table(doc["initiators"], "initiators").items():
        if not 1 <= len(name) <= _MAX_NAME:
            _fail("initiators", f"initiator names must be 1 to {_MAX_NAME} characters")
        if not isinstance(role, str) or not _ROLE.fullmatch(role):
            _fail(f"initiators.{name}", f"must be a role name matching {_ROLE.pattern}")
        initiators[name] = role
    return MappingProxyType(initiators), frozenset(allowed)


def _parse_window(v: Any) -> Window:
    w = _table(v, "window", ("days", "start", "end"))
    for k in ("start", "end"):
        if k not in w:
            _fail(f"window.{k}", "required")
    start, end = _minutes(w["start"], "window.start"), _minutes(w["end"], "window.end")
    if start == 1440:
        _fail("window.start", '"24:00" is only valid as an end')
    if start >= end:
        _fail("window.start", f"{w['start']} must be before window.end {w['end']} (windows do not wrap midnight)")
    days = set(range(7))
    if "days" in w:
        names = _str_list(w["days"], "window.days")
        if not names:
            _fail("window.days", "must not be empty (remove the [window] table or list at least one day)")
        days = set()
        for d in names:
            if d not in DAYS:
                _fail("window.days", f"unknown day {d!r} (use {', '.join(DAYS)})")
            if DAYS.index(d) in days:
                _fail("window.days", f"duplicate day {d!r}")
            days.add(DAYS.index(d))
    return Window(frozenset(days), start, end)


def _parse_destinations(v: Any) -> frozenset[str]:
    t = _table(v, "destinations", ("allow",))
    if "allow" not in t:
        _fail("destinations.allow", "required")
    allow = _str_list(t["allow"], "destinations.allow")
    for a in allow:
        if not a or a != a.strip():
            _fail("destinations.allow", f"{a!r} is not an address (empty or surrounded by spaces)")
    return frozenset(a.lower() for a in allow)


def _asset(v: Any, key: str) -> str:
    if v not in ASSETS:
        _fail(key, f"unknown asset {v!r} (known: {', '.join(sorted(ASSETS))})")
    return v


def _parse_limits(v: Any) -> Mapping[str, AssetLimits]:
    out: dict[str, AssetLimits] = {}
    for asset, t in _table(v, "limits").items():
        _asset(asset, f"limits.{asset}")
        key = f"limits.{asset}"
        t = _table(t, key, ("max_per_tx", "daily_amount", "daily_count"))
        out[asset] = AssetLimits(
            max_per_tx=None if "max_per_tx" not in t else _amount(t["max_per_tx"], f"{key}.max_per_tx"),
            daily_amount=None if "daily_amount" not in t else _amount(t["daily_amount"], f"{key}.daily_amount"),
            daily_count=None if "daily_count" not in t else _int(t["daily_count"], f"{key}.daily_count"),
        )
    return MappingProxyType(out)


def _parse_approvers(v: Any) -> Mapping[str, bytes]:
    out: dict[str, bytes] = {}
    owner: dict[bytes, str] = {}
    for name, key_hex in _table(v, "approvers").items():
        if not APPROVER_NAME.fullmatch(name):
            _fail(f"approvers.{name}", f"approver names must match {APPROVER_NAME.pattern}")
        if not isinstance(key_hex, str) or not _XONLY_HEX.fullmatch(key_hex):
            _fail(f"approvers.{name}", "must be a 32-byte x-only public key as 64 hex characters")
        key = bytes.fromhex(key_hex)
        try:
            coincurve.PublicKeyXOnly(key)
        except ValueError:
            _fail(f"approvers.{name}", "is not a valid secp256k1 x-only public key")
        if key in owner:  # one person holding two names would count twice
            _fail(f"approvers.{name}", f"same key as approvers.{owner[key]}")
        owner[key] = name
        out[name] = key
    return MappingProxyType(out)


def _parse_tiers(v: Any, approvers: Mapping[str, bytes]) -> tuple[ApprovalTier, ...]:
    if not isinstance(v, list):
        _fail("approvals", "must be an array of tables ([[approvals]])")
    tiers: list[ApprovalTier] = []
    for i, t in enumerate(v):
        key = f"approvals[{i}]"
        t = _table(t, key, ("asset", "above", "required", "approvers"))
        for k in ("asset", "above", "required", "approvers"):
            if k not in t:
                _fail(f"{key}.{k}", "required")
        asset = _asset(t["asset"], f"{key}.asset")
        above = _amount(t["above"], f"{key}.above")
        names = _str_list(t["approvers"], f"{key}.approvers")
        if not names:
            _fail(f"{key}.approvers", "must list at least one approver")
        for n in names:
            if n not in approvers:
                _fail(f"{key}.approvers", f"{n!r} is not defined in [approvers]")
        if len(set(names)) != len(names):
            _fail(f"{key}.approvers", "lists an approver twice")
        required = _int(t["required"], f"{key}.required", 1)
        if required > len(names):
            _fail(f"{key}.required", f"{required} is more than the {len(names)} listed approvers")
        if any(x.asset == asset and x.above == above for x in tiers):
            _fail(f"{key}.above", f"another {asset} tier has the same threshold {above}")
        tiers.append(ApprovalTier(asset, above, required, tuple(names)))
    return tuple(tiers)


def load_policy(data: bytes | str) -> Policy:
    """Parse and validate a policy file; the digest covers the exact bytes given."""
    source = data.encode() if isinstance(data, str) else bytes(data)
    try:
        doc = tomllib.loads(source.decode("utf-8"))
    except UnicodeDecodeError:
        _fail("policy", "not UTF-8")
    except tomllib.TOMLDecodeError as e:
        _fail("policy", f"invalid TOML ({e})")
    for k in doc:
        if k not in _TOP_KEYS:
            _fail(k, f"unknown key (allowed: {', '.join(_TOP_KEYS)})")
    if "version" not in doc:
        _fail("version", "required")
    version = _int(doc["version"], "version")
    description = doc.get("description")
    if description is not None and not isinstance(description, str):
        _fail("description", "must be a string")
    initiators, allowed_roles = _parse_roles(doc)
    approvers = _parse_approvers(doc.get("approvers", {}))
    digest = hashlib.sha256(source).digest()
    return Policy(
        version=version,
        digest=digest,
        dev=digest == _DEV_DIGEST,
        source=source,
        description=description,
        initiators=initiators,
        allowed_roles=allowed_roles,
        window=None if "window" not in doc else _parse_window(doc["window"]),
        destinations=None if "destinations" not in doc else _parse_destinations(doc["destinations"]),
        limits=_parse_limits(doc.get("limits", {})),
        approvers=approvers,
        tiers=_parse_tiers(doc.get("approvals", []), approvers),
    )


_DEV_DIGEST = hashlib.sha256(DEV_POLICY_TOML.encode()).digest()
DEV_POLICY: Policy = load_policy(DEV_POLICY_TOML)


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Spend:
    """A past signed withdrawal, for the velocity rules (``at`` in unix seconds)."""

    asset: str
    amount: int
    at: float


@dataclass(frozen=True)
class Withdrawal:
    """What a request moves out of the wallet: asset, amount in base units, external destinations."""

    asset: str
    amount: int
    destinations: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    """The verdict, with the rule that decided and a reason an operator can act on."""

    allowed: bool
    rule: str
    reason: str
    policy_version: int
    policy_digest: str


def spend_of(request: WithdrawalRequest, own_addresses: Collection[str] = ()) -> Withdrawal:
    """The withdrawal a request makes. Bitcoin change (outputs to ``own_addresses``) is not a spend."""
    tx = request.tx
    if isinstance(tx, EthereumTx):
        return Withdrawal("ETH", tx.value, (tx.to,))
    if not isinstance(tx, BitcoinTx):
        raise TypeError(f"unsupported transaction type {type(tx).__name__}")
    own = {a.lower() for a in own_addresses}
    external = [o for o in tx.outputs if o.address.lower() not in own]
    return Withdrawal("BTC", sum(o.amount for o in external), tuple(dict.fromkeys(o.address for o in external)))


def _human(asset: str, amount: int | float) -> str:
    decimals = ASSETS.get(asset, (0, ""))[0]
    return f"{format(Decimal(amount).scaleb(-decimals).normalize(), 'f')} {asset}"


def _base(asset: str, amount: int) -> str:
    """``2000000000000000000 wei (2 ETH)``: exact base units for audit, human units for operators."""
    unit = ASSETS.get(asset, (0, "units"))[1]
    return f"{amount} {unit} ({_human(asset, amount)})"


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _days_text(days: frozenset[int]) -> str:
    """``mon-fri``, ``mon,wed,sat-sun``: consecutive runs of three or more are collapsed."""
    runs: list[list[int]] = []
    for d in sorted(days):
        if runs and runs[-1][-1] == d - 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    parts = []
    for r in runs:
        parts.append(f"{DAYS[r[0]]}-{DAYS[r[-1]]}" if len(r) >= 3 else ",".join(DAYS[d] for d in r))
    return ",".join(parts)


def evaluate(
    policy: Policy, request: WithdrawalRequest, withdrawal: Withdrawal, *, now: float, history: Sequence[Spend],
) -> Decision:
    """Decide whether ``request`` may be signed. Pure: same inputs, same decision, on every party.

    Rules run in a fixed order (initiator, window, destinations, per-tx limit,
    velocity, approvals) and the first failure decides, so every party reports
    the same rule. ``history`` holds earlier signed withdrawals; only those of the
    same asset in ``(now - 24h, now]`` count.
    """
    if withdrawal.asset != request.asset:
        raise ValueError(f"withdrawal asset {withdrawal.asset} does not match the request's {request.asset}")
    if withdrawal.amount < 0:
        raise ValueError("withdrawal amount must not be negative")

    def decide(allowed: bool, rule: str, reason: str) -> Decision:
        return Decision(allowed, rule, reason, policy.version, policy.digest_hex)

    asset, amount = withdrawal.asset, withdrawal.amount

    if policy.initiators is not None:
        role = policy.initiators.get(request.initiator)
        if role is None:
            return decide(False, "initiator", f"initiator {request.initiator!r} has no role in the policy")
        if role not in policy.allowed_roles:
            allowed = ", ".join(sorted(policy.allowed_roles)) or "none"
            return decide(False, "initiator", f"initiator {request.initiator!r} has role {role!r}, which may not "
                                              f"initiate withdrawals (allowed roles: {allowed})")

    if policy.window is not None:
        at = datetime.fromtimestamp(now, timezone.utc)
        if not policy.window.contains(at):
            return decide(False, "window", f"outside the UTC window {policy.window.describe()} "
                                           f"(now {DAYS[at.weekday()]} {at:%H:%M})")

    if policy.destinations is not None:
        for d in withdrawal.destinations:
            if d.lower() not in policy.destinations:
                return decide(False, "destinations", f"destination {d} is not on the allowlist")

    limits = policy.limits.get(asset, AssetLimits())
    if limits.max_per_tx is not None and amount > limits.max_per_tx:
        return decide(False, "limits.max_per_tx",
                      f"value {_base(asset, amount)} exceeds max_per_tx {_base(asset, limits.max_per_tx)} for {asset}")

    if limits.daily_amount is not None or limits.daily_count is not None:
        recent = [s for s in history if s.asset == asset and now - VELOCITY_WINDOW < s.at <= now]
        n = len(recent)
        if limits.daily_amount is not None:
            total = sum(s.amount for s in recent) + amount
            if total > limits.daily_amount:
                return decide(False, "velocity.amount",
                              f"24h {asset} total would be {_base(asset, total)} > daily_amount "
                              f"{_base(asset, limits.daily_amount)} ({n} earlier withdrawals in the window)")
        if limits.daily_count is not None and n + 1 > limits.daily_count:
            return decide(False, "velocity.count", f"24h {asset} count would be {n + 1} > daily_count "
                                                   f"{limits.daily_count}")

    note = ""
    tier = policy.tier_for(asset, amount)
    if tier is not None:
        digest = request.request_hash()
        valid = {
            a.approver for a in request.approvals
            if a.approver in tier.approvers and verify_approval(digest, a, policy.approvers[a.approver])
        }
        summary = (f"needs {tier.required} of [{', '.join(tier.approvers)}] approvals above "
                   f"{_human(asset, tier.above)}; {len(valid)} valid")
        if len(request.approvals) > len(valid):  # say why the others did not count, without failing on them
            summary += f" ({len(request.approvals)} submitted; invalid, duplicate or unlisted ones are ignored)"
        if len(valid) < tier.required:
            return decide(False, "approvals", summary)
        note = f" ({summary})"

    if policy.dev:
        return decide(True, "dev-policy", "development policy: allows everything")
    return decide(True, "allow", f"all rules passed{note}")
