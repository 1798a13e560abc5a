"""CKKS secure aggregation (TenSEAL) with a key holder that is a party of its own.

Parties, which exchange bytes only (docs/secure-aggregation.md has the threat model):

  key holder  (`privfl keyholder serve`, its own OS process; `keyholder.KeyHolder`) the secret
              key, the enrolment registry of client signing keys, per-round state. It announces
              each round's public packing (signed), verifies and sums the clients' signed
              ciphertexts itself, and releases one sum per round of >= min_clients clients.
  client      (`encryptor.Encryptor`) checks the announcement against the key-holder key it
              pinned, clamps, packs, encrypts with the public context and signs its payload.
  server      a relay (`service.KeyHolderClient`): forwards announcements and signed payloads,
              receives the one sum. It never holds the secret key.

`summation.CkksSummation` plays client and relay behind aggregate.py's `Summation` protocol and
starts the key holder as a child process unless secure.keyholder names one run apart.

One module per job: `packing` (one bound per round), `payload` (wire format, context facts),
`enrolment` (Ed25519 keys, registry), `keyholder`, `encryptor`, `service` (socket protocol,
spawning), `summation`. The parameters, `CkksParams`, live in `privfl.config`.
"""

from privfl.config import HE_STANDARD_128_MAX_BITS, PRECISION_TARGET_BITS, CkksParams
from privfl.fl.secure.enrolment import SigningKey, enrol_clients, read_registry, write_registry
from privfl.fl.secure.keyholder import KeyHolder, Released, RoundAnnouncement
from privfl.fl.secure.packing import pack_one, unpack_sum
from privfl.fl.secure.payload import (
    FORMAT_VERSION,
    MAGIC_AGGREGATE,
    MAGIC_CONTRIBUTION,
    _Header,
    _read_payload,
    _Rejected,
    _write_payload,
    context_fingerprint,
)
from privfl.fl.secure.service import KeyHolderClient, keyholder_settings, spawn_keyholder


def __getattr__(name: str):
    """The client and summation sides import privfl.fl.aggregate (and with it torch) only when
    asked for, so that the key-holder process (`privfl keyholder serve`) starts without torch."""
    if name == "Encryptor":
        from privfl.fl.secure.encryptor import Encryptor

        return Encryptor
    if name == "CkksSummation":
        from privfl.fl.secure.summation import CkksSummation

        return CkksSummation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMAT_VERSION",
    "HE_STANDARD_128_MAX_BITS",
    "MAGIC_AGGREGATE",
    "MAGIC_CONTRIBUTION",
    "PRECISION_TARGET_BITS",
    "CkksParams",
    "CkksSummation",
    "Encryptor",
    "KeyHolder",
    "KeyHolderClient",
    "Released",
    "RoundAnnouncement",
    "SigningKey",
    "_Header",
    "_Rejected",
    "_read_payload",
    "_write_payload",
    "context_fingerprint",
    "enrol_clients",
    "keyholder_settings",
    "pack_one",
    "read_registry",
    "spawn_keyholder",
    "unpack_sum",
    "write_registry",
]
