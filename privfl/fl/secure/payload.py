"""The wire format of contributions and aggregates, and the context facts every role derives alike."""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import tenseal as ts

from privfl.errors import CryptoError

FORMAT_VERSION = 1
MAGIC_CONTRIBUTION = b"PFC1"
MAGIC_AGGREGATE = b"PFA1"
_DIGEST_BYTES = 16
_PREFIX = struct.Struct("<4sHB16sIIIII")  # magic, version, n_bounds, fingerprint, round, n_params,
#                                           n_values, n_chunks, count


@dataclass(frozen=True)
class _Header:
    magic: bytes
    fingerprint: bytes
    round_index: int
    n_params: int
    n_values: int
    n_chunks: int
    count: int
    bound_bits: tuple[int, ...]


class _Rejected(Exception):
    """Internal: a payload failed a check; the message is the logged reason."""


def _write_payload(header: _Header, chunks: list[bytes]) -> bytes:
    """Header (format version, context fingerprint, sizes, bounds), blake2b digest, chunk lengths, chunks."""
    head = _PREFIX.pack(
        header.magic,
        FORMAT_VERSION,
        len(header.bound_bits),
        header.fingerprint,
        header.round_index,
        header.n_params,
        header.n_values,
        header.n_chunks,
        header.count,
    ) + struct.pack(f"<{len(header.bound_bits)}h", *header.bound_bits)
    table = struct.pack(f"<{len(chunks)}I", *(len(c) for c in chunks))
    digest = _digest(head, table, *chunks)
    return b"".join([head, digest, table, *chunks])


def _digest(*parts: bytes | memoryview) -> bytes:
    h = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    for part in parts:
        h.update(part)
    return h.digest()


def _read_payload(payload: bytes, magic: bytes) -> tuple[_Header, list[bytes]]:
    """Parse and integrity-check a payload; raises _Rejected with the reason."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise _Rejected(f"payload is {type(payload).__name__}, not bytes")
    payload = memoryview(payload).cast("B")
    if len(payload) < _PREFIX.size:
        raise _Rejected(f"payload of {len(payload)} bytes is shorter than the {_PREFIX.size}-byte header")
    got_magic, version, n_bounds, fingerprint, round_index, n_params, n_values, n_chunks, count = (
        _PREFIX.unpack_from(payload)
    )
    if bytes(got_magic) != magic:
        raise _Rejected(f"payload tag {got_magic!r} is not {magic!r}")
    if version != FORMAT_VERSION:
        raise _Rejected(f"format version {version}, expected {FORMAT_VERSION}")
    pos = _PREFIX.size
    need = pos + 2 * n_bounds + _DIGEST_BYTES + 4 * n_chunks
    if len(payload) < need:
        raise _Rejected(f"payload of {len(payload)} bytes is truncated (header alone needs {need})")
    bound_bits = struct.unpack_from(f"<{n_bounds}h", payload, pos)
    pos += 2 * n_bounds
    head = payload[:pos]
    digest = payload[pos : pos + _DIGEST_BYTES]
    pos += _DIGEST_BYTES
    lengths = struct.unpack_from(f"<{n_chunks}I", payload, pos)
    table = payload[pos : pos + 4 * n_chunks]
    pos += 4 * n_chunks
    body = payload[pos:]
    if sum(lengths) != len(body):
        raise _Rejected(f"chunk table announces {sum(lengths)} bytes of ciphertext, payload has {len(body)}")
    if _digest(head, table, body) != digest:
        raise _Rejected("digest mismatch: the payload was altered or corrupted in transit")
    chunks, start = [], 0
    for length in lengths:
        chunks.append(bytes(body[start : start + length]))
        start += length
    header = _Header(
        magic, bytes(fingerprint), round_index, n_params, n_values, n_chunks, count, tuple(bound_bits)
    )
    return header, chunks


def context_fingerprint(context_bytes: bytes) -> bytes:
    """16-byte blake2b of a serialised public context: names the key a ciphertext belongs to."""
    return hashlib.blake2b(context_bytes, digest_size=_DIGEST_BYTES).digest()


@dataclass(frozen=True)
class _Geometry:
    """Facts about a CKKS context every role derives the same way."""

    slots: int
    data_bits: int
    scale: float
    parms_id: object

    @property
    def capacity_bits(self) -> int:
        return self.data_bits - 2 - (math.frexp(self.scale)[1] - 1)

    @classmethod
    def of(cls, context: ts.Context) -> _Geometry:
        seal = context.seal_context().data
        first = seal.first_context_data()
        parms = first.parms()
        if parms.scheme() != ts.SCHEME_TYPE.CKKS.value:
            raise CryptoError(f"the context uses {parms.scheme()}, secure aggregation needs CKKS")
        try:
            scale = float(context.global_scale)
        except ValueError as exc:
            raise CryptoError("the context has no global scale; build it with KeyHolder") from exc
        if math.frexp(scale)[0] != 0.5:
            raise CryptoError(
                f"the context's global scale {scale} is not a power of two; build it with KeyHolder"
            )
        return cls(
            parms.poly_modulus_degree() // 2, first.total_coeff_modulus_bit_count(), scale, first.parms_id()
        )

    def chunk_sizes(self, n_values: int) -> list[int]:
        return [min(self.slots, n_values - start) for start in range(0, n_values, self.slots)]


def _load_public_context(public_context: bytes, role: str) -> ts.Context:
    """Deserialise a public context; refuse one that carries a secret key."""
    if not isinstance(public_context, bytes | bytearray):
        raise CryptoError(
            f"{role} takes the public context as bytes (KeyHolder.public_context()), got "
            f"{type(public_context).__name__}"
        )
    try:
        context = ts.context_from(bytes(public_context))
    except Exception as exc:  # TenSEAL raises several types for malformed input
        raise CryptoError(f"{role}: the public context bytes do not deserialise ({exc})") from exc
    if context.is_private() or context.has_secret_key():
        raise CryptoError(
            f"{role} was given a context that carries the secret key; only the key holder may hold it: "
            "pass KeyHolder.public_context()"
        )
    return context


def _load_chunk(
    context: ts.Context, geometry: _Geometry, index: int, data: bytes, size: int
) -> ts.CKKSVector:
    """Deserialise chunk `index` and check it belongs to this context and layout; raises _Rejected."""
    try:
        vector = ts.ckks_vector_from(context, data)
        ciphertext = vector.ciphertext()[0]
    except Exception as exc:  # SEAL/protobuf raise ValueError, RuntimeError, TypeError on bad bytes
        raise _Rejected(
            f"chunk {index} does not deserialise as a CKKS ciphertext of this context ({exc})"
        ) from exc
    if vector.size() != size:
        raise _Rejected(f"chunk {index} holds {vector.size()} values, the layout needs {size}")
    if ciphertext.parms_id() != geometry.parms_id or ciphertext.size() != 2:
        raise _Rejected(f"chunk {index} is not a fresh ciphertext at this context's data level")
    if ciphertext.scale != geometry.scale:
        raise _Rejected(f"chunk {index} has scale {ciphertext.scale}, the context uses {geometry.scale}")
    return vector
