from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from privfl.errors import ConfigError, CryptoError
from privfl.fl.aggregate import Contribution, PlainSummation
from privfl.fl.secure import (
    HE_STANDARD_128_MAX_BITS,
    MAGIC_CONTRIBUTION,
    Aggregator,
    CkksParams,
    CkksSummation,
    Encryptor,
    KeyHolder,
    RangeOverflow,
    RoundSpec,
    _Header,
    _read_payload,
    _write_payload,
    encrypt_contribution,
    pack,
    packed_length,
    unpack,
)

PARAMS = CkksParams()
C = PARAMS.data_bits - 2 - PARAMS.global_scale_bits  # capacity bits of the default context


@pytest.fixture(scope="module")
def key_holder() -> KeyHolder:
    return KeyHolder(PARAMS)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| relative to max |want| (the brief's precision measure)."""
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-300))


def encrypted_sum(key_holder: KeyHolder, contributions: list[Contribution], spec: RoundSpec) -> bytes:
    """Clients -> aggregator -> the aggregate for the key holder; bytes only between them."""
    public = key_holder.public_context()
    aggregator = Aggregator(public, spec)
    for c in contributions:
        assert aggregator.add(c.client_id, encrypt_contribution(public, c, spec))
    return aggregator.result()


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
    with caplog.at_level(logging.WARNING, logger="privfl.fl.secure"):
        assert flagged.validate() is flagged
    assert "below 128-bit security" in caplog.text
    with pytest.raises(CryptoError, match="128-bit"):  # TenSEAL's SEAL build still refuses them
        KeyHolder(flagged)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"poly_modulus_degree": 3000}, "poly_modulus_degree=3000"),
        ({"coeff_mod_bit_sizes": (50,)}, "at least two primes"),
        ({"coeff_mod_bit_sizes": (50, 61)}, r"coeff_mod_bit_sizes\[1\]=61"),
        ({"global_scale_bits": 49}, "global_scale_bits=49"),
        ({"coeff_mod_bit_sizes": (30, 30), "global_scale_bits": 20}, "bits of precision"),
        ({"max_clients": 0}, "max_clients=0"),
        ({"calibration_bound_bits": (16, 6)}, "strictly increasing"),
        ({"margin_bits": 0}, "margin_bits=0"),
    ],
)
def test_bad_params_name_the_value_and_the_fix(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CkksParams(**overrides).validate()


# --- packing (plaintext, exact) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "vector",
    [
        np.zeros(7),
        -np.arange(1.0, 6.0),
        np.array([0.0, -0.0, 1e-300, -1e-300, 3.25, -127.0]),
        np.array([math.ldexp(1 - 2**-9, 7), -math.ldexp(1 - 2**-9, 7), 1.0]),  # just inside bound 8
        np.array([128.0, -5.0]),  # at the bound 2^(8-1): only the next copy carries it
        np.array([-math.ldexp(1 - 2**-9, 17), 2.0**-40]),  # near the top of the coarsest copy
    ],
)
def test_packing_round_trips_exactly_for_edge_values(vector: np.ndarray) -> None:
    bounds = (8, 18)
    packed = pack(vector, 3.0, bounds, C)
    assert packed.shape == (packed_length(vector.size, bounds),)
    out = unpack(packed, vector.size, bounds, C)
    assert np.array_equal(out.vector, vector)
    assert out.weight == 3.0 and out.magnitude == float(np.max(np.abs(vector)))
    assert out.bound_bits == (8 if out.magnitude < 2**7 * (1 - 2**-10) else 18)


def test_summed_packs_unpack_to_the_hand_computed_sum() -> None:
    a, b = np.array([1.5, -2.0]), np.array([0.25, 4.0])
    out = unpack(pack(a, 3.0, (4,), C) + pack(b, 1.0, (4,), C), 2, (4,), C)
    assert np.array_equal(out.vector, [1.75, 2.0])
    assert (out.weight, out.magnitude, out.bound_bits) == (4.0, 6.0, 4)


def test_a_magnitude_beyond_every_bound_is_an_overflow_not_a_wrong_sum() -> None:
    packed = pack(np.array([9.0, -1.0]), 1.0, (4,), C)  # 9 >= 2^3: the client sends zeros
    assert not packed[:2].any()
    with pytest.raises(RangeOverflow, match="bound_bits") as info:
        unpack(packed, 2, (4,), C)
    assert info.value.magnitude == 9.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.floats(-1e9, 1e9, allow_nan=False).filter(lambda v: v == 0 or abs(v) > 1e-250),
        min_size=1,
        max_size=40,
    ),
    st.one_of(st.just(0.0), st.floats(2.0**-50, 2.0**49)),  # sums below 2^-54 decode as 0
)
def test_packing_round_trips_exactly(values: list[float], weight: float) -> None:
    x = np.array(values)
    bounds = PARAMS.calibration_bound_bits + (40,)
    out = unpack(pack(x, weight, bounds, C), x.size, bounds, C)
    assert np.array_equal(out.vector, x) and out.weight == weight


