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

One module per job: `packing` (range packing, RoundSpec), `payload` (wire format, context facts),
`keyholder`, `encryptor`, `aggregator`, `summation` (CkksSummation). The parameters, `CkksParams`,
are settings like any other and live in `privfl.config`, so `ExperimentConfig.validate()` checks
them before any data work.
"""

from privfl.config import HE_STANDARD_128_MAX_BITS, PRECISION_TARGET_BITS, CkksParams
from privfl.fl.secure.aggregator import Aggregator
from privfl.fl.secure.encryptor import Encryptor, encrypt_contribution
from privfl.fl.secure.keyholder import DecryptedSum, KeyHolder
from privfl.fl.secure.packing import (
    META_BOUND_BITS,
    RangeOverflow,
    RoundSpec,
    Unpacked,
    next_bound_bits,
    pack,
    packed_length,
    unpack,
)
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
from privfl.fl.secure.summation import CkksSummation

__all__ = [
    "FORMAT_VERSION",
    "HE_STANDARD_128_MAX_BITS",
    "MAGIC_AGGREGATE",
    "MAGIC_CONTRIBUTION",
    "META_BOUND_BITS",
    "PRECISION_TARGET_BITS",
    "Aggregator",
    "CkksParams",
    "CkksSummation",
    "DecryptedSum",
    "Encryptor",
    "KeyHolder",
    "RangeOverflow",
    "RoundSpec",
    "Unpacked",
    "_Header",
    "_Rejected",
    "_read_payload",
    "_write_payload",
    "context_fingerprint",
    "encrypt_contribution",
    "next_bound_bits",
    "pack",
    "packed_length",
    "unpack",
]
