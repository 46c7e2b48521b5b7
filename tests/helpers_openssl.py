"""An ECDSA verifier independent of libsecp256k1: OpenSSL through ``cryptography``.

Protocol tests check the engine's signatures with this as well as with
:mod:`engine.crypto.ecdsa`, so a bug shared by our code and coincurve cannot
hide. OpenSSL accepts high-S signatures.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

__all__ = ["openssl_verify"]


def openssl_verify(public_key33: bytes, digest: bytes, der: bytes) -> bool:
    """True iff OpenSSL accepts the DER signature ``der`` on the SHA-256 ``digest``.

    Raises ValueError if the key is not a valid SEC1 secp256k1 point or the
    digest is not 32 bytes (a broken test, not a rejected signature).
    """
    if len(digest) != 32:
        raise ValueError("digest must be 32 bytes")
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), bytes(public_key33))
    try:
        key.verify(bytes(der), bytes(digest), ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return False
    return True