# --- encrypted sums -----------------------------------------------------------------------------


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(1, 2600),
    k=st.integers(1, 4),
    exponent=st.integers(-12, 6),
    seed=st.integers(0, 2**32 - 1),
    fedavg=st.booleans(),
)
def test_decrypted_sum_equals_the_plaintext_weighted_sum(
    key_holder: KeyHolder, n: int, k: int, exponent: int, seed: int, fedavg: bool
) -> None:
    rng = np.random.default_rng(seed)
    weights = rng.integers(1, 500, size=k).astype(float) if fedavg else np.ones(k)
    contributions = [
        Contribution(i, rng.normal(size=n) * 2.0**exponent * w, w) for i, w in enumerate(weights)
    ]
    spec = RoundSpec(0, n, PARAMS.calibration_bound_bits)
    payload = encrypted_sum(key_holder, contributions, spec)
    plain = np.sum([c.vector for c in contributions], axis=0)
    out = key_holder.decrypt(payload, n)
    assert relative_error(out.vector, plain) <= 1e-6
    assert out.weight == pytest.approx(weights.sum(), rel=1e-6)
    assert out.count == k
    flat = key_holder.decrypt_sum(payload, n + 1)  # [sum of weighted updates..., sum of weights]
    assert flat.shape == (n + 1,) and relative_error(flat[:n], plain) <= 1e-6


def test_summation_matches_plain_summation_across_rounds_and_adapts_its_bound() -> None:
    rng = np.random.default_rng(7)
    secure, plain = CkksSummation(PARAMS, debug_check=True), PlainSummation()
    n = 3000
    for r, scale in enumerate([0.05, 0.04, 0.2]):
        for summation in (secure, plain):
            summation.begin_round(r, n)
        for cid in range(5):
            w = float(rng.integers(10, 100))
            c = Contribution(cid, rng.normal(0, scale, n) * w, w)
            secure.add(c)
            plain.add(c)
        got, want = secure.finish(), plain.finish()
        assert relative_error(got.vector, want.vector) <= 1e-6
        assert got.weight == pytest.approx(want.weight, rel=1e-6) and got.count == want.count == 5
        stats = got.stats
        assert stats["max_rel_error"] <= 1e-6 and stats["rejected"] == 0
        assert len(stats["he_bound_bits"]) == (4 if r == 0 else 1)  # calibration, then one adapted copy
        assert {"encrypt_s", "aggregate_s", "decrypt_s", "bytes_per_client"} <= stats.keys()


def test_debug_error_is_only_reported_when_asked() -> None:
    summation = CkksSummation(PARAMS)
    summation.begin_round(0, 4)
    summation.add(Contribution(0, np.ones(4), 1.0))
    assert "max_abs_error" not in summation.finish().stats


def test_tutorial_params_also_sum_correctly() -> None:
    params = CkksParams(poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 40, 60), global_scale_bits=40)
    rng = np.random.default_rng(1)
    contributions = [Contribution(i, rng.normal(size=500), 2.0) for i in range(3)]
    key_holder = KeyHolder(params)
    out = key_holder.decrypt(
        encrypted_sum(key_holder, contributions, RoundSpec(0, 500, params.calibration_bound_bits))
    )
    assert relative_error(out.vector, np.sum([c.vector for c in contributions], axis=0)) <= 1e-6


def test_steady_state_upload_is_at_most_30_bytes_per_parameter(key_holder: KeyHolder) -> None:
    n = 20 * 2048 - 24  # fills 20 ciphertexts exactly
    spec = RoundSpec(1, n, (4,))
    payload = encrypt_contribution(key_holder.public_context(), Contribution(0, np.full(n, 0.5), 1.0), spec)
    assert len(payload) / n <= 30


# --- roles never see what they must not ---------------------------------------------------------


def test_aggregator_holds_no_secret_key_and_no_plaintext(key_holder: KeyHolder) -> None:
    public = key_holder.public_context()
    assert not ts.context_from(public).is_private() and not ts.context_from(public).has_secret_key()
    spec = RoundSpec(0, 300, (8,))
    x = np.random.default_rng(3).normal(size=300)
    payload = encrypt_contribution(public, Contribution(0, x, 2.0), spec)
    assert x.tobytes()[:64] not in payload and np.ldexp(x, C - 8).tobytes()[:64] not in payload
    aggregator = Aggregator(public, spec)
    assert aggregator.add(0, payload)
    for name, value in vars(aggregator).items():
        assert not isinstance(value, np.ndarray | float), name
        if isinstance(value, ts.Context):
            assert not value.is_private() and not value.has_secret_key(), name
        if isinstance(value, list | tuple | set):  # ciphertexts, chunk sizes, client ids
            assert all(isinstance(v, ts.CKKSVector | int) for v in value), name
    with pytest.raises(ValueError):  # its own context cannot decrypt what it holds
        aggregator._sum[0].decrypt()


