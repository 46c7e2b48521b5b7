"""Withdrawal requests and results: the exchange's integration contract.

The exchange submits a :class:`WithdrawalRequest` as JSON and receives a
:class:`WithdrawalResult`. Field names and shapes are fixed by contract, so
decoding is strict: unknown fields, wrong types (``true`` is not an integer),
out-of-range numbers and oversize requests are rejected with a
:class:`RequestError` whose message starts with the offending field path
(``tx.value: ...``), because the exchange's integrators read these messages.

Every signing party decodes the same request and evaluates its own copy of the
wallet policy against it, so parsing must be deterministic and lossless:
``from_json(r.to_json()) == r`` and :meth:`WithdrawalRequest.encode` is a
canonical byte string.

Human approvers sign :meth:`WithdrawalRequest.request_hash` with BIP-340
Schnorr keys. The hash covers every field except ``approvals`` (the approvals
sign it, so it cannot contain them); changing any other field, including
``metadata``, invalidates every approval.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

import coincurve

__all__ = [
    "MAX_REQUEST_BYTES", "MAX_APPROVALS", "APPROVER_NAME", "CHAINS", "BITCOIN_NETWORKS", "RESULT_STATUSES",
    "RequestError", "Approval", "EthereumTx", "BitcoinInput", "BitcoinOutput", "BitcoinTx",
    "WithdrawalRequest", "WithdrawalResult", "sign_approval", "verify_approval", "canonical_json",
]

MAX_REQUEST_BYTES = 64 * 1024
MAX_APPROVALS = 32
MAX_BITCOIN_IO = 256
MAX_SATS = 21 * 10**14  # 21 million BTC: no single amount can exceed the supply
CHAINS = ("bitcoin", "ethereum")
BITCOIN_NETWORKS = ("mainnet", "testnet", "signet", "regtest")
RESULT_STATUSES = ("signed", "rejected", "failed")
DEFAULT_SEQUENCE = 0xFFFFFFFD  # opts in to RBF, so a stuck withdrawal can be fee-bumped
_HASH_TAG = b"conclave/withdrawal/v1\x00"

# request_id becomes a NATS subject token, so "." and ":" (token and message-id
# separators) are excluded; key_id is never put in a subject.
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,80}")
_KEY_ID = re.compile(r"[A-Za-z0-9_.:-]{1,80}")
APPROVER_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,80}")  # also the policy's [approvers] key syntax
_APPROVER = APPROVER_NAME
_DECIMAL = re.compile(r"[0-9]{1,78}")  # 2**256 has 78 digits; int() alone would accept "1_0", " 1"
_ETH_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
_TXID = re.compile(r"[0-9a-fA-F]{64}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_BTC_ADDRESS = re.compile(r"[\x21-\x7e]{1,100}")
_MAX_TEXT = 200
_MAX_JSON_DEPTH = 32

_TOP_REQUIRED = ("request_id", "key_id", "chain", "tx", "initiator")
_TOP_OPTIONAL = ("path", "approvals", "metadata")
_ETH_REQUIRED = ("chain_id", "nonce", "to", "value", "gas", "max_fee_per_gas", "max_priority_fee_per_gas")
_ETH_OPTIONAL = ("data",)
_BTC_REQUIRED = ("network", "inputs", "outputs")
_BTC_OPTIONAL = ("version", "locktime")
_RESULT_FIELDS = (
    "request_id", "status", "raw_tx", "tx_hash", "signature", "signatures", "reason", "rule", "culprits",
    "attempts",
)


class RequestError(ValueError):
    """A request or result that does not meet the contract; the message names the field path."""


def canonical_json(obj: Any) -> bytes:
    """The one byte encoding every party and the exchange agree on."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------- validation helpers


def _fail(path: str, message: str) -> NoReturn:
    raise RequestError(f"{path}: {message}")


def _object(v: Any, path: str, required: Iterable[str], optional: Iterable[str] = ()) -> Mapping[str, Any]:
    """``v`` as an object with exactly the given keys; ``path`` "" is the top level."""
    if not isinstance(v, Mapping):
        _fail(path or "request", "must be a JSON object")
    required = tuple(required)
    allowed = set(required) | set(optional)
    for k in v:
        if k not in allowed:
            _fail(f"{path}.{k}" if path else str(k), "unknown field")
    for k in required:
        if k not in v:
            _fail(f"{path}.{k}" if path else k, "required")
    return v


