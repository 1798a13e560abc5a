"""CKKS secure aggregation (TenSEAL): the server adds client updates it cannot read.

Three roles, which exchange bytes only:

  KeyHolder   builds the CKKS keys from `CkksParams`, publishes a public context (public key, no
              secret key), and decrypts only the round's aggregate.
  Encryptor   (a client) packs its `Contribution` at the round's public bounds, encrypts it with the
              public key and serialises it behind a checked header.
  Aggregator  (the server) holds the public context only; checks each payload and adds it into a
              running sum of ciphertexts (memory flat in the number of clients).

`CkksSummation` plays all three in one process behind aggregate.py's `Summation` protocol.

Range packing. A CKKS slot carries a real number with an absolute error set by the encryption
noise, and wraps around when the sum outgrows the ciphertext modulus. One data prime of ~50 bits
keeps a payload at ~29 bytes per parameter but leaves ~34 bits per slot, so the values are scaled
by a public power of two chosen for the round: copy j of the vector is x * 2^(C - b_j), where C is
the capacity of the context (data bits - 2 - scale bits) and 2^(b_j - 1) is the largest |x| (and
|sum|) the copy carries; a client whose values do not fit a copy sends zeros there. Beside the
vector each client packs its weight and its magnitude m_k = max_i |x_k,i|, each in copies at
bounds 2^-24 .. 2^64 (`META_BOUND_BITS`); the key holder decodes those from the coarsest copy down
and uses M = sum_k m_k, which bounds every client and every slot of the sum, to pick the finest
vector copy that certainly neither wrapped nor lost a client. The first round packs the vector at
a few calibration bounds; later rounds use one copy at 2^margin times the previous round's M.
Scaling by powers of two is exact, so packing round-trips bit for bit; only CKKS adds error.
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
import time
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from privfl.errors import ConfigError, CryptoError
from privfl.fl.aggregate import Contribution, SumResult

log = logging.getLogger(__name__)

# HomomorphicEncryption.org standard, 128-bit classical security, ternary secret: the largest
# total coefficient modulus (bits, all primes including the special one) for each ring degree N.
HE_STANDARD_128_MAX_BITS: dict[int, int] = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}

# Bounds (log2) at which the weight and the magnitude are packed: 12 copies, 8 bits apart.
META_BOUND_BITS: tuple[int, ...] = tuple(range(-24, 65, 8))
FORMAT_VERSION = 1
MAGIC_CONTRIBUTION = b"PFC1"
MAGIC_AGGREGATE = b"PFA1"
PRECISION_TARGET_BITS = 20  # 2^-20 ~ 1e-6 relative
_PICK_SLACK = 1.0 - 2.0**-10  # a copy is used only when its bound clears the estimate by this factor
_MAX_BOUND_BITS = 1000
_CLIENT_LIMIT = 2.0**50  # per-client weight and max|x|: the coarsest META copy cannot wrap below 2^15 clients
_DIGEST_BYTES = 16
_PREFIX = struct.Struct("<4sHB16sIIIII")  # magic, version, n_bounds, fingerprint, round, n_params,
#                                           n_values, n_chunks, count


def _noise_bits(poly_modulus_degree: int, n_clients: int) -> float:
    """log2 of the slot error of a sum of n fresh encryptions, in units of the scale (measured:
    fresh max ~1.1 N at N=4096 and ~1.4 N at N=8192; independent noises add like sqrt(n))."""
    return math.log2(poly_modulus_degree) + 1.0 + 0.5 * math.log2(max(n_clients, 1))


@dataclass(frozen=True)
class CkksParams:
    """CKKS parameters and the range-packing policy.

    poly_modulus_degree: ring degree N; N/2 values per ciphertext.
    coeff_mod_bit_sizes: prime sizes; all but the last (the special prime) carry data. One data
        prime is enough for addition: (50, 50) at N=4096 gives ~29 bytes per parameter.
    global_scale_bits: log2 of the CKKS scale; with range packing it only fixes C = data bits - 2
        - scale bits, the headroom above the packed values.
    insecure: allow a modulus larger than the 128-bit standard allows (tests only; the TenSEAL
        build itself still enforces 128-bit SEAL parameters).
    max_clients: contributions per round the precision budget (and the aggregator) allows.
    bound_bits: a fixed public bound 2^(bound_bits-1) on sum_k max|x_k| for every round (no
        calibration, no adaptation); None adapts to the previous round.
    calibration_bound_bits: the bounds packed in the first round (or while nothing is known).
    margin_bits: later rounds use bound = ceil(log2 M_prev) + margin_bits (tolerates 2^(margin-1)x
        growth of M between rounds).
    """

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (50, 50)
    global_scale_bits: int = 46
    insecure: bool = False
    max_clients: int = 256
    bound_bits: int | None = None
    calibration_bound_bits: tuple[int, ...] = (-4, 6, 16, 26)
    margin_bits: int = 5

    @property
    def data_bits(self) -> int:
        """Bits of the modulus ciphertexts are encrypted at (all primes but the special one)."""
        return int(sum(self.coeff_mod_bit_sizes[:-1]))

    def precision_bits(self) -> float:
        """Worst-case bits of precision relative to M at max_clients, over calibration and adapted
        rounds (the larger of the calibration spacing and the margin costs bits)."""
        cal = self.calibration_bound_bits
        spacing = max((b - a for a, b in zip(cal, cal[1:], strict=False)), default=0)
        slack = max(spacing, self.margin_bits) + 1
        return self.data_bits - 2 - _noise_bits(self.poly_modulus_degree, self.max_clients) - slack

    def validate(self) -> CkksParams:
        """Check security (HE standard table), moduli, scale and precision; returns self."""
        n = self.poly_modulus_degree
        if n not in HE_STANDARD_128_MAX_BITS:
            raise ConfigError(
                f"poly_modulus_degree={n} is not one of {sorted(HE_STANDARD_128_MAX_BITS)}; use 4096 or 8192"
            )
        bits = tuple(self.coeff_mod_bit_sizes)
        if len(bits) < 2:
            raise ConfigError(
                f"coeff_mod_bit_sizes={bits} needs at least two primes (the data prime(s) and the special "
                "prime TenSEAL keeps for key switching), e.g. (50, 50)"
            )
        for i, b in enumerate(bits):
            if not isinstance(b, int) or not 20 <= b <= 60:
                raise ConfigError(
                    f"coeff_mod_bit_sizes[{i}]={b!r} is outside the 20..60 bits SEAL can generate"
                )
        total, limit = sum(bits), HE_STANDARD_128_MAX_BITS[n]
        if total > limit:
            fits = [d for d, m in sorted(HE_STANDARD_128_MAX_BITS.items()) if m >= total]
            msg = (
                f"coeff_mod_bit_sizes={bits} totals {total} bits, above the {limit} bits the "
                f"HomomorphicEncryption.org standard allows at poly_modulus_degree={n} for 128-bit security"
            )
            if not self.insecure:
                fix = f"raise poly_modulus_degree to {fits[0]}" if fits else "use fewer or smaller primes"
                raise ConfigError(
                    f"{msg}; drop or shrink primes, {fix}, or pass insecure=True (--insecure-he) for tests"
                )
            log.warning("%s; insecure=True, continuing below 128-bit security", msg)
        s = self.global_scale_bits
        if not isinstance(s, int) or not 20 <= s <= self.data_bits - 2:
            raise ConfigError(
                f"global_scale_bits={s!r} must be in 20..{self.data_bits - 2}: the packed values need 2 bits "
                f"below the {self.data_bits}-bit data modulus (all primes but the last)"
            )
        if not isinstance(self.max_clients, int) or self.max_clients < 1:
            raise ConfigError(f"max_clients={self.max_clients!r} must be a positive integer")
        if not isinstance(self.margin_bits, int) or not 1 <= self.margin_bits <= 16:
            raise ConfigError(f"margin_bits={self.margin_bits!r} must be an integer in 1..16 (default 5)")
        cal = tuple(self.calibration_bound_bits)
        if (
            not cal
            or any(not isinstance(b, int) or abs(b) > _MAX_BOUND_BITS for b in cal)
            or list(cal) != sorted(set(cal))
        ):
            raise ConfigError(
                f"calibration_bound_bits={cal} must be strictly increasing integers "
                f"within +-{_MAX_BOUND_BITS}, "
                "e.g. (-4, 6, 16, 26)"
            )
        if self.bound_bits is not None and (
            not isinstance(self.bound_bits, int) or abs(self.bound_bits) > 900
        ):
            raise ConfigError(f"bound_bits={self.bound_bits!r} must be None or an integer within +-900")
        precision = self.precision_bits()
        if precision < PRECISION_TARGET_BITS:
            raise ConfigError(
                f"these parameters leave {precision:.1f} bits of precision relative to the round's update "
                f"magnitude at max_clients={self.max_clients} (need >= {PRECISION_TARGET_BITS}, i.e. 1e-6): "
                "use a larger data prime (e.g. coeff_mod_bit_sizes=(50, 50)), a smaller max_clients or "
                "margin_bits, "
                "or calibration_bound_bits spaced closer together"
            )
        return self


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


# --- packing (pure functions) -------------------------------------------------------------------


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


# --- wire format --------------------------------------------------------------------------------


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


# --- roles --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecryptedSum:
    """What the key holder recovers: sums over the accepted clients and the public magnitude M."""

    vector: np.ndarray
    weight: float
    magnitude: float
    count: int
    bound_bits: int


class KeyHolder:
    """Owns the secret key; publishes the public context and decrypts only round aggregates."""

    def __init__(self, params: CkksParams, *, min_clients: int = 1) -> None:
        params.validate()
        if not isinstance(min_clients, int) or min_clients < 1:
            raise ConfigError(f"min_clients={min_clients!r} must be a positive integer")
        self.params = params
        self.min_clients = min_clients
        try:
            self._context = ts.context(
                ts.SCHEME_TYPE.CKKS,
                params.poly_modulus_degree,
                coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
            )
        except ValueError as exc:
            raise CryptoError(
                f"TenSEAL refused poly_modulus_degree={params.poly_modulus_degree}, coeff_mod_bit_sizes="
                f"{params.coeff_mod_bit_sizes} ({exc}); its SEAL build enforces 128-bit parameters even with "
                "insecure=True: use a secure combination"
            ) from exc
        self._context.global_scale = math.ldexp(1.0, params.global_scale_bits)
        self._geometry = _Geometry.of(self._context)
        self._public = self._context.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )
        self.fingerprint = context_fingerprint(self._public)

    def public_context(self) -> bytes:
        """The context for clients and aggregator: parameters, scale and public key, no secret key."""
        return self._public

    def decrypt(self, payload: bytes, n_params: int | None = None) -> DecryptedSum:
        """Decrypt an aggregate from `Aggregator.result()`; refuses contributions, other keys and
        aggregates of fewer than min_clients."""
        try:
            header, chunks = _read_payload(payload, MAGIC_AGGREGATE)
        except _Rejected as exc:
            raise CryptoError(f"not a readable aggregate: {exc}") from exc
        if header.fingerprint != self.fingerprint:
            raise CryptoError("the aggregate was encrypted under another key (context fingerprint mismatch)")
        if header.count < self.min_clients:
            raise CryptoError(
                f"the aggregate sums {header.count} contribution(s), fewer than "
                f"min_clients={self.min_clients}; "
                "refusing to decrypt what could be a single client's update"
            )
        if n_params is not None and header.n_params != n_params:
            raise CryptoError(f"the aggregate has {header.n_params} parameters, expected {n_params}")
        spec = RoundSpec(header.round_index, header.n_params, header.bound_bits)
        sizes = self._geometry.chunk_sizes(spec.n_values)
        if header.n_values != spec.n_values or len(chunks) != len(sizes) or not header.bound_bits:
            raise CryptoError(
                f"aggregate layout ({header.n_values} values, {len(chunks)} chunks) does not "
                f"match {header.n_params} parameters at bounds {header.bound_bits}"
            )
        values = np.empty(spec.n_values)
        start = 0
        for i, (data, size) in enumerate(zip(chunks, sizes, strict=True)):
            try:
                vector = _load_chunk(self._context, self._geometry, i, data, size)
            except _Rejected as exc:
                raise CryptoError(f"aggregate rejected: {exc}") from exc
            values[start : start + size] = vector.decrypt()
            start += size
        out = unpack(values, spec.n_params, spec.bound_bits, self._geometry.capacity_bits)
        return DecryptedSum(out.vector, out.weight, out.magnitude, header.count, out.bound_bits)

    def decrypt_sum(self, payload: bytes, expected_length: int) -> np.ndarray:
        """float64 [expected_length] = [sum_k weight_k*update_k ..., sum_k weight_k]."""
        result = self.decrypt(payload, expected_length - 1)
        return np.concatenate([result.vector, [result.weight]])


class Encryptor:
    """The client side: packs a Contribution at the round's bounds and encrypts it with the public key."""

    def __init__(self, public_context: bytes) -> None:
        self._context = _load_public_context(public_context, "Encryptor")
        self._geometry = _Geometry.of(self._context)
        self.fingerprint = context_fingerprint(bytes(public_context))

    def encrypt(self, contribution: Contribution, spec: RoundSpec) -> bytes:
        """Payload bytes for the aggregator: header + one serialised ciphertext per slot-sized chunk."""
        x = np.asarray(contribution.vector, dtype=np.float64)
        if x.ndim != 1 or x.shape[0] != spec.n_params:
            raise CryptoError(
                f"client {contribution.client_id} sent a vector of shape {x.shape}, "
                f"the model has {spec.n_params} values"
            )
        if not np.all(np.isfinite(x)):
            raise CryptoError(
                f"client {contribution.client_id}'s update has non-finite values; nothing was encrypted"
            )
        weight = float(contribution.weight)
        if not (math.isfinite(weight) and 0.0 <= weight < _CLIENT_LIMIT):
            raise CryptoError(
                f"client {contribution.client_id}'s weight {weight} must be finite, >= 0 and < 2^50"
            )
        if x.size and float(np.max(np.abs(x))) >= _CLIENT_LIMIT:
            raise CryptoError(
                f"client {contribution.client_id}'s update reaches |x| >= 2^50; nothing was encrypted"
            )
        values = pack(x, weight, spec.bound_bits, self._geometry.capacity_bits)
        slots, scale = self._geometry.slots, self._geometry.scale
        chunks = [
            ts.ckks_vector(self._context, values[start : start + slots], scale).serialize()
            for start in range(0, values.shape[0], slots)
        ]
        header = _Header(
            MAGIC_CONTRIBUTION,
            self.fingerprint,
            spec.round_index,
            spec.n_params,
            spec.n_values,
            len(chunks),
            1,
            spec.bound_bits,
        )
        return _write_payload(header, chunks)