def test_aggregator_and_clients_refuse_a_context_with_the_secret_key() -> None:
    context = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[50, 50])
    context.global_scale = 2.0**46
    private = context.serialize(save_secret_key=True)
    with pytest.raises(CryptoError, match="secret key"):
        Aggregator(private, RoundSpec(0, 10, (8,)))
    with pytest.raises(CryptoError, match="secret key"):
        Encryptor(private)


def test_key_holder_decrypts_only_aggregates_of_enough_clients() -> None:
    key_holder = KeyHolder(PARAMS, min_clients=3)
    spec = RoundSpec(0, 20, (8,))
    contribution = encrypt_contribution(key_holder.public_context(), Contribution(0, np.ones(20), 1.0), spec)
    with pytest.raises(CryptoError, match="not a readable aggregate"):
        key_holder.decrypt(contribution)
    aggregator = Aggregator(key_holder.public_context(), spec)
    aggregator.add(0, contribution)
    aggregator.add(
        1, encrypt_contribution(key_holder.public_context(), Contribution(1, np.ones(20), 1.0), spec)
    )
    with pytest.raises(CryptoError, match="min_clients=3"):
        key_holder.decrypt(aggregator.result())


def test_fewer_than_min_clients_raises() -> None:
    summation = CkksSummation(PARAMS, min_clients=3)
    summation.begin_round(0, 10)
    for cid in range(2):
        summation.add(Contribution(cid, np.ones(10), 1.0))
    with pytest.raises(CryptoError, match=r"only 2 contribution\(s\).*min_clients=3"):
        summation.finish()


# --- bad bytes are rejected, the round goes on --------------------------------------------------


def rewrap(payload: bytes, **changes) -> bytes:
    """A payload with a valid digest but altered header fields or chunks (what an attacker could send)."""
    header, chunks = _read_payload(payload, MAGIC_CONTRIBUTION)
    chunks = changes.pop("chunks", chunks)
    fields = {**header.__dict__, "n_chunks": len(chunks), **changes}
    return _write_payload(_Header(**fields), chunks)


def test_bad_payloads_are_rejected_and_the_round_goes_on(
    key_holder: KeyHolder, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(5)
    n = 3000  # two ciphertexts per client
    spec = RoundSpec(0, n, (8,))
    public = key_holder.public_context()
    client = Encryptor(public)
    good = [Contribution(i, rng.normal(size=n), 1.0 + i) for i in range(3)]
    payloads = [client.encrypt(c, spec) for c in good]
    flipped = bytearray(payloads[0])
    flipped[len(flipped) // 2] ^= 0x01
    other = KeyHolder(PARAMS)
    big = KeyHolder(
        CkksParams(poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 40, 60), global_scale_bits=40)
    )
    big_chunks = _read_payload(Encryptor(big.public_context()).encrypt(good[0], spec), MAGIC_CONTRIBUTION)[1]
    chunks = _read_payload(payloads[0], MAGIC_CONTRIBUTION)[1]
    bad = {
        "tampered": bytes(flipped),
        "truncated": payloads[0][:-100],
        "garbage": b"not a payload at all",
        "empty": b"",
        "another key": Encryptor(other.public_context()).encrypt(good[0], spec),
        "another context's ciphertexts": rewrap(payloads[0], chunks=big_chunks[:2]),
        "undeserialisable chunk": rewrap(payloads[0], chunks=[chunks[0], rng.bytes(len(chunks[1]))]),
        "extra chunk": rewrap(payloads[0], chunks=chunks + chunks[:1]),
        "missing chunk": rewrap(payloads[0], chunks=chunks[:1]),
        "swapped chunks (wrong lengths)": rewrap(payloads[0], chunks=chunks[::-1]),
        "longer model": client.encrypt(
            Contribution(0, rng.normal(size=n + 1), 1.0), RoundSpec(0, n + 1, (8,))
        ),
        "more chunks": client.encrypt(
            Contribution(0, rng.normal(size=3 * n), 1.0), RoundSpec(0, 3 * n, (8,))
        ),
        "other round": client.encrypt(good[0], RoundSpec(1, n, (8,))),
        "other bounds": client.encrypt(good[0], RoundSpec(0, n, (9,))),
        "not bytes": np.ones(4),
    }
    aggregator = Aggregator(public, spec)
    for i, (name, payload) in enumerate(bad.items()):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="privfl.fl.secure"):
            assert aggregator.add(100 + i, payload) is False, name
        assert "rejected payload from client" in caplog.text, name
    assert aggregator.count == 0 and aggregator.rejected == len(bad)
    for c, payload in zip(good, payloads, strict=True):
        assert aggregator.add(c.client_id, payload)
    assert aggregator.add(0, payloads[0]) is False  # a second payload from client 0
    out = key_holder.decrypt(aggregator.result(), n)
    assert out.count == 3
    assert relative_error(out.vector, np.sum([c.vector for c in good], axis=0)) <= 1e-6
    assert out.weight == pytest.approx(6.0, rel=1e-9)