def _int(v: Any, path: str, lo: int, hi: int) -> int:
    if type(v) is not int:  # bool is an int subclass; a JSON true is not a nonce
        _fail(path, "must be an integer")
    if not lo <= v <= hi:
        _fail(path, f"must be between {lo} and {hi}")
    return v


def _uint256(v: Any, path: str) -> int:
    if type(v) is int:
        n = v
    elif isinstance(v, str) and _DECIMAL.fullmatch(v):
        n = int(v)
    else:
        _fail(path, "must be a decimal string or integer")
    if not 0 <= n < 2**256:
        _fail(path, "must be between 0 and 2**256-1")
    return n


def _text(v: Any, path: str, pattern: re.Pattern[str] | None = None, max_len: int = _MAX_TEXT) -> str:
    if not isinstance(v, str):
        _fail(path, "must be a string")
    if pattern is not None:
        if not pattern.fullmatch(v):
            _fail(path, f"must match {pattern.pattern}")
    elif not 1 <= len(v) <= max_len:
        _fail(path, f"must be a non-empty string of at most {max_len} characters")
    return v


def _json_value(v: Any, path: str, depth: int = 0) -> Any:
    """A deep copy of ``v`` that is plain, finite JSON (so encode() can never fail or vary)."""
    if depth > _MAX_JSON_DEPTH:
        _fail(path, f"nested deeper than {_MAX_JSON_DEPTH} levels")
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            _fail(path, "must be finite JSON (no NaN or Infinity)")
        return v
    if isinstance(v, (list, tuple)):
        return [_json_value(x, f"{path}[{i}]", depth + 1) for i, x in enumerate(v)]
    if isinstance(v, Mapping):
        out = {}
        for k, x in v.items():
            if not isinstance(k, str):
                _fail(path, "object keys must be strings")
            out[k] = _json_value(x, f"{path}.{k}", depth + 1)
        return out
    _fail(path, f"must be JSON, not {type(v).__name__}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parties' JSON libraries may keep different duplicates; refuse the ambiguity.
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise RequestError(f"{k}: duplicate key")
        out[k] = v
    return out


def _reject_constant(name: str) -> NoReturn:
    raise RequestError(f"request: {name} is not valid JSON")


def _load(data: bytes | str | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    if isinstance(data, Mapping):
        return data
    if not isinstance(data, (str, bytes, bytearray, memoryview)):
        _fail(what, "must be UTF-8 JSON bytes, a JSON string or a dict")
    try:
        raw = data.encode() if isinstance(data, str) else bytes(data)
    except UnicodeEncodeError:
        _fail(what, "must be UTF-8 JSON bytes, a JSON string or a dict")
    if len(raw) > MAX_REQUEST_BYTES:
        _fail(what, f"larger than {MAX_REQUEST_BYTES} bytes")
    try:
        # Decode as UTF-8 ourselves: json.loads(bytes) would also guess UTF-16/32.
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except RequestError:
        raise
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        _fail(what, f"invalid JSON ({e})")
    if not isinstance(obj, dict):
        _fail(what, "must be a JSON object")
    return obj


# ---------------------------------------------------------------- request


@dataclass(frozen=True)
class Approval:
    """One approver's BIP-340 signature over :meth:`WithdrawalRequest.request_hash`."""

    approver: str
    signature: bytes

    def to_json(self) -> dict[str, str]:
        return {"approver": self.approver, "signature": self.signature.hex()}

    @classmethod
    def from_json(cls, v: Any, path: str = "approval") -> Approval:
        o = _object(v, path, ("approver", "signature"))
        approver = _text(o["approver"], f"{path}.approver", _APPROVER)
        sig = o["signature"]
        if not isinstance(sig, str) or len(sig) != 128 or not _HEX.fullmatch(sig):
            _fail(f"{path}.signature", "must be 64 bytes as 128 hex characters")
        return cls(approver, bytes.fromhex(sig))


@dataclass(frozen=True)
class EthereumTx:
    """An EIP-1559 transaction; ``to`` is kept exactly as given (checksum case included)."""

    chain_id: int
    nonce: int
    to: str
    value: int
    gas: int
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    data: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id, "nonce": self.nonce, "to": self.to, "value": str(self.value),
            "gas": self.gas, "max_fee_per_gas": str(self.max_fee_per_gas),
            "max_priority_fee_per_gas": str(self.max_priority_fee_per_gas), "data": "0x" + self.data.hex(),
        }

    @classmethod
    def from_json(cls, v: Any, path: str = "tx") -> EthereumTx:
        o = _object(v, path, _ETH_REQUIRED, _ETH_OPTIONAL)
        to = o["to"]
        if not isinstance(to, str) or not _ETH_ADDRESS.fullmatch(to):
            _fail(f"{path}.to", "must be 0x followed by 40 hex characters")
        data = o.get("data", "0x")
        if not isinstance(data, str) or not data.startswith("0x") or not _HEX.fullmatch(data[2:]):
            _fail(f"{path}.data", "must be 0x followed by an even number of hex characters")
        return cls(
            chain_id=_int(o["chain_id"], f"{path}.chain_id", 1, 2**64 - 1),
            nonce=_int(o["nonce"], f"{path}.nonce", 0, 2**64 - 1),
            to=to,
            value=_uint256(o["value"], f"{path}.value"),
            gas=_int(o["gas"], f"{path}.gas", 0, 2**64 - 1),
            max_fee_per_gas=_uint256(o["max_fee_per_gas"], f"{path}.max_fee_per_gas"),
            max_priority_fee_per_gas=_uint256(o["max_priority_fee_per_gas"], f"{path}.max_priority_fee_per_gas"),
            data=bytes.fromhex(data[2:]),
        )


@dataclass(frozen=True)
class BitcoinInput:
    """A spent outpoint and its amount (needed for the segwit sighash); ``txid`` is lower-case hex."""

    txid: str
    vout: int
    amount: int
    sequence: int = DEFAULT_SEQUENCE

    def to_json(self) -> dict[str, Any]:
        return {"txid": self.txid, "vout": self.vout, "amount": self.amount, "sequence": self.sequence}

    @classmethod
    def from_json(cls, v: Any, path: str) -> BitcoinInput:
        o = _object(v, path, ("txid", "vout", "amount"), ("sequence",))
        txid = o["txid"]
        if not isinstance(txid, str) or not _TXID.fullmatch(txid):
            _fail(f"{path}.txid", "must be 64 hex characters")
        return cls(
            txid=txid.lower(),
            vout=_int(o["vout"], f"{path}.vout", 0, 2**32 - 1),
            amount=_int(o["amount"], f"{path}.amount", 1, MAX_SATS),
            sequence=_int(o.get("sequence", DEFAULT_SEQUENCE), f"{path}.sequence", 0, 2**32 - 1),
        )


@dataclass(frozen=True)
class BitcoinOutput:
    """A payment; the address is an opaque string here (the chain adapter decodes it)."""

    address: str
    amount: int

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "amount": self.amount}

    @classmethod
    def from_json(cls, v: Any, path: str) -> BitcoinOutput:
        o = _object(v, path, ("address", "amount"))
        address = o["address"]
        if not isinstance(address, str) or not _BTC_ADDRESS.fullmatch(address):
            _fail(f"{path}.address", "must be 1 to 100 printable ASCII characters")
        return cls(address, _int(o["amount"], f"{path}.amount", 1, MAX_SATS))


