"""Ethereum EIP-1559 (type 2) transactions for a threshold secp256k1 key.

The engine signs one 32-byte digest and returns (r, s, v). This module supplies that
digest, :func:`signing_hash`, and puts the signature back into the raw transaction,
:func:`signed_raw`. Only plain value transfers and contract calls to an existing 20-byte
address are supported. Contract creation (empty ``to``) is refused on purpose: custody
should never deploy code by leaving a field blank. The access list is always empty.

RLP and keccak come from the ``rlp`` and ``eth-hash`` packages. They are not hand-written,
because an encoding mistake here would move funds somewhere nobody intended.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import rlp
from coincurve import PublicKey
from eth_hash.auto import keccak

from engine.chains import compressed_pubkey
from engine.crypto.group import Q

__all__ = ["TX_TYPE", "Transaction", "address", "parse_address", "signing_hash", "signed_raw", "tx_hash"]

TX_TYPE = 0x02  # EIP-2718 envelope type of EIP-1559 transactions

_UINT256 = 2**256
_HALF_Q = Q // 2
_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def _checksum(raw: bytes) -> str:
    """EIP-55: upper-case each hex letter whose nibble in keccak(lower-case hex) is >= 8."""
    lower = raw.hex()
    digest = keccak(lower.encode("ascii")).hex()
    return "0x" + "".join(c.upper() if int(h, 16) >= 8 else c for c, h in zip(lower, digest))


def address(pubkey: bytes) -> str:
    """The EIP-55 checksummed address of a 33-byte compressed secp256k1 public key.

    Raises ValueError if ``pubkey`` is not a valid compressed point.
    """
    full = PublicKey(compressed_pubkey(pubkey)).format(compressed=False)
    return _checksum(keccak(full[1:])[-20:])


def parse_address(text: str) -> bytes:
    """The 20 bytes of a "0x" + 40 hex address.

    All-lower-case and all-upper-case addresses carry no checksum and are accepted as is.
    A mixed-case address must match its EIP-55 checksum: a mismatch usually means a typo.

    Raises ValueError naming the address if it is malformed or its checksum is wrong.
    """
    if not isinstance(text, str) or not _HEX_ADDRESS.fullmatch(text):
        raise ValueError(f"address {text!r} is not 0x followed by 40 hex digits")
    raw = bytes.fromhex(text[2:])
    body = text[2:]
    if body != body.lower() and body != body.upper() and _checksum(raw) != text:
        raise ValueError(f"address {text!r} has a wrong EIP-55 checksum")
    return raw


def _uint(name: str, value: object, *, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer")
    if not minimum <= value < _UINT256:
        raise ValueError(f"{name} must be in [{minimum}, 2**256)")
    return value


@dataclass(frozen=True)
class Transaction:
    """The unsigned fields of an EIP-1559 transaction (the access list is always empty)."""

    chain_id: int
    nonce: int
    to: bytes
    value: int
    gas: int
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    data: bytes = b""

    def fields(self) -> list[object]:
        """The nine unsigned fields in RLP order, validated; ValueError names a bad one."""
        _uint("chain_id", self.chain_id, minimum=1)
        _uint("nonce", self.nonce)
        _uint("value", self.value)
        _uint("gas", self.gas)
        _uint("max_fee_per_gas", self.max_fee_per_gas)
        _uint("max_priority_fee_per_gas", self.max_priority_fee_per_gas)
        if self.max_priority_fee_per_gas > self.max_fee_per_gas:
            raise ValueError("max_priority_fee_per_gas must not exceed max_fee_per_gas")
        if not isinstance(self.to, (bytes, bytearray)) or len(self.to) != 20:
            raise ValueError("to must be 20 bytes (contract creation is not supported)")
        if not isinstance(self.data, (bytes, bytearray)):
            raise ValueError("data must be bytes")
        access_list: list[object] = []
        return [self.chain_id, self.nonce, self.max_priority_fee_per_gas, self.max_fee_per_gas, self.gas,
                bytes(self.to), self.value, bytes(self.data), access_list]


def signing_hash(tx: Transaction) -> bytes:
    """The 32-byte digest to sign: keccak(0x02 || rlp([chain_id, nonce, max_priority_fee_per_gas,
    max_fee_per_gas, gas, to, value, data, access_list=[]])).

    Raises ValueError naming the field that is out of range or of the wrong type.
    """
    return keccak(bytes([TX_TYPE]) + rlp.encode(tx.fields()))


def signed_raw(tx: Transaction, *, r: int, s: int, v: int) -> bytes:
    """The broadcastable transaction: 0x02 || rlp([..nine fields.., y_parity=v, r, s]).

    ``v`` is the y parity (0 or 1), not a legacy 27/28 or EIP-155 value. ``s`` must be low
    (s <= n/2): since EIP-2 Ethereum rejects the high-S twin of a signature.

    Raises ValueError naming the bad field.
    """
    fields = tx.fields()
    if not isinstance(v, int) or isinstance(v, bool) or v not in (0, 1):
        raise ValueError("v must be the y parity, 0 or 1")
    for name, k in (("r", r), ("s", s)):
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < Q:
            raise ValueError(f"{name} must be an integer in [1, n-1]")
    if s > _HALF_Q:
        raise ValueError("s must be low (s <= n/2); normalise the signature and flip v")
    return bytes([TX_TYPE]) + rlp.encode([*fields, v, r, s])


def tx_hash(raw: bytes) -> str:
    """The transaction hash block explorers show: "0x" + keccak(raw) in hex."""
    if not isinstance(raw, (bytes, bytearray)) or not raw:
        raise ValueError("raw must be non-empty bytes")
    return "0x" + keccak(bytes(raw)).hex()
