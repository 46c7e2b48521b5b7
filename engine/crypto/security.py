"""Security levels L = (κ, ε, ℓ, ℓ', m, Q) of the CGGMP21 proofs.

``cggmp21-128`` is the cggmp21 crate's ``SecurityLevel128``: κ = 384 (1536-bit
safe primes, 3072-bit moduli), ε = 230, ℓ = 256, ℓ' = 848, m = 128, Q = 2^128.
It is the default everywhere.

``dev-2048`` keeps every proof parameter but shrinks κ to 256 (1024-bit primes,
2048-bit moduli). What it gives up: factoring a 2048-bit modulus is estimated
at ~112-bit work rather than ~128-bit (NIST SP 800-57), so the Paillier and
ring-Pedersen assumptions that protect shares are weaker. It exists for tests
and throughput experiments and must not hold production keys.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SecurityLevel", "LEVELS", "DEFAULT_LEVEL", "get_level", "UnknownLevel"]


@dataclass(frozen=True)
class SecurityLevel:
    name: str
    kappa: int  # κ: primes have 4κ bits, moduli 8κ bits
    epsilon: int  # ε: range-proof slack
    ell: int  # ℓ: range of k, γ, x plaintexts
    ell_prime: int  # ℓ': range of the MtA masks β
    m: int  # iterations of Πmod and Πprm
    q_bits: int  # challenge space ±Q with Q = 2^q_bits

    @property
    def prime_bits(self) -> int:
        return 4 * self.kappa

    @property
    def min_modulus_bits(self) -> int:
        """A receiver rejects any modulus shorter than this (8κ - 1 bits)."""
        return 8 * self.kappa - 1

    @property
    def max_modulus_bits(self) -> int:
        """...or longer than this (8κ bits): an oversized modulus would only make verifying slow."""
        return 8 * self.kappa

    def check(self) -> None:
        # correctness conditions from the spec: ℓ ≥ λ, ε ≥ 8 + log Q, ℓ' ≤ 8κ
        if not (self.ell >= 256 and self.epsilon >= 8 + self.q_bits and self.ell_prime <= 8 * self.kappa):
            raise ValueError(f"security level {self.name} violates the parameter constraints")


class UnknownLevel(ValueError):
    pass


CGGMP21_128 = SecurityLevel("cggmp21-128", kappa=384, epsilon=230, ell=256, ell_prime=848, m=128, q_bits=128)
DEV_2048 = SecurityLevel("dev-2048", kappa=256, epsilon=230, ell=256, ell_prime=848, m=128, q_bits=128)

LEVELS: dict[str, SecurityLevel] = {lvl.name: lvl for lvl in (CGGMP21_128, DEV_2048)}
DEFAULT_LEVEL = CGGMP21_128

for _lvl in LEVELS.values():
    _lvl.check()


def get_level(name: str) -> SecurityLevel:
    try:
        return LEVELS[name]
    except KeyError:
        raise UnknownLevel(f"unknown security level {name!r}; choose one of {', '.join(LEVELS)}") from None
