"""The key holder: owns the secret key, publishes the public context, decrypts only round aggregates."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from privfl.config import CkksParams
from privfl.errors import ConfigError, CryptoError
from privfl.fl.secure.packing import RoundSpec, unpack
from privfl.fl.secure.payload import (
    MAGIC_AGGREGATE,
    _Geometry,
    _load_chunk,
    _read_payload,
    _Rejected,
    context_fingerprint,
)


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
