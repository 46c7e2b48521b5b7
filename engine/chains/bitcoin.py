"""Bitcoin transactions spending P2WPKH outputs of a threshold secp256k1 key.

Every input spends an output locked to ``hash160(pubkey)`` (native segwit v0), so each
input's digest is the BIP-143 SIGHASH_ALL hash. BIP-143 commits to the amount being
spent, which a custody signer needs: a lying coordinator cannot make the signers pay a
fee they did not see. Outputs may go to any segwit v0 address (P2WPKH or P2WSH).

Bech32 comes from the ``bech32`` package (Pieter Wuille's reference code). That package
implements only the original bech32 checksum, not BIP-350's bech32m, so witness v1+
(Taproot) destinations are refused rather than guessed at. The BIP-143 digest and the
segwit serialisation are short and written here against the BIP text; the tests check
both against python-bitcoinlib.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import bech32

from engine.crypto.ecdsa import HALF_Q, der_encode, verify_digest
from engine.chains import compressed_pubkey
from engine.crypto.group import Q

__all__ = [
    "NETWORKS",
    "MAX_MONEY",
    "SIGHASH_ALL",
    "TxIn",
    "Spend",
    "TxOut",
    "hash160",
    "address",
    "script_pubkey",
    "sighashes",
    "signed_raw",
    "txid",
]

NETWORKS = {"mainnet": "bc", "testnet": "tb", "signet": "tb", "regtest": "bcrt"}
MAX_MONEY = 21_000_000 * 100_000_000  # satoshis
SIGHASH_ALL = 0x01

_UINT32 = 2**32
_MAX_BECH32_LENGTH = 90  # BIP-173; the bech32 package leaves this check commented out


@dataclass(frozen=True)
class TxIn:
    """A P2WPKH output being spent.

    ``txid`` is 64 hex digits in display order (as block explorers show it), ``amount`` is
    the value of the spent output in satoshis. ``sequence`` is the raw nSequence; for
    example 0xFFFFFFFD enables locktime and opts in to replace-by-fee (BIP-125).
    """

    txid: str
    vout: int
    amount: int
    sequence: int


@dataclass(frozen=True)
class TxOut:
    """A payment of ``amount`` satoshis to a segwit v0 ``address``."""

    address: str
    amount: int


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _dsha256(data: bytes) -> bytes:
    return _sha256(_sha256(data))


def _ripemd160(data: bytes) -> bytes:
    try:
        return hashlib.new("ripemd160", data).digest()
    except ValueError:  # OpenSSL 3 may ship without the legacy provider
        from Crypto.Hash import RIPEMD160

        return RIPEMD160.new(data).digest()


def hash160(data: bytes) -> bytes:
    """RIPEMD160(SHA256(data)), Bitcoin's 20-byte key hash."""
    return _ripemd160(_sha256(data))


def _hrp(network: str) -> str:
    try:
        return NETWORKS[network]
    except (KeyError, TypeError):
        raise ValueError(f"network must be one of {sorted(NETWORKS)}, not {network!r}") from None



def address(pubkey: bytes, network: str) -> str:
    """The bech32 P2WPKH address (witness v0, hash160 of the key) of a compressed public key.

    Raises ValueError for an unknown network or a key that is not a compressed point.
    """
    hrp = _hrp(network)
    encoded = bech32.encode(hrp, 0, hash160(compressed_pubkey(pubkey)))
    if encoded is None:  # cannot happen for a 20-byte program
        raise ValueError("could not encode address")
    return encoded


def script_pubkey(address: str, network: str) -> bytes:
    """The output script for a segwit v0 address of ``network``: OP_0 <20 or 32 bytes>.

    Raises ValueError naming the address if it is not valid bech32 for that network's
    prefix, or if it is witness v1+ (bech32m, e.g. Taproot), which is not supported.
    """
    hrp = _hrp(network)
    if not isinstance(address, str) or len(address) > _MAX_BECH32_LENGTH:
        raise ValueError(f"address {address!r} is not a valid {network} segwit address")
    version, program = bech32.decode(hrp, address)
    if version is None or program is None:
        raise ValueError(
            f"address {address!r} is not a valid {network} segwit v0 address "
            "(wrong network, bad checksum, or bech32m/Taproot, which is unsupported)"
        )
    if version != 0:
        # the package checks v1+ against the bech32 checksum, which BIP-350 forbids
        raise ValueError(f"unsupported address {address!r}: only segwit v0 is supported")
    return bytes([0x00, len(program)]) + bytes(program)


