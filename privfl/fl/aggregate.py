"""Aggregation arithmetic (pure functions) and the plaintext summation policy.

A client turns its update into a `Contribution`: a vector already multiplied by its weight
(FedAvg: the sample count n_k; user-level DP: 1 after clipping and noising) and the weight itself.
A summation policy adds contributions as they arrive (memory flat in the number of clients) and
hands the sums to the round loop, which divides:

    w_{t+1} = w_t + sum_k vector_k / denominator,   denominator = sum_k weight_k (FedAvg)

A summation also owns what travels: `encode` runs on the client and turns its `Update` into an
`Upload` (plaintext: the update itself, which the server weights; encrypted: the contribution as
a ciphertext), `submit` runs on the server and adds an Upload into the round's sum. Round loops
call the two in that order and never look at the scheme. The encrypted summation is
`privfl.fl.secure.CkksSummation`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from privfl.errors import CryptoError

if TYPE_CHECKING:  # torch: a ClientApp answering a roll call or a SecAgg+ stage never trains
    from privfl.fl.client import Update


@dataclass(frozen=True)
class Contribution:
    """What one client sends for aggregation, before any encryption.

    vector: float64 [n_params], the client's update already multiplied by `weight`.
    weight: the client's weight (FedAvg: number of local training samples).
    """

    client_id: int
    vector: np.ndarray
    weight: float
    clipped: bool = False  # the policy clipped the update to its norm bound


ContributionRule = Callable[["Update"], Contribution]
"""A policy's `contribution` method: how an Update is weighted (and clipped, noised) for the sum."""


@dataclass(frozen=True)
class RoundKeys:
    """The public material every client of a round encodes with: the round and model size, and for
    an encrypted sum the public context and the round's packing bounds (no secret key, ever)."""

    round_index: int
    n_params: int
    public_context: bytes | None = None
    bound_bits: tuple[int, ...] = ()
    announcement: bytes | None = None  # the key holder's round announcement (bounds, fingerprint, run id)
    signature: bytes | None = None  # the key holder's Ed25519 signature of it
    keyholder_key: bytes | None = (
        None  # the key the relay says signed it (trusted only where nothing is pinned)
    )


@dataclass(frozen=True)
class Upload:
    """What one client sends the server for one round: its update in the clear (a plaintext sum; the
    server applies the policy) or its contribution as a ciphertext (the client applied the policy).

    clipped: the client's policy clipped its update (the server cannot see this in a ciphertext).
    encode_s: seconds the client spent encoding (encryption).
    """

    client_id: int
    round_index: int
    num_samples: int
    delta: np.ndarray | None = None
    ciphertext: bytes | None = None  # b"": an encrypting client that sent nothing this round (it logged why)
    signature: bytes | None = None  # the client's Ed25519 signature over run, round, id, payload digest
    clipped: bool = False
    encode_s: float = 0.0
    encode_cpu_s: float = 0.0


@dataclass(frozen=True)
class SumResult:
    """The sums a summation policy returns at the end of a round; clipped: contributions clipped."""

    vector: np.ndarray
    weight: float
    count: int
    stats: dict = field(default_factory=dict)
    clipped: int = 0


class Summation(Protocol):
    """A policy that sums contributions of one round; plaintext or encrypted."""

    def begin_round(self, round_index: int, n_params: int) -> RoundKeys:
        """Start a round on the server; returns what its clients need to encode."""
        ...

    def encode(self, update: Update, contribution: ContributionRule, keys: RoundKeys) -> Upload:
        """The client side: what this client sends for `update`."""
        ...

    def submit(self, upload: Upload, contribution: ContributionRule) -> None:
        """The server side: add one client's Upload into the round's sum."""
        ...

    def finish(self) -> SumResult: ...

    def state(self) -> dict:
        """What must survive a checkpoint between rounds (e.g. CKKS's adapted bound); {} if nothing."""
        ...

    def load_state(self, state: dict) -> None: ...


def weighted_mean(vectors: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """sum_k w_k v_k / sum_k w_k, in float64 (McMahan et al.'s FedAvg average)."""
    if len(vectors) != len(weights) or not vectors:
        raise ValueError(f"need as many weights as vectors (got {len(vectors)} and {len(weights)})")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must sum to a positive number, got {total}")
    out = np.zeros_like(vectors[0], dtype=np.float64)
    for v, w in zip(vectors, weights, strict=True):
        out += float(w) * np.asarray(v, dtype=np.float64)
    return out / total


def clip_update(vector: np.ndarray, max_norm: float) -> tuple[np.ndarray, bool]:
    """Scale `vector` so its L2 norm is at most max_norm; returns (vector, was_clipped).

    A vector that is not finite (a client whose local training diverged) becomes zero: scaling NaN
    or inf leaves it NaN, which would break the norm bound DP-FedAvg's sensitivity rests on and
    turn the released model into NaN (found by `privfl attack audit`, docs/auditing.md).
    """
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm):
        return np.zeros_like(vector), True
    if norm <= max_norm or norm == 0.0:
        return vector, False
    return vector * (max_norm / norm), True


def gaussian_noise(n: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """n samples of N(0, std^2) drawn from rng (float64)."""
    return rng.normal(0.0, std, size=n)


class PlainSummation:
    """Plaintext running sum: the server sees every contribution (the paper's FedAvg)."""

    def __init__(self) -> None:
        self._vector: np.ndarray | None = None
        self._weight = 0.0
        self._count = 0
        self._clipped = 0

    def state(self) -> dict:
        return {}  # nothing carries over from one round to the next

    def load_state(self, state: dict) -> None:
        pass

    def begin_round(self, round_index: int, n_params: int) -> RoundKeys:
        self._vector = np.zeros(n_params, dtype=np.float64)
        self._weight = 0.0
        self._count = 0
        self._clipped = 0
        return RoundKeys(round_index, n_params)

    def encode(self, update: Update, contribution: ContributionRule, keys: RoundKeys) -> Upload:
        """The update in the clear: the server applies the policy (and may record the update)."""
        return Upload(update.client_id, update.round, update.num_samples, delta=update.delta)

    def submit(self, upload: Upload, contribution: ContributionRule) -> None:
        if upload.delta is None:
            raise CryptoError(
                f"client {upload.client_id} sent a ciphertext to a plaintext summation; "
                "server and clients must run the same secure.scheme"
            )
        from privfl.fl.client import Update  # the server side, which has torch loaded anyway

        update = Update(upload.client_id, upload.round_index, upload.delta, upload.num_samples, 0.0)
        self.add(contribution(update))

    def add(self, contribution: Contribution) -> None:
        """Add one contribution to the running sum."""
        if self._vector is None:
            raise RuntimeError("begin_round() must be called before submit()")
        if contribution.vector.shape != self._vector.shape:
            raise ValueError(
                f"client {contribution.client_id} sent {contribution.vector.shape[0]} values, "
                f"the model has {self._vector.shape[0]}"
            )
        self._vector += contribution.vector
        self._weight += float(contribution.weight)
        self._count += 1
        self._clipped += int(contribution.clipped)

    def finish(self) -> SumResult:
        if self._vector is None:
            raise RuntimeError("begin_round() must be called before finish()")
        result = SumResult(self._vector, self._weight, self._count, {}, self._clipped)
        self._vector = None
        return result
