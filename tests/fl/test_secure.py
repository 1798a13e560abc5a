"""CKKS pieces in one process: parameters, the key holder's sum, the encryptor's refusals, upload.

The attacks on the parties, through a real key-holder process, are in test_keyholder_attacks.py.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from privfl.errors import ConfigError, CryptoError
from privfl.fl.aggregate import Contribution
from privfl.fl.secure import (
    HE_STANDARD_128_MAX_BITS,
    CkksParams,
    Encryptor,
    KeyHolder,
    RoundAnnouncement,
    enrol_clients,
)

PARAMS = CkksParams(max_clients=4)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| relative to max |want| (the brief's precision measure)."""
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-300))


def round_through(params: CkksParams, contributions: list[Contribution], *, round_index: int = 0):
    """Clients -> key holder, in process: (released sum, payload sizes)."""
    keys, registry = enrol_clients([c.client_id for c in contributions])
    holder = KeyHolder(params, registry, min_clients=2)
    n = contributions[0].vector.shape[0]
    announcement, signature = holder.open_round(round_index, n)
    encryptor = Encryptor(holder.verify_key, holder.public_context)
    sizes = []
    for c in contributions:
        payload, sig, _ = encryptor.seal(c, announcement, signature, keys[c.client_id])
        assert holder.submit(round_index, c.client_id, payload, sig) is None
        sizes.append(len(payload))
    return holder.release(round_index), sizes


# --- parameters ---------------------------------------------------------------------------------


def test_default_and_tutorial_params_are_valid_and_within_the_standard() -> None:
    for params in (
        PARAMS,
        CkksParams(poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 40, 60), global_scale_bits=40),
    ):
        assert params.validate() is params
        assert sum(params.coeff_mod_bit_sizes) <= HE_STANDARD_128_MAX_BITS[params.poly_modulus_degree]
        assert params.precision_bits() >= 20


def test_insecure_modulus_is_refused_unless_flagged(caplog: pytest.LogCaptureFixture) -> None:
    params = CkksParams(coeff_mod_bit_sizes=(60, 60))  # 120 bits > 109 allowed at N=4096
    with pytest.raises(ConfigError, match=r"120 bits.*109.*insecure=True"):
        params.validate()
    flagged = CkksParams(coeff_mod_bit_sizes=(60, 60), insecure=True)
    with caplog.at_level(logging.WARNING):
        assert flagged.validate() is flagged
    assert "below 128-bit security" in caplog.text
    _, registry = enrol_clients([0, 1])
    with pytest.raises(CryptoError, match="128-bit"):  # TenSEAL's SEAL build still refuses them
        KeyHolder(flagged, registry, min_clients=2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"poly_modulus_degree": 3000}, "poly_modulus_degree=3000"),
        ({"coeff_mod_bit_sizes": (50,)}, "at least two primes"),
        ({"coeff_mod_bit_sizes": (50, 61)}, r"coeff_mod_bit_sizes\[1\]=61"),
        ({"global_scale_bits": 49}, "global_scale_bits=49"),
        ({"coeff_mod_bit_sizes": (30, 30), "global_scale_bits": 20}, "bits of precision"),
        ({"max_clients": 0}, "max_clients=0"),
        ({"margin_bits": 0}, "margin_bits=0"),
        ({"bound_bits": 901}, "bound_bits=901"),
    ],
)
def test_bad_params_name_the_value_and_the_fix(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CkksParams(**overrides).validate()


def test_the_key_holder_refuses_a_threshold_below_two() -> None:
    _, registry = enrol_clients([0, 1])
    with pytest.raises(ConfigError, match="at least 2 clients"):
        KeyHolder(PARAMS, registry, min_clients=1)


# --- the sum ------------------------------------------------------------------------------------


@settings(max_examples=8, deadline=None)
@given(
    st.integers(2, 4),
    st.integers(1, 300),
    st.floats(1e-3, 1e2),
)
def test_released_sum_equals_the_plaintext_weighted_sum(k: int, n: int, scale: float) -> None:
    rng = np.random.default_rng([k, n])
    weights = rng.integers(1, 200, size=k).astype(float)
    contributions = [
        Contribution(i, rng.normal(0, scale, n) * weights[i], float(weights[i])) for i in range(k)
    ]
    params = CkksParams(max_clients=4, bound_bits=int(np.ceil(np.log2(scale * 200 * 4 * 6))) + 2)
    released, _ = round_through(params, contributions)
    plain = sum(c.vector for c in contributions)
    assert relative_error(released.vector, plain) < 1e-6
    assert abs(released.weight - weights.sum()) < 1e-6 * weights.sum()
    assert released.count == k


def test_tutorial_params_also_sum_correctly() -> None:
    params = CkksParams(poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 40, 60), global_scale_bits=40)
    rng = np.random.default_rng(2)
    contributions = [Contribution(i, rng.normal(0, 1, 50), 1.0) for i in range(3)]
    released, _ = round_through(params, contributions)
    assert relative_error(released.vector, sum(c.vector for c in contributions)) < 1e-6


def test_upload_is_at_most_30_bytes_per_parameter() -> None:
    n = 20_000
    rng = np.random.default_rng(3)
    _, sizes = round_through(PARAMS, [Contribution(i, rng.normal(0, 0.01, n), 1.0) for i in range(2)])
    assert max(sizes) / n <= 30


def test_bounds_adapt_to_the_released_sum() -> None:
    rng = np.random.default_rng(4)
    contributions = [Contribution(i, rng.normal(0, 0.01, 100), 50.0) for i in range(2)]
    released, _ = round_through(PARAMS, contributions)
    peak = float(np.max(np.abs(released.vector)))
    assert released.next_bounds[0] == int(np.frexp(peak)[1]) + PARAMS.headroom_bits()
    assert released.next_bounds[1] == int(np.frexp(100.0)[1]) + PARAMS.headroom_bits()


# --- the client's refusals -------------------------------------------------------------------------


def test_clients_refuse_a_context_with_the_secret_key() -> None:
    context = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[50, 50])
    context.global_scale = 2.0**46
    with pytest.raises(CryptoError, match="secret key"):
        Encryptor(bytes(32), context.serialize(save_secret_key=True))


def test_clients_refuse_updates_they_cannot_encode() -> None:
    keys, registry = enrol_clients([0, 1])
    holder = KeyHolder(PARAMS, registry, min_clients=2)
    announcement, signature = holder.open_round(0, 3)
    encryptor = Encryptor(holder.verify_key, holder.public_context)
    bound = RoundAnnouncement.from_bytes(announcement).bounds[1]
    for vector, weight, message in (
        (np.array([1.0, np.nan, 0.0]), 1.0, "non-finite"),
        (np.ones(3), 2.0**bound, "published weight bound"),
        (np.ones(3), -1.0, "published weight bound"),
        (np.ones(4), 1.0, "this client is in round 0 with 4"),
    ):
        with pytest.raises(CryptoError, match=message):
            encryptor.seal(Contribution(0, vector, weight), announcement, signature, keys[0])
