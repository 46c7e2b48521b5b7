"""JetStream plumbing of the withdrawal service: request, result and dead-letter streams, KV buckets.

* ``conclave.withdrawals.<shard>`` — stream CONCLAVE_WITHDRAWALS, WorkQueue retention:
  a request is stored until one worker acknowledges it. The publisher sets
  ``Nats-Msg-Id`` to the request id, so a repeated publish within the duplicate
  window is dropped by the broker; after it, the requests bucket catches it.
* ``conclave.results.<request_id>`` — stream CONCLAVE_RESULTS, the last result per request.
* ``conclave.deadletter.<request_id>`` — stream CONCLAVE_DEADLETTER, requests that
  exhausted their attempts, with the reason.
* KV ``conclave_requests`` — one entry per request id: claimed, attempts, signed inputs,
  then the final result. This is what makes a request id sign at most once.
* KV ``conclave_presigs`` — the presignature pool inventory, ``<key>.<quorum>.<presig id>``
  → ``ready``; a worker reserves one with a compare-and-set on its revision, so two
  shards never take the same presignature.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import anyio
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from handlers.jetstream import DUPLICATE_WINDOW, MAX_AGE, _ensure_stream, publish
from schemas.withdrawal import WithdrawalRequest, WithdrawalResult

__all__ = [
    "WITHDRAWALS_STREAM", "RESULTS_STREAM", "DEADLETTER_STREAM", "REQUESTS_BUCKET", "PRESIGS_BUCKET",
    "shard_of", "withdrawal_subject", "result_subject", "deadletter_subject", "ensure_withdrawal_streams",
    "requests_bucket", "presigs_bucket", "submit", "publish_result", "wait_result", "shard_consumer",
    "pool_levels",
]

log = logging.getLogger("conclave.withdrawals")

WITHDRAWALS_STREAM = "CONCLAVE_WITHDRAWALS"
RESULTS_STREAM = "CONCLAVE_RESULTS"
DEADLETTER_STREAM = "CONCLAVE_DEADLETTER"
REQUESTS_BUCKET = "conclave_requests"
PRESIGS_BUCKET = "conclave_presigs"
REQUEST_ACK_WAIT = 60.0  # a worker heartbeats long sessions; a dead worker's request is redelivered after this


def shard_of(request_id: str, shards: int) -> int:
    """The request's shard: a hash of its id, so one hot wallet still spreads over every shard."""
    return int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big") % shards


def withdrawal_subject(shard: int) -> str:
    return f"conclave.withdrawals.{shard}"


def result_subject(request_id: str) -> str:
    return f"conclave.results.{request_id}"


def deadletter_subject(request_id: str) -> str:
    return f"conclave.deadletter.{request_id}"


def shard_consumer(shard: int) -> str:
    return f"shard-{shard}"


def _config(name: str, subject: str, retention: api.RetentionPolicy, per_subject: int | None = None) -> api.StreamConfig:
    return api.StreamConfig(name=name, subjects=[subject], retention=retention, storage=api.StorageType.FILE,
                            max_age=MAX_AGE, duplicate_window=DUPLICATE_WINDOW, max_msg_size=256 * 1024,
                            max_msgs_per_subject=per_subject or -1)


async def ensure_withdrawal_streams(js: JetStreamContext) -> None:
    """Create the three streams and two buckets if missing; idempotent."""
    await _ensure_stream(js, _config(WITHDRAWALS_STREAM, "conclave.withdrawals.*", api.RetentionPolicy.WORK_QUEUE))
    await _ensure_stream(js, _config(RESULTS_STREAM, "conclave.results.*", api.RetentionPolicy.LIMITS, 1))
    await _ensure_stream(js, _config(DEADLETTER_STREAM, "conclave.deadletter.*", api.RetentionPolicy.LIMITS, 1))
    for bucket in (REQUESTS_BUCKET, PRESIGS_BUCKET):
        try:
            await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            try:
                await js.create_key_value(bucket=bucket, history=1, storage=api.StorageType.FILE)
            except nats.js.errors.BadRequestError:
                await js.key_value(bucket)  # created concurrently


async def requests_bucket(js: JetStreamContext):
    return await js.key_value(REQUESTS_BUCKET)


async def presigs_bucket(js: JetStreamContext):
    return await js.key_value(PRESIGS_BUCKET)


async def pool_levels(js: JetStreamContext) -> dict[str, int]:
    """Ready presignatures per ``<key id>/<quorum>``, read from the pool bucket."""
    try:
        names = await (await presigs_bucket(js)).keys()
    except nats.js.errors.NoKeysError:
        return {}
    out: dict[str, int] = {}
    for name in names:
        key_id, quorum, _ = name.rsplit(".", 2)
        out[f"{key_id}/{quorum}"] = out.get(f"{key_id}/{quorum}", 0) + 1
    return out


async def ensure_shard_consumer(js: JetStreamContext, shard: int, max_in_flight: int) -> None:
    cfg = api.ConsumerConfig(durable_name=shard_consumer(shard), filter_subject=withdrawal_subject(shard),
                             ack_policy=api.AckPolicy.EXPLICIT, ack_wait=REQUEST_ACK_WAIT,
                             max_ack_pending=max_in_flight * 4, max_deliver=-1)
    try:
        await js.consumer_info(WITHDRAWALS_STREAM, shard_consumer(shard))
    except nats.js.errors.NotFoundError:
        await js.add_consumer(WITHDRAWALS_STREAM, cfg)


async def submit(js: JetStreamContext, request: WithdrawalRequest, shards: int) -> api.PubAck:
    """Queue ``request`` on its shard; the broker drops a repeat within its duplicate window."""
    return await publish(js, withdrawal_subject(shard_of(request.request_id, shards)), request.encode(),
                         request.request_id)


async def publish_result(js: JetStreamContext, result: WithdrawalResult, deadletter: bool = False) -> None:
    data = result.encode()
    await publish(js, result_subject(result.request_id), data, f"result:{result.request_id}")
    if deadletter:
        await publish(js, deadletter_subject(result.request_id), data, f"deadletter:{result.request_id}")


async def last_result(js: JetStreamContext, request_id: str) -> WithdrawalResult | None:
    try:
        msg = await js.get_last_msg(RESULTS_STREAM, result_subject(request_id))
    except nats.js.errors.NotFoundError:
        return None
    return WithdrawalResult.from_json(msg.data)


async def wait_result(js: JetStreamContext, request_id: str, timeout: float) -> WithdrawalResult:
    """The request's result, waiting up to ``timeout`` s for it; TimeoutError otherwise."""
    nc = js._nc
    sub = await nc.subscribe(result_subject(request_id), max_msgs=1)  # before the lookup: no result slips by
    try:
        found = await last_result(js, request_id)
        if found is not None:
            return found
        with anyio.fail_after(timeout):
            while True:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                return WithdrawalResult.from_json(msg.data)
    finally:
        try:
            await sub.unsubscribe()
        except Exception:
            pass


def encode_state(state: dict[str, Any]) -> bytes:
    return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()


def decode_state(data: bytes | None) -> dict[str, Any]:
    return json.loads(data) if data else {}
