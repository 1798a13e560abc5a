"""The client side: pack a Contribution at the round's public bounds and encrypt it with the public key."""

from __future__ import annotations

import math

import numpy as np
import tenseal as ts

from privfl.config import CkksParams
from privfl.errors import CryptoError
from privfl.fl.aggregate import Contribution
from privfl.fl.secure.packing import RoundSpec, pack
from privfl.fl.secure.payload import (
    MAGIC_CONTRIBUTION,
    _Geometry,
    _Header,
    _load_public_context,
    _write_payload,
    context_fingerprint,
)

_CLIENT_LIMIT = 2.0**50  # per-client weight and max|x|: the coarsest META copy cannot wrap below 2^15 clients


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
