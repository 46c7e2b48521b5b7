"""Chain adapters: turn a threshold public key into addresses and a transaction into digests.

The signing engine only ever signs 32-byte digests. Everything chain-specific lives here:
how a public key becomes an address, which bytes a chain hashes for a signature, and how a
finished signature is put back into a broadcastable transaction. The modules are pure and
public-data-only: nothing here sees a key share.
"""

from __future__ import annotations

from coincurve import PublicKey

__all__ = ["compressed_pubkey"]


def compressed_pubkey(pubkey: bytes) -> bytes:
    """``pubkey`` as bytes if it is a 33-byte compressed point on secp256k1, else ValueError.

    P2WPKH needs compressed keys (BIP-143 standardness) and BIP-32 serialises them so.
    """
    if not isinstance(pubkey, (bytes, bytearray)) or len(pubkey) != 33 or pubkey[0] not in (2, 3):
        raise ValueError("pubkey must be a 33-byte compressed secp256k1 public key")
    try:
        PublicKey(bytes(pubkey))
    except ValueError as exc:
        raise ValueError("pubkey is not a point on secp256k1") from exc
    return bytes(pubkey)
