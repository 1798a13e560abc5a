"""Range packing at the edges of the round's published bounds: what is clamped, what is refused."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privfl.errors import CryptoError
from privfl.fl.secure.packing import pack_one, unpack_sum

BOUNDS, CLIENTS, CAPACITY = (10, 20), 3, 2
LIMIT = math.ldexp(1.0, BOUNDS[0] - 1) / CLIENTS  # 512 / 3: not a float32
WEIGHT_LIMIT = math.ldexp(1.0, BOUNDS[1] - 1) / CLIENTS


def test_a_value_exactly_at_the_bound_fits_and_is_not_reported_clamped():
    packed, clamped = pack_one(np.array([LIMIT, -LIMIT, 0.5]), 1.0, BOUNDS, CLIENTS, CAPACITY)
    assert not clamped
    vector, _ = unpack_sum(packed, 3, BOUNDS, CAPACITY)
    np.testing.assert_array_equal(vector, [LIMIT, -LIMIT, 0.5])
    _, clamped = pack_one(np.array([np.nextafter(LIMIT, np.inf)]), 1.0, BOUNDS, CLIENTS, CAPACITY)
    assert clamped


def test_a_float32_update_is_clamped_to_the_bound_itself_so_max_clients_sums_cannot_wrap():
    """Model updates arrive as float32; the bound 2^(b-1)/max_clients is not a float32, and clamping in
    float32 would round it up, so that max_clients clamped contributions could sum past 2^(b-1)."""
    x = np.array([1e6, -1e6, 0.25], dtype=np.float32)
    packed, clamped = pack_one(x, 1.0, BOUNDS, CLIENTS, CAPACITY)
    vector, _ = unpack_sum(packed, 3, BOUNDS, CAPACITY)
    assert clamped and vector[0] == LIMIT and vector[1] == -LIMIT and vector[2] == 0.25
    assert CLIENTS * vector[0] <= math.ldexp(1.0, BOUNDS[0] - 1)


def test_the_weight_bound_is_half_open_and_its_refusal_says_the_client_sends_nothing():
    below = np.nextafter(WEIGHT_LIMIT, 0.0)
    packed, _ = pack_one(np.zeros(2), below, BOUNDS, CLIENTS, CAPACITY)
    assert unpack_sum(packed, 2, BOUNDS, CAPACITY)[1] == below
    for weight in (WEIGHT_LIMIT, 2 * WEIGHT_LIMIT, math.inf, math.nan):
        with pytest.raises(
            CryptoError,
            match=rf"^weight {weight} is outside the round's published weight bound "
            rf"\[0, {WEIGHT_LIMIT:.6g}\); the client sends nothing this round$",
        ):
            pack_one(np.zeros(2), weight, BOUNDS, CLIENTS, CAPACITY)
