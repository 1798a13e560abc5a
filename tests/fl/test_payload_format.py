"""The wire format's refusals, each with the reason the key holder logs, and the context checks."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import pytest
import tenseal as ts

from privfl.config import CkksParams
from privfl.errors import CryptoError
from privfl.fl.secure.payload import (
    _PREFIX,
    FORMAT_VERSION,
    _Geometry,
    _Header,
    _load_chunk,
    _load_public_context,
    _read_payload,
    _Rejected,
    _write_payload,
    context_fingerprint,
)

PARAMS = CkksParams()
HEADER = _Header(b"PFC1", bytes(range(16)), 7, 5, 6, 3, 1, (12, -3))
CHUNKS = [b"abc", b"defgh", b"ij"]


def private_context(scale_bits: int | None = PARAMS.global_scale_bits) -> ts.Context:
    context = ts.context(
        ts.SCHEME_TYPE.CKKS, PARAMS.poly_modulus_degree, coeff_mod_bit_sizes=list(PARAMS.coeff_mod_bit_sizes)
    )
    if scale_bits is not None:
        context.global_scale = math.ldexp(1.0, scale_bits)
    return context


def rejected(payload, magic: bytes = b"PFC1") -> str:
    with pytest.raises(_Rejected) as info:
        _read_payload(payload, magic)
    return str(info.value)


def test_a_written_payload_reads_back_to_its_header_and_chunks():
    header, chunks = _read_payload(_write_payload(HEADER, CHUNKS), b"PFC1")
    assert header == HEADER and chunks == CHUNKS
    empty = dataclasses.replace(HEADER, n_chunks=0, bound_bits=())
    header, chunks = _read_payload(bytearray(_write_payload(empty, [])), b"PFC1")
    assert header == empty and chunks == []


def test_each_malformed_payload_is_refused_with_its_reason():
    good = _write_payload(HEADER, CHUNKS)
    need = _PREFIX.size + 2 * 2 + 16 + 4 * 3  # two bounds, digest, three chunk lengths
    assert rejected("PFC1") == "payload is str, not bytes"
    assert rejected(good[:10]) == f"payload of 10 bytes is shorter than the {_PREFIX.size}-byte header"
    assert rejected(good, b"PFA1") == "payload tag b'PFC1' is not b'PFA1'"
    wrong_version = good[:4] + (FORMAT_VERSION + 1).to_bytes(2, "little") + good[6:]
    assert rejected(wrong_version) == f"format version {FORMAT_VERSION + 1}, expected {FORMAT_VERSION}"
    assert (
        rejected(good[: need - 1]) == f"payload of {need - 1} bytes is truncated (header alone needs {need})"
    )
    assert rejected(good[:need]) == "chunk table announces 10 bytes of ciphertext, payload has 0"
    assert rejected(good + b"k") == "chunk table announces 10 bytes of ciphertext, payload has 11"
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    assert rejected(tampered) == "digest mismatch: the payload was altered or corrupted in transit"


def test_a_bare_header_is_truncated_not_short():
    """Exactly the fixed header, nothing after it: the digest is missing."""
    bare = _write_payload(_Header(b"PFC1", bytes(16), 0, 0, 0, 0, 0, ()), [])[: _PREFIX.size]
    assert (
        rejected(bare)
        == f"payload of {_PREFIX.size} bytes is truncated (header alone needs {_PREFIX.size + 16})"
    )


def test_the_fingerprint_names_the_context_bytes():
    a = private_context().serialize(save_secret_key=False)
    b = private_context().serialize(save_secret_key=False)  # fresh keys: another context
    assert context_fingerprint(a) == hashlib.blake2b(a, digest_size=16).digest()
    assert context_fingerprint(a) != context_fingerprint(b) and len(context_fingerprint(a)) == 16


def test_a_public_context_is_refused_unless_it_is_public_bytes():
    with pytest.raises(
        CryptoError,
        match=r"^client takes the public context as bytes \(KeyHolder\.public_context\(\)\), got str$",
    ):
        _load_public_context("context", "client")
    with pytest.raises(CryptoError, match=r"^relay: the public context bytes do not deserialise \(.+\)$"):
        _load_public_context(b"not a context", "relay")
    secret = private_context().serialize(save_secret_key=True)
    with pytest.raises(
        CryptoError,
        match=r"^client was given a context that carries the secret key; only the key holder may hold it: "
        r"pass KeyHolder\.public_context\(\)$",
    ):
        _load_public_context(secret, "client")
    public = _load_public_context(private_context().serialize(save_secret_key=False), "client")
    assert not public.has_secret_key()


def test_geometry_needs_ckks_with_a_power_of_two_scale():
    g = _Geometry.of(private_context())
    assert g.slots == PARAMS.poly_modulus_degree // 2
    assert g.capacity_bits == sum(PARAMS.coeff_mod_bit_sizes[:-1]) - 2 - PARAMS.global_scale_bits
    bfv = ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=1032193)
    with pytest.raises(
        CryptoError, match=r"^the context uses SCHEME_TYPE\.BFV, secure aggregation needs CKKS$"
    ):
        _Geometry.of(bfv)
    with pytest.raises(CryptoError, match="^the context has no global scale; build it with KeyHolder$"):
        _Geometry.of(private_context(scale_bits=None))
    odd = private_context()
    odd.global_scale = 3.0 * 2**20
    with pytest.raises(
        CryptoError,
        match=r"^the context's global scale 3145728\.0 is not a power of two; build it with KeyHolder$",
    ):
        _Geometry.of(odd)


def test_a_chunk_must_be_a_fresh_ciphertext_of_this_context_layout_and_scale():
    context = private_context()
    geometry = _Geometry.of(context)
    fresh = ts.ckks_vector(context, [1.0, 2.0]).serialize()
    assert _load_chunk(context, geometry, 0, fresh, 2).decrypt() == pytest.approx([1.0, 2.0], abs=1e-6)
    with pytest.raises(
        _Rejected, match=r"^chunk 1 does not deserialise as a CKKS ciphertext of this context \(.+\)$"
    ):
        _load_chunk(context, geometry, 1, b"garbage", 2)
    with pytest.raises(_Rejected, match="^chunk 0 holds 2 values, the layout needs 3$"):
        _load_chunk(context, geometry, 0, fresh, 3)
    low = ts.ckks_vector(context, [1.0, 2.0], scale=2.0**20)
    with pytest.raises(_Rejected, match=rf"^chunk 2 has scale {2.0**20}, the context uses {geometry.scale}$"):
        _load_chunk(context, geometry, 2, low.serialize(), 2)
    context.auto_relin, context.auto_rescale = False, False
    squared = low * low  # three polynomials, not relinearised: no fresh encryption looks like this
    assert squared.ciphertext()[0].size() == 3
    with pytest.raises(_Rejected, match="^chunk 3 is not a fresh ciphertext at this context's data level$"):
        _load_chunk(context, geometry, 3, squared.serialize(), 2)
