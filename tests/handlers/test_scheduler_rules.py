"""The scheduler's pure decisions: which quorum, which refusals are final, which shard."""

from __future__ import annotations

import pytest

from handlers.withdrawals import shard_of
from loadtest.withdrawals import percentile
from ops.scheduler import FINAL_RULES, PartyView, PolicyRefusal, TransientFailure, preferred_quorum

KEY = {"key_id": "k", "threshold": 2, "parties": [1, 2, 3]}


def test_the_quorum_is_the_first_healthy_unblamed_holders():
    assert preferred_quorum(KEY, {1, 2, 3}) == (1, 2)
    assert preferred_quorum(KEY, {1, 3}) == (1, 3)
    assert preferred_quorum(KEY, {1, 2, 3}, excluded={1}) == (2, 3)
    assert preferred_quorum(KEY, {1, 2, 3}, excluded={1, 2}) is None


@pytest.mark.parametrize("rule", ["limits.max_per_tx", "velocity.amount", "velocity.count", "destinations", "window",
                                  "initiator", "approvals", "digest", "policy", "request"])
def test_policy_and_request_refusals_are_final(rule):
    assert FINAL_RULES.match(rule)


@pytest.mark.parametrize("rule", ["policy-version", "idempotency", None])
def test_other_refusals_are_retried(rule):
    assert not (rule and FINAL_RULES.match(rule))


def test_parties_must_agree_on_the_policy_they_enforce():
    view = PartyView(coord=None, parties=[1, 2, 3])
    view.status = {1: {"policies": {"k": {"digest": "aa" * 32}}}, 2: {"policies": {"k": {"digest": "aa" * 32}}},
                   3: {"policies": {"k": {"digest": "bb" * 32}}}}
    assert view.policy_digest("k", (1, 2)) == bytes.fromhex("aa" * 32)
    with pytest.raises(TransientFailure, match="different policy versions"):
        view.policy_digest("k", (1, 3))
    view.status[3] = {"policies": {"k": {"error": "no policy installed for wallet k"}}}
    with pytest.raises(PolicyRefusal, match="no policy installed"):
        view.policy_digest("k", (2, 3))


def test_shards_spread_one_wallets_requests():
    counts = [0, 0, 0, 0]
    for n in range(400):
        counts[shard_of(f"w-{n}", 4)] += 1
    assert min(counts) > 60


def test_percentile_by_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0 and percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
