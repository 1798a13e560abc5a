"""Client enrolment for secure aggregation: one Ed25519 signing key per client.

A client's signing key is generated from OS entropy (`cryptography`'s Ed25519), never from the
experiment seed. Its public half is registered with the key holder at enrolment, out of the
server's hands: the key holder reads a registry file {client id: public key} that the operator
assembles from what each client printed. A client signs every contribution it sends:

    Ed25519 signature over
        b"privfl-contribution-v1" | run id (16 B) | round (u32) | client id (u32) | sha256(payload)

so the key holder can tell which enrolled client sent which ciphertext, for which run and round,
and refuse anything the relaying server made up or re-labelled. The key holder signs its round
announcements (context fingerprint, bounds) with its own Ed25519 key, which clients pin.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privfl.errors import CryptoError

CONTRIBUTION_DOMAIN = b"privfl-contribution-v1"
RUN_ID_BYTES = 16
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
_RAW = serialization.Encoding.Raw
_CONTRIBUTION = struct.Struct("<16sII32s")


def payload_digest(payload: bytes) -> bytes:
    """sha256 of a contribution payload: what a client's signature covers."""
    return hashlib.sha256(payload).digest()


def contribution_message(run_id: bytes, round_index: int, client_id: int, digest: bytes) -> bytes:
    """The bytes a client signs for one contribution (domain-separated, fixed layout)."""
    if len(run_id) != RUN_ID_BYTES or len(digest) != 32:
        raise CryptoError(
            f"run id must be {RUN_ID_BYTES} bytes and digest 32, got {len(run_id)}, {len(digest)}"
        )
    return CONTRIBUTION_DOMAIN + _CONTRIBUTION.pack(run_id, round_index, client_id, digest)


class SigningKey:
    """An Ed25519 private key (OS entropy) with the few operations privfl needs."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, raw: bytes) -> SigningKey:
        if len(raw) != 32:
            raise CryptoError(f"an Ed25519 private key is 32 bytes, got {len(raw)}")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self._key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())

    def public_bytes(self) -> bytes:
        """32 raw bytes: what enrolment registers."""
        return self._key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def save(self, path: Path) -> None:
        """Write the raw private key readable by its owner only (0600), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.private_bytes())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise CryptoError(
                f"cannot read the signing key {path} ({exc}); create it with enrolment"
            ) from exc
        return cls.from_bytes(raw)

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """The key stored at `path`, generated there first if missing (a client's first enrolment)."""
        if Path(path).exists():
            return cls.load(path)
        key = cls.generate()
        key.save(path)
        return key


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when `signature` is `public_key`'s Ed25519 signature of `message`."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), bytes(message))
    except (InvalidSignature, ValueError):
        return False
    return True


def write_registry(path: Path, keys: dict[int, bytes]) -> None:
    """The key holder's registry file: {"format": 1, "clients": {"<id>": "<hex public key>"}}."""
    body = {"format": 1, "clients": {str(int(c)): bytes(k).hex() for c, k in sorted(keys.items())}}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    os.replace(tmp, path)


def read_registry(path: Path) -> dict[int, bytes]:
    """{client id: 32-byte public key} from a registry file; CryptoError naming what is wrong."""
    try:
        body = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CryptoError(
            f"cannot read the enrolment registry {path} ({exc}); write it with privfl enrolment"
        ) from exc
    if not isinstance(body, dict) or body.get("format") != 1 or not isinstance(body.get("clients"), dict):
        raise CryptoError(
            f"{path} is not a privfl enrolment registry (expected format 1 with a 'clients' table)"
        )
    out: dict[int, bytes] = {}
    for cid, hexkey in body["clients"].items():
        try:
            client, key = int(cid), bytes.fromhex(hexkey)
        except (TypeError, ValueError) as exc:
            raise CryptoError(f"{path}: entry {cid!r}: {hexkey!r} is not a client id and hex key") from exc
        if client < 0 or len(key) != PUBLIC_KEY_BYTES:
            raise CryptoError(f"{path}: client {cid} has a {len(key)}-byte key, Ed25519 keys are 32 bytes")
        Ed25519PublicKey.from_public_bytes(key)  # refuses bytes that are not a curve point encoding
        out[client] = key
    if len(set(out.values())) != len(out):
        raise CryptoError(f"{path}: two clients share one public key; every client enrols its own key")
    return out


def enrol_clients(client_ids: list[int]) -> tuple[dict[int, SigningKey], dict[int, bytes]]:
    """Fresh signing keys for simulated clients and the registry the key holder reads."""
    keys = {int(c): SigningKey.generate() for c in client_ids}
    return keys, {c: k.public_bytes() for c, k in keys.items()}
