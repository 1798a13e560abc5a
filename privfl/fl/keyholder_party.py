"""The CKKS key holder as its own party: a process that owns the secret key and releases one sum
per round, and the relay protocol the server speaks to it.

Parties and what they hold:

  key holder  (`privfl keyholder serve`, its own OS process) the secret CKKS key, its own Ed25519
              signing key, the enrolment registry {client id: Ed25519 public key}, and per-round
              state: the running sum of the round's verified ciphertexts and the rounds released.
  server      a relay: the public context and announcements it forwards, the ciphertexts and
              signatures it forwards, and the one released sum per round. No secret key.
  client      its own signing key, the pinned key-holder verify key, the public context.

One round:
  1. server -> key holder  open(round, n_params). The key holder fixes the round's public packing
     (one bound for the vector, one for the weight; never chosen by the server) and returns a
     `RoundAnnouncement` signed with its key: run id, round, sizes, bounds, max clients, context
     fingerprint.
  2. server -> clients     the announcement, its signature, the public context. A client checks the
     signature against the key-holder key it pinned, that the context hashes to the announced
     fingerprint and that the sizes are its model's; it clamps its vector to the published bound,
     packs, encrypts, and signs (run id, round, client id, sha256(payload)).
  3. server -> key holder  submit(round, client id, payload, signature) for each client. The key
     holder refuses unenrolled ids, bad signatures, duplicates, payloads too large or malformed,
     and adds each accepted ciphertext to the round's running sum itself.
  4. server -> key holder  release(round). With at least min_clients accepted, distinct, enrolled
     clients, the key holder marks the round released (persisted first when it keeps state),
     decrypts the one sum and returns [sum vector, sum weight, count, client ids]. A second
     release, or any later submission, for that round is refused.

Everything on the socket is a length-prefixed frame: b"PFK1", u32 JSON length, JSON (op and
scalars, plus the names and lengths of binary blobs), then the blobs. Nothing is unpickled.
Every privacy check lives in `KeyHolderCore`, so anyone who reaches the socket (the server, or any
local process) has exactly the relay's power.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tenseal as ts

from privfl.errors import ConfigError, CryptoError
from privfl.fl.aggregate import Contribution
from privfl.fl.enrolment import (
    RUN_ID_BYTES,
    SigningKey,
    contribution_message,
    payload_digest,
    verify,
    write_registry,
)
from privfl.fl.secure import (
    MAGIC_CONTRIBUTION,
    CkksParams,
    _Geometry,
    _Header,
    _load_chunk,
    _load_public_context,
    _noise_bits,
    _read_payload,
    _Rejected,
    _write_payload,
    context_fingerprint,
)

log = logging.getLogger(__name__)

FRAME_MAGIC = b"PFK1"
ANNOUNCEMENT_DOMAIN = b"privfl-round-v1"
_ANNOUNCEMENT = struct.Struct("<4s16sIIIIhh16s")  # magic, run id, round, n_params, n_values,
#                                                   max clients, vector bound, weight bound, fingerprint
_MAX_JSON = 1 << 20
PRECISION_TARGET_BITS = 20
READY_PREFIX = "privfl keyholder listening on "


# --- packing: one public bound per round, no copies -----------------------------------------------


@dataclass(frozen=True)
class SumPacking:
    """The public packing policy: one bound for the vector, one for the weight, per round.

    bound_bits: round 0's bound; the key holder packs |sum of vectors| < 2^(bound_bits-1).
    weight_bound_bits: round 0's bound on the sum of weights.
    max_clients: contributions per round; each client clamps |x_i| to 2^(b-1)/max_clients, so the
        sum of any max_clients honest contributions cannot wrap.
    adapt: later rounds take their bounds from the previous released sum (public to the server),
        ceil(log2 max|sum|) + ceil(log2 max_clients) + margin_bits; otherwise the bounds stay fixed.
    """

    bound_bits: int = 16
    weight_bound_bits: int = 20
    max_clients: int = 16
    adapt: bool = True
    margin_bits: int = 5

    def headroom_bits(self) -> int:
        return math.ceil(math.log2(self.max_clients)) + self.margin_bits

    def precision_bits(self, params: CkksParams) -> float:
        """Bits of precision of an adapted round's sum, relative to its largest value."""
        noise = _noise_bits(params.poly_modulus_degree, self.max_clients)
        return params.data_bits - 2 - noise - self.headroom_bits()

    def validate(self, params: CkksParams) -> SumPacking:
        for name in ("bound_bits", "weight_bound_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or abs(value) > 900:
                raise ConfigError(f"secure.{name}={value!r} must be an integer within +-900")
        if not isinstance(self.max_clients, int) or not 1 <= self.max_clients <= 65535:
            raise ConfigError(f"max_clients={self.max_clients!r} must be an integer in 1..65535")
        if not isinstance(self.margin_bits, int) or not 1 <= self.margin_bits <= 16:
            raise ConfigError(f"secure.margin_bits={self.margin_bits!r} must be an integer in 1..16")
        precision = self.precision_bits(params)
        if precision < PRECISION_TARGET_BITS:
            raise ConfigError(
                f"{self.max_clients} clients per round with margin_bits={self.margin_bits} leave "
                f"{precision:.1f} bits of precision (need >= {PRECISION_TARGET_BITS}, i.e. 1e-6): lower "
                "secure.margin_bits, sample fewer clients per round, or use a larger data prime"
            )
        return self

    def next_bounds(self, bounds: tuple[int, int], vector: np.ndarray, weight: float) -> tuple[int, int]:
        """The next round's (vector, weight) bounds from a released sum; unchanged without adapt."""
        if not self.adapt:
            return bounds
        b, bw = bounds
        peak = float(np.max(np.abs(vector))) if vector.size else 0.0
        if peak > 0 and math.isfinite(peak):
            b = max(-900, min(math.frexp(peak)[1] + self.headroom_bits(), 900))
        if weight > 0 and math.isfinite(weight):
            bw = max(-900, min(math.frexp(weight)[1] + self.headroom_bits(), 900))
        return b, bw


def pack_one(
    vector: np.ndarray, weight: float, bounds: tuple[int, int], max_clients: int, capacity_bits: int
) -> tuple[np.ndarray, bool]:
    """float64 [n_params + 1] slot values for one client, and whether the vector was clamped.

    Each |x_i| is clamped to 2^(b-1)/max_clients (the published bound); the weight must lie below
    2^(bw-1)/max_clients or the client refuses to send (a client fault, CryptoError)."""
    b, bw = bounds
    x = np.asarray(vector, dtype=np.float64)
    limit = math.ldexp(1.0, b - 1) / max_clients
    clamped = bool(x.size) and float(np.max(np.abs(x))) > limit
    x = np.clip(x, -limit, limit)
    weight_limit = math.ldexp(1.0, bw - 1) / max_clients
    if not (math.isfinite(weight) and 0.0 <= weight < weight_limit):
        raise CryptoError(
            f"weight {weight} is outside the round's published weight bound [0, {weight_limit:.6g}); "
            "the client sends nothing this round"
        )
    out = np.empty(x.shape[0] + 1)
    out[:-1] = np.ldexp(x, capacity_bits - b)
    out[-1] = math.ldexp(weight, capacity_bits - bw)
    return out, clamped


def unpack_sum(values: np.ndarray, n_params: int, bounds: tuple[int, int], capacity_bits: int):
    """(vector [n_params], weight) from summed slot values; exact powers of two."""
    b, bw = bounds
    return np.ldexp(values[:n_params], b - capacity_bits), math.ldexp(
        float(values[n_params]), bw - capacity_bits
    )


# --- the signed round announcement ----------------------------------------------------------------


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


# --- the client side -------------------------------------------------------------------------------


class PinnedEncryptor:
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


# --- the key holder ---------------------------------------------------------------------------------


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


class KeyHolderCore:
    """The key holder's logic: keys, registry, per-round state; bytes in, one sum out per round.

    state_dir (optional) keeps the secret context, the signing key, the run id, the bounds and
    the released rounds, so a restarted key holder still refuses a round it already released."""

    def __init__(
        self,
        params: CkksParams,
        packing: SumPacking,
        registry: dict[int, bytes],
        *,
        min_clients: int,
        bounds: tuple[int, int] | None = None,
        state_dir: Path | None = None,
    ) -> None:
        params.validate()
        packing.validate(params)
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
        self.params, self.packing, self.min_clients = params, packing, min_clients
        self.registry = dict(registry)
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._released: set[int] = set()
        self._rounds: dict[int, _OpenRound] = {}
        self._bounds = bounds or (packing.bound_bits, packing.weight_bound_bits)
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
            self.run_id, round_index, n_params, self.packing.max_clients, self._bounds, self.fingerprint
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
        self._bounds = self.packing.next_bounds(ann.bounds, vector, weight)
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


# --- framing -----------------------------------------------------------------------------------------


def encode_frame(fields: dict, blobs: dict[str, bytes] | None = None) -> bytes:
    """b"PFK1" | u32 JSON length | JSON | blobs (named with their lengths in the JSON)."""
    blobs = blobs or {}
    head = dict(fields, blobs=[[name, len(data)] for name, data in blobs.items()])
    text = json.dumps(head).encode()
    return b"".join([FRAME_MAGIC, struct.pack("<I", len(text)), text, *(bytes(b) for b in blobs.values())])


def decode_frame(frame: bytes) -> tuple[dict, dict[str, bytes]]:
    """Inverse of encode_frame; CryptoError on anything that does not add up."""
    if len(frame) < 8 or frame[:4] != FRAME_MAGIC:
        raise CryptoError("not a privfl key-holder frame (tag)")
    (n,) = struct.unpack_from("<I", frame, 4)
    if n > _MAX_JSON or 8 + n > len(frame):
        raise CryptoError(f"frame header of {n} bytes does not fit the frame")
    try:
        fields = json.loads(frame[8 : 8 + n])
        names = [(str(a), int(b)) for a, b in fields.pop("blobs")]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CryptoError(f"frame header is not the expected JSON ({exc})") from exc
    if not isinstance(fields, dict) or any(b < 0 for _, b in names):
        raise CryptoError("frame header is not the expected JSON")
    pos, blobs = 8 + n, {}
    for name, length in names:
        blobs[name] = bytes(frame[pos : pos + length])
        pos += length
    if pos != len(frame):
        raise CryptoError(f"frame blobs announce {pos} bytes, the frame has {len(frame)}")
    return fields, blobs


def send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(struct.pack("<Q", len(data)) + data)


def recv_frame(sock: socket.socket, max_bytes: int) -> bytes | None:
    """One frame, or None when the peer closed the connection cleanly."""
    head = _recv_exact(sock, 8)
    if head is None:
        return None
    (n,) = struct.unpack("<Q", head)
    if n > max_bytes:
        raise CryptoError(f"frame of {n} bytes exceeds the {max_bytes}-byte limit")
    data = _recv_exact(sock, n)
    if data is None:
        raise CryptoError("connection closed inside a frame")
    return data


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(min(n - len(buf), 1 << 20))
        if not part:
            if not buf:
                return None
            raise CryptoError("connection closed inside a frame")
        buf += part
    return bytes(buf)


# --- the key-holder service --------------------------------------------------------------------------


def handle(core: KeyHolderCore, frame: bytes) -> tuple[bytes, bool]:
    """One request frame -> (reply frame, keep serving)."""
    try:
        fields, blobs = decode_frame(frame)
        op = fields.get("op")
        if op == "hello":
            return encode_frame(
                {"ok": True, "min_clients": core.min_clients, "max_clients": core.packing.max_clients},
                {"context": core.public_context, "verify_key": core.verify_key, "run_id": core.run_id},
            ), True
        if op == "open":
            ann, sig = core.open_round(_int(fields, "round"), _int(fields, "n_params"))
            return encode_frame({"ok": True}, {"announcement": ann, "signature": sig}), True
        if op == "submit":
            reason = core.submit(
                _int(fields, "round"),
                _int(fields, "client"),
                blobs.get("payload", b""),
                blobs.get("signature", b""),
            )
            return encode_frame({"ok": True, "accepted": reason is None, "reason": reason}), True
        if op == "release":
            out = core.release(_int(fields, "round"))
            reply = {
                "ok": True,
                "weight": out.weight,
                "count": out.count,
                "clients": list(out.clients),
                "next_bounds": list(out.next_bounds),
            }
            return encode_frame(reply, {"vector": out.vector.astype("<f8").tobytes()}), True
        if op == "shutdown":
            return encode_frame({"ok": True}), False
        raise CryptoError(f"unknown op {op!r}")
    except CryptoError as exc:
        return encode_frame({"ok": False, "error": str(exc)}), True


def _int(fields: dict, key: str) -> int:
    value = fields.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
        raise CryptoError(f"field {key!r} = {value!r} is not a 32-bit non-negative integer")
    return value


def max_frame_bytes(core: KeyHolderCore, n_params_limit: int = 50_000_000) -> int:
    """The largest request frame the service reads: one client's payload for the largest model."""
    slots = core.params.poly_modulus_degree // 2
    return (-(-(n_params_limit + 1) // slots)) * core._chunk_bound + (1 << 16)


def serve(core: KeyHolderCore, host: str, port: int, *, announce=print) -> None:
    """Accept one relay connection at a time and answer its requests until told to shut down."""
    with socket.create_server((host, port)) as server:
        bound_host, bound_port = server.getsockname()[:2]
        announce(
            f"{READY_PREFIX}{bound_host}:{bound_port} key {core.verify_key.hex()} "
            f"fingerprint {core.fingerprint.hex()}"
        )
        limit = max_frame_bytes(core)
        while True:
            conn, _ = server.accept()
            with conn:
                while True:
                    try:
                        frame = recv_frame(conn, limit)
                    except (CryptoError, OSError) as exc:
                        log.warning("relay connection dropped: %s", exc)
                        break
                    if frame is None:
                        break
                    reply, keep = handle(core, frame)
                    send_frame(conn, reply)
                    if not keep:
                        return


# --- the server's end: a relay connection ---------------------------------------------------------------


class KeyHolderClient:
    """The server's connection to the key holder: forwards bytes, holds no key."""

    def __init__(self, address: str, *, timeout: float = 600.0) -> None:
        host, _, port = address.rpartition(":")
        try:
            self._sock = socket.create_connection((host, int(port)), timeout=timeout)
        except (OSError, ValueError) as exc:
            raise CryptoError(
                f"cannot reach the key holder at {address!r} ({exc}); start it with `privfl keyholder serve`"
            ) from exc
        self.address = address
        fields, blobs = self._call({"op": "hello"})
        self.public_context = blobs["context"]
        self.verify_key = blobs["verify_key"]
        self.run_id = blobs["run_id"]
        self.min_clients = int(fields["min_clients"])
        self.max_clients = int(fields["max_clients"])

    def _call(self, fields: dict, blobs: dict[str, bytes] | None = None) -> tuple[dict, dict[str, bytes]]:
        try:
            send_frame(self._sock, encode_frame(fields, blobs))
            frame = recv_frame(self._sock, 1 << 34)
        except OSError as exc:
            raise CryptoError(f"lost the key holder at {self.address} ({exc})") from exc
        if frame is None:
            raise CryptoError(f"the key holder at {self.address} closed the connection")
        reply, out = decode_frame(frame)
        if not reply.get("ok"):
            raise CryptoError(f"key holder: {reply.get('error')}")
        return reply, out

    def open_round(self, round_index: int, n_params: int) -> tuple[bytes, bytes]:
        _, blobs = self._call({"op": "open", "round": round_index, "n_params": n_params})
        return blobs["announcement"], blobs["signature"]

    def submit(self, round_index: int, client_id: int, payload: bytes, signature: bytes) -> str | None:
        reply, _ = self._call(
            {"op": "submit", "round": round_index, "client": client_id},
            {"payload": payload, "signature": signature},
        )
        return None if reply["accepted"] else str(reply["reason"])

    def release(self, round_index: int) -> Released:
        reply, blobs = self._call({"op": "release", "round": round_index})
        vector = np.frombuffer(blobs["vector"], dtype="<f8").astype(np.float64)
        return Released(
            vector,
            float(reply["weight"]),
            int(reply["count"]),
            tuple(int(c) for c in reply["clients"]),
            (int(reply["next_bounds"][0]), int(reply["next_bounds"][1])),
        )

    def shutdown(self) -> None:
        try:
            self._call({"op": "shutdown"})
        finally:
            self.close()

    def close(self) -> None:
        self._sock.close()


# --- spawning a key-holder process (the built-in engine, tests) -----------------------------------------


@dataclass
class KeyHolderProcess:
    """A `privfl keyholder serve` child process on loopback and what it announced when ready."""

    process: subprocess.Popen
    address: str
    verify_key: bytes
    workdir: tempfile.TemporaryDirectory

    def stop(self) -> None:
        _stop(self.process, self.workdir)


def _stop(process: subprocess.Popen, workdir) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
    workdir.cleanup()


def spawn_keyholder(
    config_toml: str,
    registry: dict[int, bytes],
    *,
    bounds: tuple[int, int] | None = None,
    state_dir: Path | None = None,
    start_timeout: float = 120.0,
) -> KeyHolderProcess:
    """Start `python -m privfl.keyholder_cli serve` (= `privfl keyholder serve`) on 127.0.0.1 at a
    free port, and wait until it listens."""
    workdir = tempfile.TemporaryDirectory(prefix="privfl-keyholder-")
    root = Path(workdir.name)
    (root / "experiment.toml").write_text(config_toml)
    write_registry(root / "registry.json", registry)
    cmd = [
        sys.executable,
        "-m",
        "privfl.keyholder_cli",
        "serve",
        "--config",
        str(root / "experiment.toml"),
        "--registry",
        str(root / "registry.json"),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]
    if bounds is not None:
        cmd += ["--bounds", f"{bounds[0]},{bounds[1]}"]
    if state_dir is not None:
        cmd += ["--state", str(state_dir)]
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + start_timeout
    line = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith(READY_PREFIX) or not line:
            break
    if not line.startswith(READY_PREFIX):
        _stop(process, workdir)
        raise CryptoError(
            f"the key-holder process did not start (exit code {process.returncode}); run "
            f"`{' '.join(cmd[2:])}` by hand to see why"
        )
    words = line[len(READY_PREFIX) :].split()
    spawned = KeyHolderProcess(process, words[0], bytes.fromhex(words[2]), workdir)
    weakref.finalize(spawned, _stop, process, workdir)
    return spawned


# --- settings from an experiment config --------------------------------------------------------------


def keyholder_settings(cfg) -> tuple[CkksParams, SumPacking, int]:
    """(CKKS parameters, public packing policy, min_clients) a key holder runs an experiment with."""
    from privfl.config import clients_per_round, min_clients

    s = cfg.secure
    params = CkksParams(
        poly_modulus_degree=s.poly_modulus_degree,
        coeff_mod_bit_sizes=tuple(s.coeff_mod_bit_sizes),
        global_scale_bits=s.global_scale_bits,
        insecure=s.insecure_he,
        max_clients=max(clients_per_round(cfg), 1),
    ).validate()
    packing = SumPacking(
        bound_bits=s.bound_bits,
        weight_bound_bits=s.weight_bound_bits,
        max_clients=max(clients_per_round(cfg), 1),
        adapt=s.adapt_bounds,
        margin_bits=s.margin_bits,
    ).validate(params)
    return params, packing, min_clients(cfg)
