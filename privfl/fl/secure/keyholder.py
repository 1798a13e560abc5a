"""The key holder: owns the secret CKKS key and releases exactly one verified sum per round.

It runs as its own party (`privfl keyholder serve`, privfl.fl.secure.service) and keeps, per round,
the running sum of the ciphertexts it verified itself: each from an enrolled client (Ed25519
signature over run id, round, client id and payload digest), at most once per client, in the
layout and bounds it announced and signed. `release` decrypts that sum only with at least
min_clients contributions, and only once; with a state directory the released rounds (and the
keys) survive a restart. docs/secure-aggregation.md has the threat model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tenseal as ts

from privfl.config import CkksParams
from privfl.errors import ConfigError, CryptoError
from privfl.fl.secure.enrolment import (
    RUN_ID_BYTES,
    SigningKey,
    contribution_message,
    payload_digest,
    verify,
)
from privfl.fl.secure.packing import unpack_sum
from privfl.fl.secure.payload import (
    MAGIC_CONTRIBUTION,
    _Geometry,
    _load_chunk,
    _read_payload,
    _Rejected,
    context_fingerprint,
)

log = logging.getLogger(__name__)

ANNOUNCEMENT_DOMAIN = b"privfl-round-v1"
_ANNOUNCEMENT = struct.Struct("<4s16sIIIIhh16s")  # magic, run id, round, n_params, n_values,
#                                                   max clients, vector bound, weight bound, fingerprint


@dataclass(frozen=True)
class RoundAnnouncement:
    """The key holder's public, signed statement of one round's packing."""

    run_id: bytes
    round_index: int
    n_params: int
    max_clients: int
    bounds: tuple[int, int]
    fingerprint: bytes

    @property
    def n_values(self) -> int:
        return self.n_params + 1

    def to_bytes(self) -> bytes:
        return _ANNOUNCEMENT.pack(
            b"PFR1",
            self.run_id,
            self.round_index,
            self.n_params,
            self.n_values,
            self.max_clients,
            self.bounds[0],
            self.bounds[1],
            self.fingerprint,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundAnnouncement:
        if len(data) != _ANNOUNCEMENT.size:
            raise CryptoError(f"a round announcement is {_ANNOUNCEMENT.size} bytes, got {len(data)}")
        magic, run_id, r, n, n_values, k, b, bw, fp = _ANNOUNCEMENT.unpack(data)
        if magic != b"PFR1" or n_values != n + 1:
            raise CryptoError("not a privfl round announcement (tag or layout)")
        return cls(run_id, r, n, k, (b, bw), fp)


def signed_announcement_message(announcement: bytes) -> bytes:
    return ANNOUNCEMENT_DOMAIN + announcement


@dataclass(frozen=True)
class Released:
    """What the key holder gives back for a round: the one sum, and who is in it."""

    vector: np.ndarray
    weight: float
    count: int
    clients: tuple[int, ...]
    next_bounds: tuple[int, int]


@dataclass
class _OpenRound:
    announcement: RoundAnnouncement
    signature: bytes
    total: list | None = None
    accepted: list[int] = field(default_factory=list)
    rejected: int = 0


class KeyHolder:
    """The key holder's logic: keys, registry, per-round state; bytes in, one sum out per round.

    state_dir (optional) keeps the secret context, the signing key, the run id, the bounds and
    the released rounds, so a restarted key holder still refuses a round it already released."""

    def __init__(
        self,
        params: CkksParams,
        registry: dict[int, bytes],
        *,
        min_clients: int,
        bounds: tuple[int, int] | None = None,
        state_dir: Path | None = None,
    ) -> None:
        params.validate()
        if not isinstance(min_clients, int) or min_clients < 2:
            raise ConfigError(
                f"min_clients={min_clients!r}: the key holder releases sums of at least 2 clients (a "
                "one-client sum is that client's update); set secure.min_clients >= 2"
            )
        if len(registry) < min_clients:
            raise ConfigError(
                f"the enrolment registry holds {len(registry)} client(s), fewer than "
                f"min_clients={min_clients}: enrol more clients (privfl keyholder register)"
            )
        self.params, self.min_clients = params, min_clients
        self.registry = dict(registry)
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._released: set[int] = set()
        self._rounds: dict[int, _OpenRound] = {}
        self._bounds = bounds or (params.bound_bits, params.weight_bound_bits)
        if self.state_dir is not None and (self.state_dir / "keyholder.json").exists():
            self._load_state()
        else:
            self._context = _new_context(params)
            self._signer = SigningKey.generate()
            self.run_id = os.urandom(RUN_ID_BYTES)
            if self.state_dir is not None:
                self._save_state(keys=True)
        self._geometry = _Geometry.of(self._context)
        self.public_context = self._context.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )
        self.fingerprint = context_fingerprint(self.public_context)
        self.verify_key = self._signer.public_bytes()
        chunk_bound = 16 * params.poly_modulus_degree * len(params.coeff_mod_bit_sizes) + 4096
        self._chunk_bound = chunk_bound

    # --- protocol ------------------------------------------------------------------------------
    def open_round(self, round_index: int, n_params: int) -> tuple[bytes, bytes]:
        """(announcement bytes, key-holder signature) for the round; the same pair if already open."""
        if round_index in self._released:
            raise CryptoError(
                f"round {round_index} was already released; the key holder releases one sum per round"
            )
        if not isinstance(n_params, int) or not 0 < n_params < 2**31:
            raise CryptoError(f"n_params={n_params!r} must be a positive integer")
        state = self._rounds.get(round_index)
        if state is not None:
            if state.announcement.n_params != n_params:
                raise CryptoError(
                    f"round {round_index} is already open for {state.announcement.n_params} parameters"
                )
            return state.announcement.to_bytes(), state.signature
        ann = RoundAnnouncement(
            self.run_id, round_index, n_params, self.params.max_clients, self._bounds, self.fingerprint
        )
        signature = self._signer.sign(signed_announcement_message(ann.to_bytes()))
        self._rounds[round_index] = _OpenRound(ann, signature)
        return ann.to_bytes(), signature

    def submit(self, round_index: int, client_id: int, payload: bytes, signature: bytes) -> str | None:
        """Verify one signed contribution and add it to the round's sum; None, or why it was refused."""
        reason = self._check_and_add(round_index, client_id, payload, signature)
        if reason is not None:
            state = self._rounds.get(round_index)
            if state is not None:
                state.rejected += 1
            log.warning("round %s: refused client %s: %s", round_index, client_id, reason)
        return reason

    def release(self, round_index: int) -> Released:
        """Decrypt the round's one sum (>= min_clients distinct enrolled clients), exactly once."""
        if round_index in self._released:
            raise CryptoError(f"round {round_index} was already released; a second sum is refused")
        state = self._rounds.get(round_index)
        if state is None:
            raise CryptoError(f"round {round_index} was never opened")
        count = len(state.accepted)
        if count < self.min_clients:
            raise CryptoError(
                f"round {round_index}: {count} verified contribution(s) from enrolled clients "
                f"({state.rejected} refused), fewer than min_clients={self.min_clients}; the key holder "
                "decrypts nothing for this round"
            )
        self._released.add(round_index)
        del self._rounds[round_index]
        ann = state.announcement
        values = np.concatenate([np.asarray(v.decrypt(), dtype=np.float64) for v in state.total])
        vector, weight = unpack_sum(values, ann.n_params, ann.bounds, self._geometry.capacity_bits)
        peak = float(np.max(np.abs(vector))) if vector.size else 0.0
        self._bounds = self.params.next_bounds(ann.bounds, peak, weight)
        if self.state_dir is not None:
            self._save_state(keys=False)  # the released mark reaches the disk before the sum leaves
        return Released(vector, weight, count, tuple(state.accepted), self._bounds)

    # --- internals -------------------------------------------------------------------------------
    def _check_and_add(self, r: int, cid: int, payload: bytes, signature: bytes) -> str | None:
        if r in self._released:
            return f"round {r} was already released"
        state = self._rounds.get(r)
        if state is None:
            return f"round {r} is not open"
        if cid not in self.registry:
            return f"client {cid} is not enrolled"
        if cid in state.accepted:
            return f"client {cid} already contributed to round {r}"
        ann = state.announcement
        if len(state.accepted) >= ann.max_clients:
            return f"the round already holds max_clients={ann.max_clients} contributions"
        sizes = self._geometry.chunk_sizes(ann.n_values)
        limit = len(sizes) * self._chunk_bound + 4096
        if len(payload) > limit:
            return f"payload of {len(payload)} bytes exceeds the {limit} bytes a round payload can need"
        message = contribution_message(self.run_id, r, cid, payload_digest(payload))
        if not verify(self.registry[cid], message, signature):
            return f"the signature is not client {cid}'s over this run, round and payload"
        try:
            header, chunks = _read_payload(payload, MAGIC_CONTRIBUTION)
            if header.fingerprint != self.fingerprint:
                raise _Rejected("encrypted under another context")
            if (header.round_index, header.n_params, header.n_values) != (r, ann.n_params, ann.n_values):
                raise _Rejected("round or sizes differ from the announcement")
            if header.bound_bits != ann.bounds or header.count != 1:
                raise _Rejected("packed at other bounds than announced")
            if header.n_chunks != len(sizes) or len(chunks) != len(sizes):
                raise _Rejected(f"{len(chunks)} chunks, the round needs {len(sizes)}")
            vectors = [
                _load_chunk(self._context, self._geometry, i, c, s)
                for i, (c, s) in enumerate(zip(chunks, sizes, strict=True))
            ]
        except _Rejected as exc:
            return f"malformed payload: {exc}"
        if state.total is None:
            state.total = vectors
        else:
            for total, v in zip(state.total, vectors, strict=True):
                total.add_(v)
        state.accepted.append(cid)
        return None

    def _save_state(self, *, keys: bool) -> None:
        d = self.state_dir
        d.mkdir(parents=True, exist_ok=True)
        if keys:
            _write_private(d / "secret-context.bin", self._context.serialize(save_secret_key=True))
            _write_private(d / "signing-key.bin", self._signer.private_bytes())
        body = {
            "format": 1,
            "run_id": self.run_id.hex(),
            "released": sorted(self._released),
            "bounds": list(self._bounds),
        }
        _write_private(d / "keyholder.json", (json.dumps(body) + "\n").encode())

    def _load_state(self) -> None:
        d = self.state_dir
        try:
            body = json.loads((d / "keyholder.json").read_text())
            self.run_id = bytes.fromhex(body["run_id"])
            self._released = {int(r) for r in body["released"]}
            self._bounds = (int(body["bounds"][0]), int(body["bounds"][1]))
            self._context = ts.context_from((d / "secret-context.bin").read_bytes())
            self._signer = SigningKey.load(d / "signing-key.bin")
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise CryptoError(
                f"key-holder state in {d} is unreadable ({exc}); start with an empty --state"
            ) from exc
        if len(self.run_id) != RUN_ID_BYTES or not self._context.has_secret_key():
            raise CryptoError(f"key-holder state in {d} is incomplete; start with an empty --state")


def _new_context(params: CkksParams) -> ts.Context:
    try:
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        )
    except ValueError as exc:
        raise CryptoError(
            f"TenSEAL refused poly_modulus_degree={params.poly_modulus_degree}, coeff_mod_bit_sizes="
            f"{params.coeff_mod_bit_sizes} ({exc}); use a combination within 128-bit security"
        ) from exc
    context.global_scale = math.ldexp(1.0, params.global_scale_bits)
    return context


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