def _varint(n: int) -> bytes:
    """Bitcoin's CompactSize."""
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def _u32(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _UINT32:
        raise ValueError(f"{name} must be an integer in [0, 2**32)")
    return value


def _amount(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_MONEY:
        raise ValueError(f"{name} must be an integer number of satoshis in [1, {MAX_MONEY}]")
    return value


def _outpoint(i: int, txin: object) -> bytes:
    """txid in internal (little-endian) byte order || vout, validated."""
    if not isinstance(txin, TxIn):
        raise ValueError(f"inputs[{i}] must be a TxIn")
    tid = txin.txid
    if not isinstance(tid, str) or len(tid) != 64:
        raise ValueError(f"inputs[{i}].txid must be 64 hex digits")
    try:
        raw = bytes.fromhex(tid)
    except ValueError:
        raise ValueError(f"inputs[{i}].txid must be 64 hex digits") from None
    _u32(f"inputs[{i}].vout", txin.vout)
    _u32(f"inputs[{i}].sequence", txin.sequence)
    _amount(f"inputs[{i}].amount", txin.amount)
    return raw[::-1] + txin.vout.to_bytes(4, "little")


@dataclass(frozen=True)
class _Checked:
    """A validated transaction, with the pieces BIP-143 and the serialisation share."""

    version: bytes
    locktime: bytes
    outpoints: tuple[bytes, ...]
    sequences: tuple[bytes, ...]
    amounts: tuple[int, ...]
    outputs: bytes  # concatenated serialised outputs
    n_outputs: int
    pubkey: bytes


@dataclass(frozen=True)
class Spend:
    """An unsigned transaction whose every input spends the P2WPKH output of ``pubkey``."""

    version: int
    locktime: int
    inputs: Sequence[TxIn]
    outputs: Sequence[TxOut]
    pubkey: bytes
    network: str


def _check(spend: Spend) -> _Checked:
    version, locktime, inputs, outputs, network = (spend.version, spend.locktime, spend.inputs, spend.outputs,
                                                   spend.network)
    _hrp(network)
    _u32("version", version)
    _u32("locktime", locktime)
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence) or not inputs:
        raise ValueError("inputs must be a non-empty sequence of TxIn")
    if isinstance(outputs, (str, bytes)) or not isinstance(outputs, Sequence) or not outputs:
        raise ValueError("outputs must be a non-empty sequence of TxOut")
    outpoints = tuple(_outpoint(i, txin) for i, txin in enumerate(inputs))
    if len(set(outpoints)) != len(outpoints):
        raise ValueError("inputs spend the same outpoint twice")
    serialised = b""
    for j, txout in enumerate(outputs):
        if not isinstance(txout, TxOut):
            raise ValueError(f"outputs[{j}] must be a TxOut")
        _amount(f"outputs[{j}].amount", txout.amount)
        script = script_pubkey(txout.address, network)
        serialised += txout.amount.to_bytes(8, "little") + _varint(len(script)) + script
    total_in = sum(txin.amount for txin in inputs)
    total_out = sum(txout.amount for txout in outputs)
    if total_out > total_in:
        raise ValueError(f"outputs total {total_out} sat exceeds inputs total {total_in} sat")
    if total_in > MAX_MONEY:
        raise ValueError("inputs total exceeds 21 million BTC")
    return _Checked(
        version=version.to_bytes(4, "little"),
        locktime=locktime.to_bytes(4, "little"),
        outpoints=outpoints,
        sequences=tuple(txin.sequence.to_bytes(4, "little") for txin in inputs),
        amounts=tuple(txin.amount for txin in inputs),
        outputs=serialised,
        n_outputs=len(outputs),
        pubkey=compressed_pubkey(spend.pubkey),
    )


def _sighashes(tx: _Checked) -> list[bytes]:
    """BIP-143 SIGHASH_ALL digests, one per input; all inputs are P2WPKH of ``tx.pubkey``."""
    hash_prevouts = _dsha256(b"".join(tx.outpoints))
    hash_sequence = _dsha256(b"".join(tx.sequences))
    hash_outputs = _dsha256(tx.outputs)
    # P2WPKH scriptCode: the P2PKH script of the same key hash, with its length prefix
    script_code = b"\x19\x76\xa9\x14" + hash160(tx.pubkey) + b"\x88\xac"
    digests = []
    for outpoint, sequence, amount in zip(tx.outpoints, tx.sequences, tx.amounts):
        preimage = (
            tx.version
            + hash_prevouts
            + hash_sequence
            + outpoint
            + script_code
            + amount.to_bytes(8, "little")
            + sequence
            + hash_outputs
            + tx.locktime
            + SIGHASH_ALL.to_bytes(4, "little")
        )
        digests.append(_dsha256(preimage))
    return digests


def sighashes(spend: Spend) -> list[bytes]:
    """The 32-byte BIP-143 SIGHASH_ALL digest of each input, in input order.

    Every input is taken to spend the P2WPKH output of ``pubkey``.

    Raises ValueError naming the bad field: no inputs or outputs, an amount outside
    [1, 21e14] sat, outputs exceeding inputs (negative fee), a version, locktime, vout or
    sequence outside uint32, a duplicate outpoint, or an address not of ``network``.
    """
    return _sighashes(_check(spend))


def _serialise(tx: _Checked, witnesses: Sequence[Sequence[bytes]] | None) -> bytes:
    """BIP-144 serialisation with witnesses, or the legacy one (for the txid) without."""
    body = _varint(len(tx.outpoints))
    for outpoint, sequence in zip(tx.outpoints, tx.sequences):
        body += outpoint + b"\x00" + sequence  # empty scriptSig: the witness carries it all
    body += _varint(tx.n_outputs) + tx.outputs
    if witnesses is None:
        return tx.version + body + tx.locktime
    stack = b""
    for items in witnesses:
        stack += _varint(len(items)) + b"".join(_varint(len(item)) + item for item in items)
    return tx.version + b"\x00\x01" + body + stack + tx.locktime  # marker 0x00, flag 0x01


def signed_raw(spend: Spend, signatures: Sequence[tuple[int, int]]) -> bytes:
    """The broadcastable segwit transaction; input i's witness is [DER(r, s) || 0x01, pubkey].

    ``signatures[i]`` is the (r, s) over ``sighashes(...)[i]``. Each must be low-S (Bitcoin
    relay policy) and must verify: a bad signature is caught here, not by the network.

    Raises ValueError for the reasons :func:`sighashes` does, a signature count that differs
    from the input count, or a signature that is high-S or does not verify.
    """
    tx = _check(spend)
    digests = _sighashes(tx)
    if isinstance(signatures, (str, bytes)) or not isinstance(signatures, Sequence):
        raise ValueError("signatures must be a sequence of (r, s)")
    if len(signatures) != len(digests):
        raise ValueError(f"signatures has {len(signatures)} entries for {len(digests)} inputs")
    witnesses = []
    for i, (digest, sig) in enumerate(zip(digests, signatures)):
        if not isinstance(sig, tuple) or len(sig) != 2:
            raise ValueError(f"signatures[{i}] must be a pair (r, s)")
        r, s = sig
        for name, k in (("r", r), ("s", s)):
            if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < Q:
                raise ValueError(f"signatures[{i}].{name} must be an integer in [1, n-1]")
        if s > HALF_Q:
            raise ValueError(f"signatures[{i}].s must be low (s <= n/2)")
        if not verify_digest(tx.pubkey, digest, r, s, require_low_s=True):
            raise ValueError(f"signatures[{i}] does not verify for input {i}")
        witnesses.append((der_encode(r, s) + bytes([SIGHASH_ALL]), tx.pubkey))
    return _serialise(tx, witnesses)


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    first = raw[pos]
    width = {0xFD: 2, 0xFE: 4, 0xFF: 8}.get(first, 0)
    if width == 0:
        return first, pos + 1
    return int.from_bytes(raw[pos + 1 : pos + 1 + width], "little"), pos + 1 + width


def txid(raw: bytes) -> str:
    """The txid of a serialised transaction: dsha256 of its non-witness form, reversed, in hex.

    Accepts both segwit and legacy serialisations. Raises ValueError if ``raw`` is truncated
    or has trailing bytes.
    """
    if not isinstance(raw, (bytes, bytearray)):
        raise ValueError("raw must be bytes")
    raw = bytes(raw)
    try:
        segwit = raw[4:6] == b"\x00\x01"
        pos = 6 if segwit else 4
        start = pos
        n_in, pos = _read_varint(raw, pos)
        for _ in range(n_in):
            pos += 36
            script_len, pos = _read_varint(raw, pos)
            pos += script_len + 4
        n_out, pos = _read_varint(raw, pos)
        for _ in range(n_out):
            pos += 8
            script_len, pos = _read_varint(raw, pos)
            pos += script_len
        end = pos
        if segwit:
            for _ in range(n_in):
                n_items, pos = _read_varint(raw, pos)
                for _ in range(n_items):
                    item_len, pos = _read_varint(raw, pos)
                    pos += item_len
    except IndexError:
        raise ValueError("raw is truncated") from None
    if pos + 4 != len(raw):
        raise ValueError("raw is truncated or has trailing bytes")
    stripped = raw[:4] + raw[start:end] + raw[-4:]
    return _dsha256(stripped)[::-1].hex()