@dataclass(frozen=True)
class BitcoinTx:
    """An unsigned Bitcoin transaction: the inputs to spend and the outputs to pay."""

    network: str
    version: int
    locktime: int
    inputs: tuple[BitcoinInput, ...]
    outputs: tuple[BitcoinOutput, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "network": self.network, "version": self.version, "locktime": self.locktime,
            "inputs": [i.to_json() for i in self.inputs], "outputs": [o.to_json() for o in self.outputs],
        }

    @classmethod
    def from_json(cls, v: Any, path: str = "tx") -> BitcoinTx:
        o = _object(v, path, _BTC_REQUIRED, _BTC_OPTIONAL)
        network = o["network"]
        if network not in BITCOIN_NETWORKS:
            _fail(f"{path}.network", f"must be one of {', '.join(BITCOIN_NETWORKS)}")
        inputs = cls._list(o["inputs"], f"{path}.inputs", BitcoinInput.from_json)
        outputs = cls._list(o["outputs"], f"{path}.outputs", BitcoinOutput.from_json)
        seen: set[tuple[str, int]] = set()
        for i, inp in enumerate(inputs):
            if (inp.txid, inp.vout) in seen:  # a transaction spending one outpoint twice is invalid
                _fail(f"{path}.inputs[{i}]", f"duplicate outpoint {inp.txid}:{inp.vout}")
            seen.add((inp.txid, inp.vout))
        total_in, total_out = sum(i.amount for i in inputs), sum(x.amount for x in outputs)
        if total_out > total_in:
            _fail(f"{path}.outputs", f"total {total_out} sats exceeds the inputs' total {total_in} sats")
        return cls(
            network=network,
            version=_int(o.get("version", 2), f"{path}.version", 0, 2**32 - 1),
            locktime=_int(o.get("locktime", 0), f"{path}.locktime", 0, 2**32 - 1),
            inputs=inputs,
            outputs=outputs,
        )

    @staticmethod
    def _list(v: Any, path: str, parse: Any) -> tuple[Any, ...]:
        if not isinstance(v, (list, tuple)):
            _fail(path, "must be a list")
        if not 1 <= len(v) <= MAX_BITCOIN_IO:
            _fail(path, f"must have 1 to {MAX_BITCOIN_IO} entries")
        return tuple(parse(x, f"{path}[{i}]") for i, x in enumerate(v))


