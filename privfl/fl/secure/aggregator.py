"""The server side: add checked ciphertexts into a running sum; never a key, never a plaintext."""

from __future__ import annotations

import logging

import tenseal as ts

from privfl.errors import CryptoError
from privfl.fl.secure.packing import RoundSpec
from privfl.fl.secure.payload import (
    MAGIC_AGGREGATE,
    MAGIC_CONTRIBUTION,
    _Geometry,
    _Header,
    _load_chunk,
    _load_public_context,
    _read_payload,
    _Rejected,
    _write_payload,
    context_fingerprint,
)

log = logging.getLogger(__name__)


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
