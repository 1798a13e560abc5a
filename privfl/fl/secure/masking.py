"""The mask generator SecAgg+ adds in Z_M (M = 2^bits), its ring of neighbours, and (from
privfl.config, where every setting is checked) the fixed-point encoding into Z_M, `FixedPoint`:

    q = round(x * 2^f)  (round half to even),  |x| <= R clipped first,  stored mod M = 2^bits
    f = bits - 1 - ceil(log2(K * (R + 1)))   so that any sum of K encoded values has
                                             |sum q| < 2^(bits-1) and decodes without wrapping.

Multiplying a float64 by 2^f is exact, so each coordinate's only error is the rounding,
|x - q 2^-f| <= 2^-(f+1), and a sum over m clients is off by at most m 2^-(f+1) per coordinate
(`FixedPoint.sum_error_bound`), plus float64's own rounding when the decoded integer exceeds 2^53.

Masks: a 32-byte seed keys AES-256 in CTR mode (the `cryptography` package, which Flower's own
primitives use too); its keystream read as little-endian uint64 and reduced mod 2^bits is uniform on
Z_M because M divides 2^64. Flower's `pseudo_rand_gen` is not used: it folds the seed to 32 bits
and seeds NumPy's Mersenne Twister, so a mask could be found by trying 2^32 seeds.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privfl.config import FixedPoint, round_shares

__all__ = ["FixedPoint", "mask", "ring_neighbours", "round_shares"]


def mask(seed: bytes, n: int, bits: int) -> np.ndarray:
    """n uniform elements of Z_{2^bits} (uint64) from a 32-byte seed: AES-256-CTR keystream."""
    if len(seed) != 32:
        raise ValueError(f"a mask seed is 32 bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(b"\x00" * 16)).encryptor()
    words = np.frombuffer(encryptor.update(bytes(8 * n)), dtype="<u8").astype(np.uint64)
    return words & np.uint64((1 << bits) - 1)


def ring_neighbours(order: list[int], num_shares: int) -> dict[int, set[int]]:
    """SecAgg+'s communication graph as Flower builds it: clients on a ring in `order`, each with the
    num_shares // 2 on either side and itself (all clients when num_shares >= len(order))."""
    n = len(order)
    if num_shares >= n:
        return {c: set(order) for c in order}
    half = num_shares // 2
    return {c: {order[(i + o) % n] for o in range(-half, half + 1)} for i, c in enumerate(order)}