def _approvals(v: Any, path: str = "approvals") -> tuple[Approval, ...]:
    if not isinstance(v, (list, tuple)):
        _fail(path, "must be a list")
    if len(v) > MAX_APPROVALS:
        _fail(path, f"at most {MAX_APPROVALS} approvals")
    return tuple(Approval.from_json(a, f"{path}[{i}]") for i, a in enumerate(v))


@dataclass(frozen=True)
class WithdrawalRequest:
    """A withdrawal the exchange asks the wallet to sign. Build it with :meth:`from_json`."""

    request_id: str
    key_id: str
    path: str | None
    chain: str
    tx: EthereumTx | BitcoinTx
    initiator: str
    approvals: tuple[Approval, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def asset(self) -> str:
        """The asset moved: ``"ETH"`` or ``"BTC"`` (what policy limits are keyed by)."""
        return "ETH" if self.chain == "ethereum" else "BTC"

    @property
    def network(self) -> str | None:
        """The Bitcoin network, or None for Ethereum (where ``tx.chain_id`` says it)."""
        return self.tx.network if isinstance(self.tx, BitcoinTx) else None

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> WithdrawalRequest:
        o = _object(_load(data, "request"), "", _TOP_REQUIRED, _TOP_OPTIONAL)
        request_id = _text(o["request_id"], "request_id", _REQUEST_ID)
        key_id = _text(o["key_id"], "key_id", _KEY_ID)
        path = o.get("path")
        if path is not None and (not isinstance(path, str) or len(path) > _MAX_TEXT):
            _fail("path", f"must be null or a string of at most {_MAX_TEXT} characters")
        chain = o["chain"]
        if chain not in CHAINS:
            _fail("chain", f"must be one of {', '.join(CHAINS)}")
        tx: EthereumTx | BitcoinTx = (EthereumTx if chain == "ethereum" else BitcoinTx).from_json(o["tx"], "tx")
        initiator = _text(o["initiator"], "initiator")
        approvals = _approvals(o.get("approvals", []))
        metadata = o.get("metadata", {})
        if not isinstance(metadata, Mapping):
            _fail("metadata", "must be a JSON object")
        request = cls(request_id, key_id, path, chain, tx, initiator, approvals, _json_value(metadata, "metadata"))
        size = len(request.encode())
        if size > MAX_REQUEST_BYTES:
            _fail("request", f"canonical JSON is {size} bytes, larger than {MAX_REQUEST_BYTES}")
        return request

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id, "key_id": self.key_id, "path": self.path, "chain": self.chain,
            "tx": self.tx.to_json(), "initiator": self.initiator,
            "approvals": [a.to_json() for a in self.approvals],
            "metadata": json.loads(json.dumps(self.metadata)),  # a copy the caller may mutate
        }

    def encode(self) -> bytes:
        return canonical_json(self.to_json())

    def request_hash(self) -> bytes:
        """What approvers sign: everything but the approvals, domain-separated from other hashes."""
        body = self.to_json()
        del body["approvals"]
        return hashlib.sha256(_HASH_TAG + canonical_json(body)).digest()

    def with_approvals(self, approvals: Iterable[Approval]) -> WithdrawalRequest:
        approvals = tuple(approvals)
        if len(approvals) > MAX_APPROVALS:
            _fail("approvals", f"at most {MAX_APPROVALS} approvals")
        for i, a in enumerate(approvals):
            if not isinstance(a, Approval):
                _fail(f"approvals[{i}]", "must be an Approval")
            _text(a.approver, f"approvals[{i}].approver", _APPROVER)
            if not isinstance(a.signature, bytes) or len(a.signature) != 64:
                _fail(f"approvals[{i}].signature", "must be 64 bytes")
        return replace(self, approvals=approvals)