def encrypt_contribution(
    public_context: bytes, contribution: Contribution, spec: RoundSpec | None = None
) -> bytes:
    """Encrypt one contribution (client side). spec defaults to round 0 at the default calibration bounds."""
    if spec is None:
        spec = RoundSpec(
            0, int(np.asarray(contribution.vector).shape[0]), CkksParams().calibration_bound_bits
        )
    return Encryptor(public_context).encrypt(contribution, spec)


class Aggregator:
    """The server: adds checked ciphertexts into a running sum; never sees a key or a plaintext.

    Holds one model's worth of ciphertexts however many clients arrive (plus, while checking a
    payload, that payload's ciphertexts), and the ids seen this round to refuse duplicates.
    """

    def __init__(self, public_context: bytes, spec: RoundSpec, *, max_clients: int | None = None) -> None:
        self._context = _load_public_context(public_context, "Aggregator")
        self._geometry = _Geometry.of(self._context)
        self._fingerprint = context_fingerprint(bytes(public_context))
        self.spec = spec
        self._sizes = self._geometry.chunk_sizes(spec.n_values)
        self._max_clients = max_clients
        self._sum: list[ts.CKKSVector] | None = None
        self._seen: set[int] = set()
        self.count = 0
        self.rejected = 0

    def add(self, client_id: int, payload: bytes) -> bool:
        """Check one client's payload and add it to the sum; False (logged) when it is refused."""
        try:
            vectors = self._check(client_id, payload)
        except _Rejected as exc:
            self.rejected += 1
            log.warning(
                "round %d: rejected payload from client %s: %s", self.spec.round_index, client_id, exc
            )
            return False
        if self._sum is None:
            self._sum = vectors
        else:
            for total, vector in zip(self._sum, vectors, strict=True):
                total.add_(vector)
        self._seen.add(client_id)
        self.count += 1
        return True

    def _check(self, client_id: int, payload: bytes) -> list[ts.CKKSVector]:
        if client_id in self._seen:
            raise _Rejected("a payload from this client was already added this round")
        if self._max_clients is not None and self.count >= self._max_clients:
            raise _Rejected(f"the round already holds max_clients={self._max_clients} contributions")
        header, chunks = _read_payload(payload, MAGIC_CONTRIBUTION)
        spec = self.spec
        if header.fingerprint != self._fingerprint:
            raise _Rejected("encrypted under another context (fingerprint mismatch)")
        if header.round_index != spec.round_index:
            raise _Rejected(f"payload is for round {header.round_index}, this is round {spec.round_index}")
        if header.bound_bits != spec.bound_bits:
            raise _Rejected(
                f"payload packed at bounds {header.bound_bits}, this round uses {spec.bound_bits}"
            )
        if header.n_params != spec.n_params or header.n_values != spec.n_values:
            raise _Rejected(
                f"payload carries {header.n_params} parameters ({header.n_values} values), the model has "
                f"{spec.n_params} ({spec.n_values} values)"
            )
        if header.n_chunks != len(self._sizes) or len(chunks) != len(self._sizes):
            raise _Rejected(f"payload has {len(chunks)} chunks, the model needs {len(self._sizes)}")
        return [
            _load_chunk(self._context, self._geometry, i, c, s)
            for i, (c, s) in enumerate(zip(chunks, self._sizes, strict=True))
        ]

    def result(self) -> bytes:
        """The summed ciphertexts for the key holder (header records how many clients they sum)."""
        if self._sum is None:
            raise CryptoError(
                f"round {self.spec.round_index}: no contribution was accepted, there is nothing to send"
            )
        chunks = [vector.serialize() for vector in self._sum]
        header = _Header(
            MAGIC_AGGREGATE,
            self._fingerprint,
            self.spec.round_index,
            self.spec.n_params,
            self.spec.n_values,
            len(chunks),
            self.count,
            self.spec.bound_bits,
        )
        return _write_payload(header, chunks)


