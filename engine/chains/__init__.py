"""Chain adapters: turn a threshold public key into addresses and a transaction into digests.

The signing engine only ever signs 32-byte digests. Everything chain-specific lives here:
how a public key becomes an address, which bytes a chain hashes for a signature, and how a
finished signature is put back into a broadcastable transaction. The modules are pure and
public-data-only: nothing here sees a key share.
"""

from __future__ import annotations

__all__: list[str] = []
