"""The client side: check the key holder's signed announcement, clamp, pack, encrypt and sign.

A client trusts only an announcement signed by the key-holder key it pinned, and only a public
context whose fingerprint that announcement names: a relay that swaps in its own bounds or its own
key pair gets a refusal, not a payload.
"""

from __future__ import annotations

import numpy as np
import tenseal as ts

from privfl.errors import CryptoError
from privfl.fl.aggregate import Contribution
from privfl.fl.secure.enrolment import SigningKey, contribution_message, payload_digest, verify
from privfl.fl.secure.keyholder import RoundAnnouncement, signed_announcement_message
from privfl.fl.secure.packing import pack_one
from privfl.fl.secure.payload import (
    MAGIC_CONTRIBUTION,
    _Geometry,
    _Header,
    _load_public_context,
    _write_payload,
    context_fingerprint,
)


class Encryptor:
    """A client's encryptor: trusts only announcements signed by the key-holder key it pinned.

    `public_context` is checked against the announcement's fingerprint before anything is encrypted,
    so a server that swaps in its own key pair, or its own bounds, gets a refusal, not a payload."""

    def __init__(self, keyholder_key: bytes, public_context: bytes) -> None:
        self.keyholder_key = bytes(keyholder_key)
        self._context = _load_public_context(public_context, "client")  # refuses a secret key
        self._geometry = _Geometry.of(self._context)
        self.fingerprint = context_fingerprint(bytes(public_context))

    def check(
        self, announcement: bytes, signature: bytes, n_params: int, round_index: int
    ) -> RoundAnnouncement:
        """The announcement, once its signature, fingerprint, round and size are what this client expects."""
        if not verify(self.keyholder_key, signed_announcement_message(announcement), signature):
            raise CryptoError(
                "the round announcement is not signed by the pinned key holder; refusing to encrypt "
                "(the relay changed it, or the client pinned another key holder)"
            )
        ann = RoundAnnouncement.from_bytes(announcement)
        if ann.fingerprint != self.fingerprint:
            raise CryptoError(
                "the public context does not match the key holder's signed fingerprint; refusing to "
                "encrypt under a key the key holder did not publish"
            )
        if ann.round_index != round_index or ann.n_params != n_params:
            raise CryptoError(
                f"the announcement is for round {ann.round_index} with {ann.n_params} parameters, this "
                f"client is in round {round_index} with {n_params}"
            )
        return ann

    def seal(
        self,
        contribution: Contribution,
        announcement: bytes,
        signature: bytes,
        key: SigningKey,
    ) -> tuple[bytes, bytes, bool]:
        """(payload, signature, clamped) for one contribution; CryptoError when the client refuses."""
        x = np.asarray(contribution.vector, dtype=np.float64)
        if x.ndim != 1:
            raise CryptoError(f"client {contribution.client_id}'s update has shape {x.shape}, expected 1-D")
        header = RoundAnnouncement.from_bytes(announcement)
        ann = self.check(announcement, signature, x.shape[0], header.round_index)
        if not np.all(np.isfinite(x)):
            raise CryptoError(
                f"client {contribution.client_id}'s update has non-finite values; nothing was sent"
            )
        values, clamped = pack_one(
            x, float(contribution.weight), ann.bounds, ann.max_clients, self._geometry.capacity_bits
        )
        slots, scale = self._geometry.slots, self._geometry.scale
        chunks = [
            ts.ckks_vector(self._context, values[s : s + slots], scale).serialize()
            for s in range(0, values.shape[0], slots)
        ]
        payload = _write_payload(
            _Header(
                MAGIC_CONTRIBUTION,
                self.fingerprint,
                ann.round_index,
                ann.n_params,
                ann.n_values,
                len(chunks),
                1,
                ann.bounds,
            ),
            chunks,
        )
        message = contribution_message(
            ann.run_id, ann.round_index, contribution.client_id, payload_digest(payload)
        )
        return payload, key.sign(message), clamped
