"""Policy engine: file validation and one allow/deny test per rule."""

from __future__ import annotations

import copy
import hashlib
import textwrap
from datetime import datetime, timezone

import coincurve
import pytest

import engine.policy as policy_mod
from engine.policy import (
    DEV_POLICY,
    DEV_POLICY_TOML,
    Decision,
    Policy,
    PolicyError,
    Spend,
    Withdrawal,
    evaluate,
    load_policy,
    spend_of,
)
from schemas.withdrawal import Approval, WithdrawalRequest, sign_approval

ETH_1 = 10**18
SECRETS = {f"ops-{i}": (100 + i).to_bytes(32, "big") for i in (1, 2, 3, 4)}
XONLY = {n: coincurve.PrivateKey(s).public_key_xonly.format().hex() for n, s in SECRETS.items()}
DEST = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
OTHER = "0x" + "11" * 20
# Wednesday 2024-01-03 10:00 UTC
WED_10 = datetime(2024, 1, 3, 10, 0, tzinfo=timezone.utc).timestamp()
SAT_0912 = datetime(2024, 1, 6, 9, 12, tzinfo=timezone.utc).timestamp()

ETH_REQ = {
    "request_id": "w-1", "key_id": "hot", "chain": "ethereum",
    "tx": {"chain_id": 1, "nonce": 0, "to": DEST, "value": str(ETH_1), "gas": 21000,
           "max_fee_per_gas": "30000000000", "max_priority_fee_per_gas": "1000000000", "data": "0x"},
    "initiator": "exchange-hot",
}
BTC_REQ = {
    "request_id": "w-2", "key_id": "hot-btc", "chain": "bitcoin",
    "tx": {"network": "regtest", "inputs": [{"txid": "aa" * 32, "vout": 0, "amount": 1_000_000}],
           "outputs": [{"address": "bcrt1qpayee", "amount": 300_000},
                       {"address": "BCRT1QCHANGE", "amount": 690_000}]},
    "initiator": "exchange-hot",
}

FULL = f"""
version = 7
description = "test wallet"

[roles]
allowed = ["withdrawals"]

[initiators]
"exchange-hot" = "withdrawals"
auditor = "viewer"

[window]
days = ["mon", "tue", "wed", "thu", "fri"]
start = "08:00"
end = "20:00"

[destinations]
allow = ["{DEST.lower()}", "bcrt1qpayee"]

[limits.ETH]
max_per_tx = "50000000000000000000"
daily_amount = "60000000000000000000"
daily_count = 3

[limits.BTC]
max_per_tx = 500000

[approvers]
ops-1 = "{XONLY['ops-1']}"
ops-2 = "{XONLY['ops-2']}"
ops-3 = "{XONLY['ops-3']}"
ops-4 = "{XONLY['ops-4']}"

[[approvals]]
asset = "ETH"
above = "10000000000000000000"
required = 2
approvers = ["ops-1", "ops-2", "ops-3"]

[[approvals]]
asset = "ETH"
above = "2000000000000000000"
required = 1
approvers = ["ops-1", "ops-2", "ops-3"]
"""


def request(base: dict = ETH_REQ, **tx: object) -> WithdrawalRequest:
    d = copy.deepcopy(base)
    d["tx"].update(tx)
    return WithdrawalRequest.from_json(d)


def run(policy: Policy, r: WithdrawalRequest, *, now: float = WED_10, history: tuple[Spend, ...] = (),
        own: tuple[str, ...] = ()) -> Decision:
    return evaluate(policy, r, spend_of(r, own), now=now, history=history)


def approved(r: WithdrawalRequest, *names: str) -> WithdrawalRequest:
    return r.with_approvals([sign_approval(r, n, SECRETS[n]) for n in names])


@pytest.fixture(scope="module")
def full() -> Policy:
    return load_policy(FULL)


def minimal(body: str = "") -> Policy:
    return load_policy("version = 1\n" + textwrap.dedent(body))


# ---------------------------------------------------------------- loading


def test_full_policy_parses(full: Policy) -> None:
    assert full.version == 7 and full.description == "test wallet" and not full.dev
    assert full.digest == hashlib.sha256(FULL.encode()).digest() and full.source == FULL.encode()
    assert full.limits["ETH"].max_per_tx == 50 * ETH_1 and full.limits["BTC"].daily_amount is None
    assert full.window is not None and full.window.describe() == "mon-fri 08:00-20:00"
    assert DEST.lower() in (full.destinations or ())


