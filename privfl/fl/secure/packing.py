"""Range packing with one public bound per round: a contribution as n_params + 1 slot values.

Slot i < n_params carries x_i * 2^(C - b) and the last slot the weight * 2^(C - b_w), where C is the
context's headroom (data bits - 2 - scale bits) and b, b_w are the round's public bounds, fixed by
the key holder and signed (CkksParams: the configured round-0 bounds, then adapted to the sum it
released). Each |x_i| is clamped to 2^(b-1)/max_clients, so no sum of max_clients honest
contributions wraps. There are no copies at other bounds and no magnitude slot: every slot the key
holder decrypts is a slot of the sum. Scaling by powers of two is exact; only CKKS adds error.
"""

from __future__ import annotations

import math

import numpy as np

from privfl.errors import CryptoError


def pack_one(
    vector: np.ndarray, weight: float, bounds: tuple[int, int], max_clients: int, capacity_bits: int
) -> tuple[np.ndarray, bool]:
    """float64 [n_params + 1] slot values for one client, and whether the vector was clamped.

    Each |x_i| is clamped to 2^(b-1)/max_clients (the published bound); the weight must lie below
    2^(bw-1)/max_clients or the client refuses to send (a client fault, CryptoError)."""
    b, bw = bounds
    x = np.asarray(vector, dtype=np.float64)
    limit = math.ldexp(1.0, b - 1) / max_clients
    clamped = bool(x.size) and float(np.max(np.abs(x))) > limit
    x = np.clip(x, -limit, limit)
    weight_limit = math.ldexp(1.0, bw - 1) / max_clients
    if not (math.isfinite(weight) and 0.0 <= weight < weight_limit):
        raise CryptoError(
            f"weight {weight} is outside the round's published weight bound [0, {weight_limit:.6g}); "
            "the client sends nothing this round"
        )
    out = np.empty(x.shape[0] + 1)
    out[:-1] = np.ldexp(x, capacity_bits - b)
    out[-1] = math.ldexp(weight, capacity_bits - bw)
    return out, clamped


def unpack_sum(values: np.ndarray, n_params: int, bounds: tuple[int, int], capacity_bits: int):
    """(vector [n_params], weight) from summed slot values; exact powers of two."""
    b, bw = bounds
    return np.ldexp(values[:n_params], b - capacity_bits), math.ldexp(
        float(values[n_params]), bw - capacity_bits
    )
