"""The key holder's pieces without a process: packing, frames, announcements, enrolment files."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfl.config import CkksParams
from privfl.errors import CryptoError
from privfl.fl.secure.enrolment import SigningKey, read_registry, verify, write_registry
from privfl.fl.secure.keyholder import RoundAnnouncement
from privfl.fl.secure.packing import pack_one, unpack_sum
from privfl.fl.secure.service import decode_frame, encode_frame


@settings(max_examples=60, deadline=None)
@given(
    st.lists(  # far from subnormals, where scaling by 2^-40 would drop bits
        st.floats(-1e3, 1e3, allow_nan=False).filter(lambda v: v == 0 or abs(v) > 1e-200),
        min_size=1,
        max_size=40,
    ),
    st.floats(0.0, 1e3).filter(lambda v: v == 0 or v > 1e-200),
    st.integers(-20, 40),
)
def test_pack_then_unpack_is_exact_or_clamped(values, weight, b):
    x = np.array(values)
    bounds, k, capacity = (b, 30), 4, 2
    packed, clamped = pack_one(x, weight, bounds, k, capacity)
    assert packed.shape == (x.size + 1,)  # one value per parameter and the weight: no copies
    vector, w = unpack_sum(packed, x.size, bounds, capacity)
    limit = math.ldexp(1.0, b - 1) / k
    np.testing.assert_array_equal(vector, np.clip(x, -limit, limit))  # powers of two: exact
    assert w == weight and clamped == bool(np.max(np.abs(x)) > limit)


def test_a_weight_beyond_the_published_bound_is_a_client_fault():
    with pytest.raises(CryptoError, match="published weight bound"):
        pack_one(np.zeros(3), 2.0**20, (10, 20), 4, 2)
    with pytest.raises(CryptoError, match="published weight bound"):
        pack_one(np.zeros(3), -1.0, (10, 20), 4, 2)


def test_bounds_adapt_to_the_released_sum_only():
    p = CkksParams(max_clients=10, margin_bits=5)
    assert p.next_bounds((16, 20), 3.0, 500.0) == (2 + 4 + 5, 9 + 4 + 5)
    assert p.next_bounds((16, 20), 0.0, 0.0) == (16, 20)  # nothing to adapt to
    assert CkksParams(adapt_bounds=False).next_bounds((16, 20), 1e6, 1e6) == (16, 20)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_frames_are_refused_with_a_crypto_error(data):
    for frame in (data, b"PFK1" + data):
        try:
            decode_frame(frame)
        except CryptoError:
            pass


def test_frames_round_trip():
    fields, blobs = decode_frame(encode_frame({"op": "submit", "round": 3}, {"a": b"xyz", "b": b""}))
    assert fields == {"op": "submit", "round": 3} and blobs == {"a": b"xyz", "b": b""}
    with pytest.raises(CryptoError, match="announce"):
        decode_frame(encode_frame({"op": "x"}, {"a": b"xyz"}) + b"extra")


def test_announcement_round_trips_and_refuses_other_bytes():
    ann = RoundAnnouncement(bytes(range(16)), 7, 1000, 5, (12, -3), bytes(16))
    assert RoundAnnouncement.from_bytes(ann.to_bytes()) == ann
    with pytest.raises(CryptoError):
        RoundAnnouncement.from_bytes(ann.to_bytes()[:-1])


def test_signing_keys_and_registry(tmp_path):
    key = SigningKey.load_or_create(tmp_path / "k" / "client.key")
    assert (tmp_path / "k" / "client.key").stat().st_mode & 0o777 == 0o600
    assert SigningKey.load(tmp_path / "k" / "client.key").public_bytes() == key.public_bytes()
    sig = key.sign(b"m")
    assert verify(key.public_bytes(), b"m", sig) and not verify(key.public_bytes(), b"n", sig)
    other = SigningKey.generate()
    write_registry(tmp_path / "r.json", {0: key.public_bytes(), 1: other.public_bytes()})
    assert read_registry(tmp_path / "r.json") == {0: key.public_bytes(), 1: other.public_bytes()}
    write_registry(tmp_path / "dup.json", {0: key.public_bytes(), 1: key.public_bytes()})
    with pytest.raises(CryptoError, match="share one public key"):
        read_registry(tmp_path / "dup.json")
    (tmp_path / "bad.json").write_text('{"format": 1, "clients": {"0": "zz"}}')
    with pytest.raises(CryptoError, match="not a client id and hex key"):
        read_registry(tmp_path / "bad.json")


def test_the_key_holder_process_starts_without_torch():
    import subprocess
    import sys

    code = "import sys, privfl.keyholder_cli, privfl.fl.secure.service; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # a small process: the secret key and little else