class CkksSummation:
    """Encrypted summation policy: the three roles in one process, called like PlainSummation.

    stats per round: encrypt_s, aggregate_s, decrypt_s (seconds), bytes_per_client (upload),
    rejected, he_bound_bits (packed bounds), and with debug_check max_abs_error / max_rel_error
    against a plaintext sum kept here (never in the Aggregator).
    """

    def __init__(self, params: CkksParams, *, debug_check: bool = False, min_clients: int = 1) -> None:
        self.params = params.validate()
        self.min_clients = min_clients
        self.debug_check = debug_check
        self._key_holder = KeyHolder(params, min_clients=min_clients)
        self._encryptor = Encryptor(self._key_holder.public_context())
        self._bounds: tuple[int, ...] | None = (params.bound_bits,) if params.bound_bits is not None else None
        self._aggregator: Aggregator | None = None
        self._timers: dict[str, float] = {}
        self._upload_bytes = 0
        self._payloads = 0
        self._plain: tuple[np.ndarray, float] | None = None

    @property
    def public_context(self) -> bytes:
        """For clients outside this process (an engine that ships bytes)."""
        return self._key_holder.public_context()

    @property
    def round_spec(self) -> RoundSpec:
        """The current round's public spec, for clients outside this process."""
        if self._aggregator is None:
            raise RuntimeError("begin_round() must be called first")
        return self._aggregator.spec

    def begin_round(self, round_index: int, n_params: int) -> None:
        bounds = self._bounds or tuple(self.params.calibration_bound_bits)
        spec = RoundSpec(round_index, n_params, bounds)
        self._aggregator = Aggregator(self.public_context, spec, max_clients=self.params.max_clients)
        self._timers = {"encrypt_s": 0.0, "aggregate_s": 0.0, "decrypt_s": 0.0}
        self._upload_bytes = self._payloads = 0
        self._plain = (np.zeros(n_params), 0.0) if self.debug_check else None

    def submit(self, contribution: Contribution) -> None:
        """Play the client (pack and encrypt), then hand the bytes to the aggregator."""
        spec = self.round_spec
        t0 = time.perf_counter()
        payload = self._encryptor.encrypt(contribution, spec)
        self._timers["encrypt_s"] += time.perf_counter() - t0
        if self.submit_encrypted(contribution.client_id, payload) and self._plain is not None:
            vector, weight = self._plain
            self._plain = (
                vector + np.asarray(contribution.vector, dtype=np.float64),
                weight + contribution.weight,
            )

    def submit_encrypted(self, client_id: int, payload: bytes) -> bool:
        """Hand a payload encrypted elsewhere to the aggregator; False when it is refused (logged)."""
        if self._aggregator is None:
            raise RuntimeError("begin_round() must be called before submit()")
        t0 = time.perf_counter()
        accepted = self._aggregator.add(client_id, payload)
        self._timers["aggregate_s"] += time.perf_counter() - t0
        self._upload_bytes += len(payload)
        self._payloads += 1
        return accepted

    def finish(self) -> SumResult:
        aggregator = self._aggregator
        if aggregator is None:
            raise RuntimeError("begin_round() must be called before finish()")
        self._aggregator = None
        spec = aggregator.spec
        if aggregator.count < self.min_clients:
            raise CryptoError(
                f"round {spec.round_index}: only {aggregator.count} contribution(s) were accepted "
                f"({aggregator.rejected} rejected), fewer than min_clients={self.min_clients}; the aggregate "
                "is not decrypted. Lower min_clients or sample more clients per round"
            )
        t0 = time.perf_counter()
        payload = aggregator.result()
        self._timers["aggregate_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            decrypted = self._key_holder.decrypt(payload, spec.n_params)
        except RangeOverflow as exc:
            self._adapt(exc.magnitude)
            raise
        self._timers["decrypt_s"] += time.perf_counter() - t0
        self._adapt(decrypted.magnitude)
        stats = {
            **self._timers,
            "bytes_per_client": self._upload_bytes / max(self._payloads, 1),
            "rejected": aggregator.rejected,
            "he_bound_bits": list(spec.bound_bits),
        }
        if self._plain is not None:
            plain_vector, plain_weight = self._plain
            err = float(np.max(np.abs(decrypted.vector - plain_vector))) if spec.n_params else 0.0
            peak = float(np.max(np.abs(plain_vector))) if spec.n_params else 0.0
            stats["max_abs_error"] = err
            stats["max_rel_error"] = err / peak if peak > 0 else err
            stats["weight_abs_error"] = abs(decrypted.weight - plain_weight)
        return SumResult(decrypted.vector, decrypted.weight, decrypted.count, stats)

    def state(self) -> dict:
        """The bound the next round packs at (adapted from the last decrypted magnitude)."""
        return {"bound_bits": None if self._bounds is None else list(self._bounds)}

    def load_state(self, state: dict) -> None:
        """Continue from a checkpoint: the next round uses the bound an uninterrupted run would."""
        bounds = state.get("bound_bits")
        if bounds is not None and self.params.bound_bits is None:
            self._bounds = tuple(int(b) for b in bounds)

    def _adapt(self, magnitude: float) -> None:
        """Next round's bound from this round's public magnitude (unless the bound is fixed)."""
        if self.params.bound_bits is None and magnitude > 0:
            self._bounds = (next_bound_bits(magnitude, self.params.margin_bits),)