def sign_approval(request: WithdrawalRequest, approver: str, secret: bytes) -> Approval:
    """Approve ``request`` as ``approver`` (BIP-340, fresh aux randomness as the BIP recommends)."""
    _text(approver, "approver", _APPROVER)
    sig = coincurve.PrivateKey(secret).sign_schnorr(request.request_hash(), os.urandom(32))
    return Approval(approver, sig)


def verify_approval(request_hash: bytes, approval: Approval, xonly_pubkey: bytes) -> bool:
    """True iff ``approval`` is a valid signature over ``request_hash`` by ``xonly_pubkey``.

    Never raises: a malformed key or signature is simply not a valid approval, so one
    bad approval cannot stop the policy from counting the good ones.
    """
    try:
        if len(request_hash) != 32 or len(approval.signature) != 64 or len(xonly_pubkey) != 32:
            return False
        return bool(coincurve.PublicKeyXOnly(bytes(xonly_pubkey)).verify(approval.signature, request_hash))
    except Exception:  # noqa: BLE001 - any failure means "not valid"
        return False


# ---------------------------------------------------------------- result


def _opt_text(v: Any, path: str) -> str | None:
    if v is not None and not isinstance(v, str):
        _fail(path, "must be a string or null")
    return v


def _signature(v: Any, path: str, exact: bool) -> dict[str, Any]:
    """``{"r": hex64, "s": hex64, "v": int}``; list entries may carry extra adapter fields (e.g. input index)."""
    if exact:
        o = _object(v, path, ("r", "s", "v"))
    else:
        if not isinstance(v, Mapping):
            _fail(path, "must be a JSON object")
        o = _object(v, path, ("r", "s"), tuple(k for k in v if k not in ("r", "s")))
    for k in ("r", "s"):
        if not isinstance(o[k], str) or not _HEX64.fullmatch(o[k]):
            _fail(f"{path}.{k}", "must be 64 hex characters")
    if "v" in o:
        _int(o["v"], f"{path}.v", 0, 2**64 - 1)
    return _json_value(o, path)


@dataclass(frozen=True)
class WithdrawalResult:
    """What the wallet answers: the signed transaction, or why it was not signed."""

    request_id: str
    status: str
    raw_tx: str | None = None
    tx_hash: str | None = None
    signature: dict[str, Any] | None = field(default=None, hash=False)
    signatures: list[dict[str, Any]] = field(default_factory=list, hash=False)
    reason: str | None = None
    culprits: list[int] = field(default_factory=list, hash=False)
    attempts: int = 0
    rule: str | None = None
    request_hash: str | None = None  # hex request_hash() of the request this answers: tells a reused id apart

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id, "status": self.status, "raw_tx": self.raw_tx,
            "tx_hash": self.tx_hash,
            "signature": None if self.signature is None else dict(self.signature),
            "signatures": [dict(s) for s in self.signatures], "reason": self.reason, "rule": self.rule,
            "culprits": list(self.culprits), "attempts": self.attempts, "request_hash": self.request_hash,
        }

    def encode(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> WithdrawalResult:
        o = _object(_load(data, "result"), "", _RESULT_FIELDS, ("request_hash",))
        status = o["status"]
        if status not in RESULT_STATUSES:
            _fail("status", f"must be one of {', '.join(RESULT_STATUSES)}")
        sigs = o["signatures"]
        if not isinstance(sigs, list):
            _fail("signatures", "must be a list")
        culprits = o["culprits"]
        if not isinstance(culprits, list):
            _fail("culprits", "must be a list")
        return cls(
            request_id=_text(o["request_id"], "request_id", _REQUEST_ID),
            status=status,
            raw_tx=_opt_text(o["raw_tx"], "raw_tx"),
            tx_hash=_opt_text(o["tx_hash"], "tx_hash"),
            signature=None if o["signature"] is None else _signature(o["signature"], "signature", exact=True),
            signatures=[_signature(s, f"signatures[{i}]", exact=False) for i, s in enumerate(sigs)],
            reason=_opt_text(o["reason"], "reason"),
            culprits=[_int(c, f"culprits[{i}]", 0, 2**32 - 1) for i, c in enumerate(culprits)],
            attempts=_int(o["attempts"], "attempts", 0, 2**32 - 1),
            rule=_opt_text(o["rule"], "rule"),
            request_hash=_opt_text(o.get("request_hash"), "request_hash"),
        )