def test_reordered_chunks_are_caught_by_the_digest_only(
    key_holder: KeyHolder, caplog: pytest.LogCaptureFixture
) -> None:
    n = 2 * 2048 - 24  # two full ciphertexts: swapping them keeps every size check happy
    spec = RoundSpec(0, n, (8,))
    payload = encrypt_contribution(key_holder.public_context(), Contribution(0, np.arange(n) / n, 1.0), spec)
    header, chunks = _read_payload(payload, MAGIC_CONTRIBUTION)
    prefix_end = len(payload) - sum(len(c) for c in chunks) - 4 * len(chunks)  # header and digest
    resent = _write_payload(header, chunks[::-1])  # what _write_payload would send for swapped chunks
    swapped = payload[:prefix_end] + resent[prefix_end:]  # ...but under the original digest
    aggregator = Aggregator(key_holder.public_context(), spec)
    with caplog.at_level(logging.WARNING, logger="privfl.fl.secure"):
        assert aggregator.add(0, swapped) is False
    assert "digest mismatch" in caplog.text
    assert aggregator.add(1, resent)  # a consistent digest passes: a malicious client is not stopped


def test_clients_refuse_updates_they_cannot_encode(key_holder: KeyHolder) -> None:
    public, spec = key_holder.public_context(), RoundSpec(0, 3, (8,))
    for vector, weight, message in [
        (np.array([1.0, np.nan, 0.0]), 1.0, "non-finite"),
        (np.ones(3), -1.0, "weight"),
        (np.ones(4), 1.0, "shape"),
        (np.array([2.0**51, 0.0, 0.0]), 1.0, "2\\^50"),
    ]:
        with pytest.raises(CryptoError, match=message):
            encrypt_contribution(public, Contribution(0, vector, weight), spec)


# --- range overflow -----------------------------------------------------------------------------


def test_a_fixed_bound_too_small_raises_instead_of_returning_a_wrapped_sum() -> None:
    summation = CkksSummation(CkksParams(bound_bits=2))  # carries sum_k max|x_k| < 2
    summation.begin_round(0, 5)
    summation.add(Contribution(0, np.full(5, 1.5), 1.0))
    summation.add(Contribution(1, np.full(5, 1.5), 1.0))
    with pytest.raises(RangeOverflow, match="bound_bits"):
        summation.finish()


def test_a_sudden_jump_in_magnitude_fails_one_round_then_the_bound_adapts() -> None:
    summation = CkksSummation(PARAMS)
    rng = np.random.default_rng(2)
    for r, scale in enumerate([0.01, 10.0, 10.0]):  # 1000x growth: beyond the 2^(margin-1) tolerance
        summation.begin_round(r, 50)
        vectors = [rng.normal(0, scale, 50) for _ in range(3)]
        for cid, v in enumerate(vectors):
            summation.add(Contribution(cid, v, 1.0))
        if r == 1:
            with pytest.raises(RangeOverflow):
                summation.finish()
            continue
        assert relative_error(summation.finish().vector, np.sum(vectors, axis=0)) <= 1e-6


def test_a_resumed_ckks_run_keeps_its_adapted_bound(tiny_config, tmp_path) -> None:
    """Resume continues at the bound the uninterrupted run uses, not a fresh calibration round."""
    import json

    from privfl.experiment import train

    cfg = tiny_config.override({"secure.scheme": "ckks", "train.rounds": 3})
    train(cfg, tmp_path / "full")
    train(cfg.override({"train.rounds": 1}), tmp_path / "part")
    train(cfg, resume=tmp_path / "part")

    def rows(run):
        return [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    full, resumed = rows("full"), rows("part")
    assert [r["he_bound_bits"] for r in resumed] == [r["he_bound_bits"] for r in full]
    assert (
        len(full[0]["he_bound_bits"]) > 1 and len(full[1]["he_bound_bits"]) == 1
    )  # calibration, then adapted
    # ciphertext sizes vary by a few bytes with the encryption randomness; a recalibration would cost 4x
    assert all(
        abs(a["bytes_up"] - b["bytes_up"]) <= 1e-3 * b["bytes_up"] for a, b in zip(resumed, full, strict=True)
    )