def test_docstring_example_is_valid() -> None:
    doc = policy_mod.__doc__ or ""
    example = doc.split("::\n", 1)[1].split("\nAssets are", 1)[0]
    p = load_policy(textwrap.dedent(example))
    assert p.version == 3 and len(p.tiers) == 2 and set(p.approvers) == {"ops-1", "ops-2", "ops-3"}


def test_digest_changes_with_the_file() -> None:
    a, b = minimal(), minimal("# a comment\n")
    assert a.digest != b.digest and a != b
    assert minimal() == a and minimal().digest == a.digest
    r = request()
    assert run(a, r).policy_digest == a.digest.hex() != run(b, r).policy_digest


@pytest.mark.parametrize(("text", "message"), [
    ("", "version: required"),
    ("version = true", "version:"),
    ("version = 1\nversoin = 2", "versoin: unknown key"),
    ("version = 1\ndescription = 5", "description:"),
    ("version = 1\n[limits.ETH]\nmax_per_txn = 1", "limits.ETH.max_per_txn: unknown key"),
    ("version = 1\n[limits.EHT]\nmax_per_tx = 1", "limits.EHT: unknown asset"),
    ("version = 1\n[limits.ETH]\nmax_per_tx = -1", "limits.ETH.max_per_tx: must be a non-negative integer"),
    ("version = 1\n[limits.ETH]\nmax_per_tx = \"1e18\"", "limits.ETH.max_per_tx: must be a non-negative integer"),
    ("version = 1\n[limits.ETH]\nmax_per_tx = 1.5", "limits.ETH.max_per_tx:"),
    ("version = 1\n[limits.ETH]\nmax_per_tx = true", "limits.ETH.max_per_tx:"),
    ("version = 1\n[limits.ETH]\ndaily_count = \"5\"", "limits.ETH.daily_count:"),
    ("version = 1\n[limits.ETH]\ndaily_count = true", "limits.ETH.daily_count:"),
    ("version = 1\nlimits = 5", "limits: must be a table"),
    ("version = 1\n[window]\nstart = \"20:00\"\nend = \"08:00\"", "window.start: 20:00 must be before"),
    ("version = 1\n[window]\nstart = \"08:00\"\nend = \"08:00\"", "window.start:"),
    ("version = 1\n[window]\nstart = \"8:00\"\nend = \"20:00\"", "window.start:"),
    ("version = 1\n[window]\nstart = \"08:00\"\nend = \"24:01\"", "window.end:"),
    ("version = 1\n[window]\nstart = \"08:00\"", "window.end: required"),
    ("version = 1\n[window]\ndays = [\"mon\", \"funday\"]\nstart = \"08:00\"\nend = \"20:00\"", "window.days:"),
    ("version = 1\n[window]\ndays = []\nstart = \"08:00\"\nend = \"20:00\"", "window.days:"),
    ("version = 1\n[window]\nstart = \"08:00\"\nend = \"20:00\"\ntz = \"CET\"", "window.tz: unknown key"),
    ("version = 1\n[destinations]\nallowed = []", "destinations.allowed: unknown key"),
    ("version = 1\n[destinations]\nallow = [1]", "destinations.allow:"),
    ("version = 1\n[roles]\nallowed = [\"a\"]", "initiators: required"),
    ("version = 1\n[initiators]\nbob = \"a\"", "roles: required"),
    ("version = 1\n[roles]\nallowed = [\"a\"]\n[initiators]\nbob = 1", "initiators.bob:"),
    ("version = 1\n[approvers]\nops-1 = \"00\"", "approvers.ops-1:"),
    ("version = 1\n[approvers]\nops-1 = \"" + "00" * 32 + "\"", "approvers.ops-1: is not a valid"),
    (f"version = 1\n[approvers]\na = \"{XONLY['ops-1']}\"\nb = \"{XONLY['ops-1']}\"", "approvers.b: same key"),
    ("version = 1\napprovals = 5", "approvals:"),
    (f"version = 1\n[approvers]\nops-1 = \"{XONLY['ops-1']}\"\n[[approvals]]\nasset = \"ETH\"\nabove = 1\n"
     "required = 2\napprovers = [\"ops-1\"]", "approvals[0].required: 2 is more than"),
    (f"version = 1\n[approvers]\nops-1 = \"{XONLY['ops-1']}\"\n[[approvals]]\nasset = \"ETH\"\nabove = 1\n"
     "required = 1\napprovers = [\"ops-9\"]", "approvals[0].approvers: 'ops-9' is not defined"),
    (f"version = 1\n[approvers]\nops-1 = \"{XONLY['ops-1']}\"\n[[approvals]]\nasset = \"ETH\"\nabove = 1\n"
     "required = 0\napprovers = [\"ops-1\"]", "approvals[0].required:"),
    (f"version = 1\n[approvers]\nops-1 = \"{XONLY['ops-1']}\"\n[[approvals]]\nasset = \"ETH\"\nabove = 1\n"
     "required = 1\napprovers = [\"ops-1\"]\nmin = 1", "approvals[0].min: unknown key"),
    (f"version = 1\n[approvers]\nops-1 = \"{XONLY['ops-1']}\"\n[[approvals]]\nasset = \"ETH\"\nabove = 1\n"
     "approvers = [\"ops-1\"]", "approvals[0].required: required"),
    (f"version = 1\n[approvers]\nops-1 = \"{XONLY['ops-1']}\"\n" + "[[approvals]]\nasset = \"ETH\"\nabove = 1\n"
     "required = 1\napprovers = [\"ops-1\"]\n" * 2, "approvals[1].above: another ETH tier"),
    ("version = ", "policy: invalid TOML"),
    (b"version = 1\n# \xff", "policy: not UTF-8"),
])
def test_policy_file_errors(text: str | bytes, message: str) -> None:
    with pytest.raises(PolicyError) as e:
        load_policy(text)
    assert str(e.value).startswith(message)


