"""From a withdrawal request to the digests a party signs, and back to a signed transaction.

A party never signs a digest it is handed. It rebuilds the transaction from the
request's fields with the chain adapters, derives the signing key for the
request's HD path, and compares its own digests with the ones the coordinator
asked for. What the policy evaluates is therefore exactly what gets signed.

One signature per digest: an Ethereum transaction has one, a Bitcoin
transaction one per input (each input spends the wallet's own P2WPKH output for
the key and path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.chains import bitcoin, ethereum, hd
from schemas.withdrawal import BitcoinTx, EthereumTx, RequestError, WithdrawalRequest

__all__ = ["Prepared", "prepare", "assemble", "wallet_address"]


@dataclass(frozen=True)
class Prepared:
    """A request checked against the chain rules, with what must be signed for it."""

    request: WithdrawalRequest
    public_key: bytes  # the (derived) key that signs, compressed
    tweak: int  # child key = group key + tweak·G
    digests: tuple[bytes, ...]  # one per signature, in input order
    address: str  # the wallet's own address for this key and path

    def __repr__(self) -> str:
        return f"Prepared({self.request.request_id!r}, {len(self.digests)} digest(s))"


def _eth_tx(tx: EthereumTx) -> ethereum.Transaction:
    try:
        to = ethereum.parse_address(tx.to)
    except ValueError as exc:
        raise RequestError(f"tx.to: {exc}") from None
    return ethereum.Transaction(tx.chain_id, tx.nonce, to, tx.value, tx.gas, tx.max_fee_per_gas,
                                tx.max_priority_fee_per_gas, tx.data)


def _btc_spend(tx: BitcoinTx, public_key: bytes) -> bitcoin.Spend:
    return bitcoin.Spend(version=tx.version, locktime=tx.locktime, pubkey=public_key, network=tx.network,
                         inputs=[bitcoin.TxIn(i.txid, i.vout, i.amount, i.sequence) for i in tx.inputs],
                         outputs=[bitcoin.TxOut(o.address, o.amount) for o in tx.outputs])


def wallet_address(group_key: bytes, chain: str, path: str | None = None, network: str | None = None) -> str:
    """The wallet's address on ``chain`` for the key and optional HD path."""
    try:
        child, _ = hd.derive_for(group_key, path)
    except ValueError as exc:
        raise RequestError(f"path: {exc}") from None
    if chain == "ethereum":
        return ethereum.address(child)
    if chain == "bitcoin":
        return bitcoin.address(child, network or "mainnet")
    raise RequestError(f"chain: unknown chain {chain!r}")


def prepare(request: WithdrawalRequest, group_key: bytes) -> Prepared:
    """Derive the key and compute every digest; raise RequestError when the transaction is invalid."""
    try:
        child, tweak = hd.derive_for(group_key, request.path)
    except ValueError as exc:
        raise RequestError(f"path: {exc}") from None
    tx = request.tx
    try:
        if isinstance(tx, EthereumTx):
            digests = (ethereum.signing_hash(_eth_tx(tx)),)
            address = ethereum.address(child)
        else:
            digests = tuple(bitcoin.sighashes(_btc_spend(tx, child)))
            address = bitcoin.address(child, tx.network)
    except RequestError:
        raise
    except ValueError as exc:
        raise RequestError(f"tx: {exc}") from None
    return Prepared(request, child, tweak, digests, address)


def assemble(prepared: Prepared, signatures: Sequence[tuple[int, int, int]]) -> tuple[str, str]:
    """The signed raw transaction (hex) and its hash, from one (r, s, v) per digest."""
    if len(signatures) != len(prepared.digests):
        raise ValueError(f"need {len(prepared.digests)} signature(s), got {len(signatures)}")
    tx = prepared.request.tx
    if isinstance(tx, EthereumTx):
        (r, s, v), = signatures
        raw = ethereum.signed_raw(_eth_tx(tx), r=r, s=s, v=v)
        return "0x" + raw.hex(), ethereum.tx_hash(raw)
    raw = bitcoin.signed_raw(_btc_spend(tx, prepared.public_key), [(r, s) for r, s, _ in signatures])
    return raw.hex(), bitcoin.txid(raw)
