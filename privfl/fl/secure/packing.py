"""Range packing (pure functions): scale a vector into public power-of-two bounds and back, exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from privfl.errors import CryptoError

# Bounds (log2) at which the weight and the magnitude are packed: 12 copies, 8 bits apart.
META_BOUND_BITS: tuple[int, ...] = tuple(range(-24, 65, 8))
_PICK_SLACK = 1.0 - 2.0**-10  # a copy is used only when its bound clears the estimate by this factor


@dataclass(frozen=True)
class RoundSpec:
    """What every party of a round must agree on, all public: the round, the model size, the bounds."""

    round_index: int
    n_params: int
    bound_bits: tuple[int, ...]

    @property
    def n_values(self) -> int:
        """Packed values per client: one copy of the vector per bound, then weight and magnitude copies."""
        return packed_length(self.n_params, self.bound_bits)

    def n_chunks(self, slots: int) -> int:
        """Ciphertexts per client for a context with `slots` slots each."""
        return -(-self.n_values // slots)


def packed_length(n_params: int, bound_bits: tuple[int, ...]) -> int:
    """len(bound_bits) copies of the vector, then len(META_BOUND_BITS) copies each of weight and magnitude."""
    return n_params * len(bound_bits) + 2 * len(META_BOUND_BITS)


def _scalar_copies(value: float, capacity_bits: int) -> np.ndarray:
    """A non-negative scalar at every META bound it fits (value < 2^(b-1)); zero elsewhere."""
    return np.array(
        [
            math.ldexp(value, capacity_bits - b) if value < math.ldexp(1.0, b - 1) else 0.0
            for b in META_BOUND_BITS
        ]
    )


def _pick_scalar(copies: np.ndarray, capacity_bits: int) -> float:
    """Decode a summed non-negative scalar: from the coarsest copy down while a finer copy is certain
    to have held every client and not wrapped. Sums below 2^-54 decode as 0."""
    est = math.ldexp(float(copies[-1]), META_BOUND_BITS[-1] - capacity_bits)
    for j in range(len(META_BOUND_BITS) - 2, -1, -1):
        b = META_BOUND_BITS[j]
        if est >= math.ldexp(_PICK_SLACK, b - 1):
            break
        est = math.ldexp(float(copies[j]), b - capacity_bits)
    return est if est >= math.ldexp(1.0, META_BOUND_BITS[0] - 30) else 0.0


def pack(vector: np.ndarray, weight: float, bound_bits: tuple[int, ...], capacity_bits: int) -> np.ndarray:
    """One client's slot values, float64 [packed_length]: the vector scaled into each bound it fits
    (max|x| < 2^(b-1)), zeros in the others, then weight and magnitude copies. Exact (powers of 2)."""
    x = np.asarray(vector, dtype=np.float64)
    n = x.shape[0]
    magnitude = float(np.max(np.abs(x))) if n else 0.0
    out = np.zeros(packed_length(n, bound_bits))
    for j, b in enumerate(bound_bits):
        if magnitude < math.ldexp(1.0, b - 1):
            out[j * n : (j + 1) * n] = np.ldexp(x, capacity_bits - b)
    base, k = n * len(bound_bits), len(META_BOUND_BITS)
    out[base : base + k] = _scalar_copies(float(weight), capacity_bits)
    out[base + k :] = _scalar_copies(magnitude, capacity_bits)
    return out


@dataclass(frozen=True)
class Unpacked:
    """A decoded sum: vector [n_params], weight, magnitude M = sum_k max|x_k|, and the bound used."""

    vector: np.ndarray
    weight: float
    magnitude: float
    bound_bits: int


class RangeOverflow(CryptoError):
    """The round's magnitude M exceeded every packed bound: the sum may have wrapped or lost clients."""

    def __init__(self, magnitude: float, bound_bits: tuple[int, ...]) -> None:
        self.magnitude = magnitude
        self.bound_bits = bound_bits
        super().__init__(
            f"the round's update magnitude (sum over clients of max|weight*update|) is {magnitude:.4g}, not "
            f"below the largest packed bound 2^{max(bound_bits) - 1} = "
            f"{math.ldexp(1.0, max(bound_bits) - 1):.4g}: the encrypted sum cannot be trusted and was "
            "dropped. CkksSummation adapts its bound for the next "
            "round; with a fixed CkksParams.bound_bits raise it to at least "
            f"{next_bound_bits(magnitude, 1)}"
        )


def unpack(values: np.ndarray, n_params: int, bound_bits: tuple[int, ...], capacity_bits: int) -> Unpacked:
    """Decode summed slot values (the inverse of summing `pack` outputs); raises RangeOverflow when
    no vector copy certainly holds the sum."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] < packed_length(n_params, bound_bits):
        raise CryptoError(
            f"got {values.shape[0]} values, the layout needs {packed_length(n_params, bound_bits)}"
        )
    base, k = n_params * len(bound_bits), len(META_BOUND_BITS)
    weight = _pick_scalar(values[base : base + k], capacity_bits)
    magnitude = _pick_scalar(values[base + k : base + 2 * k], capacity_bits)
    for j, b in enumerate(bound_bits):
        if magnitude < math.ldexp(_PICK_SLACK, b - 1):
            vector = np.ldexp(values[j * n_params : (j + 1) * n_params], b - capacity_bits)
            return Unpacked(vector, weight, magnitude, b)
    raise RangeOverflow(magnitude, bound_bits)


def next_bound_bits(magnitude: float, margin_bits: int) -> int:
    """Bound for the next round: M < 2^e gives e + margin_bits, so M may grow 2^(margin-1)-fold."""
    if not magnitude > 0 or not math.isfinite(magnitude):
        raise ValueError(f"magnitude must be positive and finite, got {magnitude}")
    return max(-900, min(math.frexp(magnitude)[1] + margin_bits, 900))