# ---------------------------------------------------------------- dev policy


def test_dev_policy_allows_everything() -> None:
    assert DEV_POLICY.dev and DEV_POLICY.digest == hashlib.sha256(DEV_POLICY_TOML.encode()).digest()
    assert load_policy(DEV_POLICY_TOML).dev and load_policy(DEV_POLICY_TOML) == DEV_POLICY
    huge = request(value=str(2**256 - 1), to=OTHER)
    huge = WithdrawalRequest.from_json({**huge.to_json(), "initiator": "anyone"})
    history = tuple(Spend("ETH", 10**30, WED_10 - 60) for _ in range(1000))
    for r in (huge, request(BTC_REQ)):
        d = run(DEV_POLICY, r, now=SAT_0912, history=history)
        assert d.allowed and d.rule == "dev-policy"
        assert d.policy_version == DEV_POLICY.version and d.policy_digest == DEV_POLICY.digest.hex()


def test_same_rules_with_other_bytes_are_not_dev() -> None:
    p = load_policy(DEV_POLICY_TOML + "\n")
    assert not p.dev and run(p, request()).rule == "allow"


# ---------------------------------------------------------------- rules, allow and deny


def test_everything_passes(full: Policy) -> None:
    d = run(full, request())
    assert d == Decision(True, "allow", "all rules passed", 7, full.digest.hex())


def test_initiator(full: Policy) -> None:
    ok = run(full, request())
    assert ok.allowed
    nobody = WithdrawalRequest.from_json({**ETH_REQ, "initiator": "mallory"})
    d = run(full, nobody)
    assert (d.allowed, d.rule) == (False, "initiator") and "'mallory' has no role" in d.reason
    viewer = WithdrawalRequest.from_json({**ETH_REQ, "initiator": "auditor"})
    d = run(full, viewer)
    assert (d.allowed, d.rule) == (False, "initiator") and "role 'viewer'" in d.reason and "withdrawals" in d.reason
    assert run(minimal(), nobody).allowed  # no [initiators]: anyone


def test_window(full: Policy) -> None:
    assert run(full, request(), now=WED_10).allowed
    d = run(full, request(), now=SAT_0912)
    assert (d.allowed, d.rule) == (False, "window")
    assert d.reason == "outside the UTC window mon-fri 08:00-20:00 (now sat 09:12)"
    at = lambda h, m: datetime(2024, 1, 3, h, m, tzinfo=timezone.utc).timestamp()  # noqa: E731
    assert run(full, request(), now=at(8, 0)).allowed
    assert not run(full, request(), now=at(7, 59)).allowed
    assert run(full, request(), now=at(19, 59)).allowed
    assert not run(full, request(), now=at(20, 0)).allowed  # end is exclusive
    p = minimal('[window]\ndays = ["sat", "sun", "wed"]\nstart = "00:00"\nend = "24:00"\n')
    assert p.window is not None and p.window.describe() == "wed,sat,sun 00:00-24:00"
    assert run(p, request(), now=at(23, 59)).allowed and run(p, request(), now=SAT_0912).allowed
    d = run(p, request(), now=datetime(2024, 1, 4, 12, 0, tzinfo=timezone.utc).timestamp())
    assert d.rule == "window" and "(now thu 12:00)" in d.reason


def test_destinations(full: Policy) -> None:
    assert run(full, request(to=DEST.lower())).allowed  # case-insensitive
    d = run(full, request(to=OTHER))
    assert (d.allowed, d.rule) == (False, "destinations")
    assert d.reason == f"destination {OTHER} is not on the allowlist"
    assert run(minimal(), request(to=OTHER)).allowed  # absent: anywhere
    d = run(minimal("[destinations]\nallow = []\n"), request())  # empty: nowhere
    assert (d.allowed, d.rule) == (False, "destinations")


def test_bitcoin_destinations_skip_change(full: Policy) -> None:
    r = request(BTC_REQ)
    d = run(full, r, own=("bcrt1qchange",))
    assert d.allowed, d.reason
    d = run(full, r)  # change not recognised as ours: it is an unknown destination
    assert d.rule == "destinations" and "BCRT1QCHANGE" in d.reason


def test_max_per_tx(full: Policy) -> None:
    p = minimal('[limits.ETH]\nmax_per_tx = "1000000000000000000"\n')
    assert run(p, request(value=str(ETH_1))).allowed  # equal is fine
    d = run(p, request(value=str(2 * ETH_1)))
    assert (d.allowed, d.rule) == (False, "limits.max_per_tx")
    assert d.reason == ("value 2000000000000000000 wei (2 ETH) exceeds max_per_tx "
                        "1000000000000000000 wei (1 ETH) for ETH")
    r = request(BTC_REQ)
    assert run(full, r, own=("bcrt1qchange",)).allowed  # 300000 sats <= 500000
    d = run(full, WithdrawalRequest.from_json({**BTC_REQ, "tx": {**BTC_REQ["tx"], "outputs": [
        {"address": "bcrt1qpayee", "amount": 600_000}]}}))
    assert d.rule == "limits.max_per_tx" and "600000 sat (0.006 BTC)" in d.reason


def test_asset_without_limits_is_unlimited() -> None:
    p = minimal("[limits.BTC]\nmax_per_tx = 1\ndaily_count = 0\n")
    assert run(p, request(value=str(10**30))).allowed


def test_velocity_amount(full: Policy) -> None:
    history = (Spend("ETH", 30 * ETH_1, WED_10 - 3600), Spend("ETH", 25 * ETH_1, WED_10 - 7200))
    assert run(full, approved(request(value=str(5 * ETH_1)), "ops-1"), history=history).allowed  # 60 == 60
    d = run(full, approved(request(value=str(6 * ETH_1)), "ops-1"), history=history)
    assert (d.allowed, d.rule) == (False, "velocity.amount")
    assert d.reason == ("24h ETH total would be 61000000000000000000 wei (61 ETH) > daily_amount "
                        "60000000000000000000 wei (60 ETH) (2 earlier withdrawals in the window)")
    ignored = (
        Spend("ETH", 100 * ETH_1, WED_10 - 86400),  # exactly 24 h ago: outside (now-24h, now]
        Spend("ETH", 100 * ETH_1, WED_10 + 1),  # future: outside
        Spend("BTC", 100 * ETH_1, WED_10 - 1),  # other asset
    )
    assert run(full, approved(request(value=str(6 * ETH_1)), "ops-1"), history=ignored).allowed


def test_velocity_count(full: Policy) -> None:
    two = tuple(Spend("ETH", 1, WED_10 - i) for i in (0, 10))
    assert run(full, request(), history=two).allowed  # 3rd in 24 h, daily_count = 3
    three = (*two, Spend("ETH", 1, WED_10 - 86399))
    d = run(full, request(), history=three)
    assert (d.allowed, d.rule) == (False, "velocity.count")
    assert d.reason == "24h ETH count would be 4 > daily_count 3"


def test_approval_tiers(full: Policy) -> None:
    small = request(value=str(2 * ETH_1))  # not above the 2 ETH tier
    assert full.tier_for("ETH", 2 * ETH_1) is None
    assert run(full, small).allowed

    mid = request(value=str(5 * ETH_1))
    assert full.tier_for("ETH", 5 * ETH_1).required == 1  # type: ignore[union-attr]
    d = run(full, mid)
    assert (d.allowed, d.rule) == (False, "approvals")
    assert d.reason == "needs 1 of [ops-1, ops-2, ops-3] approvals above 2 ETH; 0 valid"
    d = run(full, approved(mid, "ops-2"))
    assert d.allowed and d.rule == "allow" and "1 valid" in d.reason

    big = request(value=str(11 * ETH_1))  # highest exceeded tier: 2 of 3 above 10 ETH
    assert full.tier_for("ETH", 11 * ETH_1).required == 2  # type: ignore[union-attr]
    d = run(full, approved(big, "ops-3"))
    assert (d.allowed, d.rule) == (False, "approvals")
    assert d.reason == "needs 2 of [ops-1, ops-2, ops-3] approvals above 10 ETH; 1 valid"
    assert run(full, approved(big, "ops-1", "ops-3")).allowed
    assert full.tier_for("BTC", 10**15) is None  # no BTC tiers


def test_duplicate_approvals_count_once(full: Policy) -> None:
    big = request(value=str(11 * ETH_1))
    a1, a1_again = sign_approval(big, "ops-1", SECRETS["ops-1"]), sign_approval(big, "ops-1", SECRETS["ops-1"])
    assert a1.signature != a1_again.signature  # fresh aux randomness, both valid
    d = run(full, big.with_approvals([a1, a1_again, a1]))
    assert (d.allowed, d.rule) == (False, "approvals") and "; 1 valid" in d.reason and "3 submitted" in d.reason


def test_approvals_over_another_request_do_not_count(full: Policy) -> None:
    big = request(value=str(11 * ETH_1))
    other = request(value=str(11 * ETH_1), nonce=1)
    stolen = [sign_approval(other, n, SECRETS[n]) for n in ("ops-1", "ops-2")]
    d = run(full, big.with_approvals(stolen))
    assert (d.allowed, d.rule) == (False, "approvals") and "; 0 valid" in d.reason


def test_invalid_and_unlisted_approvals_are_ignored(full: Policy) -> None:
    big = request(value=str(11 * ETH_1))
    good = sign_approval(big, "ops-1", SECRETS["ops-1"])
    approvals = [
        good,
        sign_approval(big, "ops-4", SECRETS["ops-4"]),  # a known approver, but not in this tier
        sign_approval(big, "stranger", (999).to_bytes(32, "big")),  # not in [approvers]
        sign_approval(big, "ops-2", SECRETS["ops-3"]),  # ops-3's key under ops-2's name
        Approval("ops-3", b"\x00" * 64),  # garbage
    ]
    d = run(full, big.with_approvals(approvals))
    assert (d.allowed, d.rule) == (False, "approvals") and "; 1 valid" in d.reason
    d = run(full, big.with_approvals([*approvals, sign_approval(big, "ops-2", SECRETS["ops-2"])]))
    assert d.allowed


def test_check_order(full: Policy) -> None:
    """Fix one violation at a time: the first failing rule in the documented order decides."""
    mallory = WithdrawalRequest.from_json({**ETH_REQ, "initiator": "mallory",
                                           "tx": {**ETH_REQ["tx"], "to": OTHER, "value": str(10**21)}})
    bad_dest = request(to=OTHER, value=str(10**21))
    too_big = request(value=str(10**21))
    needs_two = request(value=str(20 * ETH_1))
    heavy = (Spend("ETH", 50 * ETH_1, WED_10),) * 5
    many = (Spend("ETH", 1, WED_10),) * 5
    assert run(full, mallory, now=SAT_0912, history=heavy).rule == "initiator"
    assert run(full, bad_dest, now=SAT_0912, history=heavy).rule == "window"
    assert run(full, bad_dest, history=heavy).rule == "destinations"
    assert run(full, too_big, history=heavy).rule == "limits.max_per_tx"
    assert run(full, needs_two, history=heavy).rule == "velocity.amount"
    assert run(full, needs_two, history=many).rule == "velocity.count"
    assert run(full, needs_two).rule == "approvals"
    assert run(full, approved(needs_two, "ops-1", "ops-2")).rule == "allow"


# ---------------------------------------------------------------- spend_of and misuse


def test_spend_of() -> None:
    assert spend_of(request()) == Withdrawal("ETH", ETH_1, (DEST,))
    r = request(BTC_REQ)
    assert spend_of(r) == Withdrawal("BTC", 990_000, ("bcrt1qpayee", "BCRT1QCHANGE"))
    assert spend_of(r, ["bcrt1qchange"]) == Withdrawal("BTC", 300_000, ("bcrt1qpayee",))
    assert spend_of(r, {"bcrt1qpayee", "bcrt1qchange"}) == Withdrawal("BTC", 0, ())


def test_evaluate_rejects_mismatched_withdrawal(full: Policy) -> None:
    with pytest.raises(ValueError, match="asset"):
        evaluate(full, request(), Withdrawal("BTC", 1, ()), now=WED_10, history=())
