"""`CkksSummation`, the encrypted `Summation`: encodes on the client side, sums and decrypts on the server."""

from __future__ import annotations

import time

import numpy as np

from privfl.config import CkksParams
from privfl.errors import CryptoError
from privfl.fl.aggregate import Contribution, ContributionRule, RoundKeys, SumResult, Upload
from privfl.fl.client import Update
from privfl.fl.secure.aggregator import Aggregator
from privfl.fl.secure.encryptor import Encryptor
from privfl.fl.secure.keyholder import KeyHolder
from privfl.fl.secure.packing import RangeOverflow, RoundSpec, next_bound_bits


class CkksSummation:
    """Encrypted summation policy: the three roles behind the `Summation` protocol.

    `encode` is the client (apply the policy, pack, encrypt with the round's public context);
    `submit` and `finish` are the server (aggregate ciphertexts, then the key holder decrypts the
    sum). In one process (the built-in engine) the same object plays both sides; under Flower
    each client's copy only encodes.

    stats per round: encrypt_s, aggregate_s, decrypt_s (seconds), bytes_per_client (upload),
    rejected, he_bound_bits (packed bounds), and with debug_check max_abs_error / max_rel_error
    against a plaintext sum kept here (never in the Aggregator).
    """

    def __init__(self, params: CkksParams, *, debug_check: bool = False, min_clients: int = 1) -> None:
        self.params = params.validate()
        self.min_clients = min_clients
        self.debug_check = debug_check
        self._key_holder = KeyHolder(params, min_clients=min_clients)
        self._encryptor_context = self._key_holder.public_context()
        self._encryptor = Encryptor(self._encryptor_context)
        self._bounds: tuple[int, ...] | None = (params.bound_bits,) if params.bound_bits is not None else None
        self._aggregator: Aggregator | None = None
        self._timers: dict[str, float] = {}
        self._upload_bytes = 0
        self._payloads = 0
        self._plain: tuple[np.ndarray, float] | None = None
        self._pending: dict[int, tuple[np.ndarray, float]] = {}
        self._keys: RoundKeys | None = None
        self._clipped = 0

    @property
    def public_context(self) -> bytes:
        """For clients outside this process (an engine that ships bytes)."""
        return self._key_holder.public_context()

    @property
    def round_spec(self) -> RoundSpec:
        """The current round's public spec, for clients outside this process."""
        if self._aggregator is None:
            raise RuntimeError("begin_round() must be called first")
        return self._aggregator.spec

    def begin_round(self, round_index: int, n_params: int) -> RoundKeys:
        bounds = self._bounds or tuple(self.params.calibration_bound_bits)
        spec = RoundSpec(round_index, n_params, bounds)
        self._aggregator = Aggregator(self.public_context, spec, max_clients=self.params.max_clients)
        self._timers = {"encrypt_s": 0.0, "aggregate_s": 0.0, "decrypt_s": 0.0}
        self._upload_bytes = self._payloads = 0
        self._clipped = 0
        self._plain = (np.zeros(n_params), 0.0) if self.debug_check else None
        self._pending.clear()
        self._keys = RoundKeys(round_index, n_params, self.public_context, bounds)
        return self._keys

    def encode(self, update: Update, contribution: ContributionRule, keys: RoundKeys) -> Upload:
        """The client: apply the policy, pack at the round's bounds, encrypt with the public context."""
        if keys.public_context is None:
            raise CryptoError(
                f"round {keys.round_index}: no public CKKS context came with the round; server and "
                "clients must run the same secure.scheme"
            )
        return self._encrypt(contribution(update), keys, update.num_samples)

    def add(self, contribution: Contribution) -> None:
        """Both sides in one process: encrypt one contribution for this round and submit it."""
        if self._keys is None:
            raise RuntimeError("begin_round() must be called before add()")
        self.submit(self._encrypt(contribution, self._keys, 0), lambda update: contribution)

    def _encrypt(self, c: Contribution, keys: RoundKeys, num_samples: int) -> Upload:
        t0 = time.perf_counter()
        spec = RoundSpec(keys.round_index, keys.n_params, tuple(keys.bound_bits))
        payload = self._encryptor_for(keys.public_context).encrypt(c, spec)
        encode_s = time.perf_counter() - t0
        if self.debug_check:  # kept beside the aggregator, never in it (one process only)
            self._pending[c.client_id] = (np.asarray(c.vector, dtype=np.float64), float(c.weight))
        return Upload(
            c.client_id,
            keys.round_index,
            num_samples,
            ciphertext=payload,
            clipped=c.clipped,
            encode_s=encode_s,
        )

    def submit(self, upload: Upload, contribution: ContributionRule) -> None:
        """The server: hand the ciphertext to the aggregator (a refused one is logged and dropped)."""
        if upload.ciphertext is None:
            raise CryptoError(
                f"client {upload.client_id} sent its update in the clear to an encrypted summation; "
                "server and clients must run the same secure.scheme"
            )
        self._timers["encrypt_s"] += upload.encode_s
        accepted = self.submit_encrypted(upload.client_id, upload.ciphertext)
        pending = self._pending.pop(upload.client_id, None)
        if accepted:
            self._clipped += int(upload.clipped)
            if self._plain is not None and pending is not None:
                vector, weight = self._plain
                self._plain = (vector + pending[0], weight + pending[1])

    def submit_encrypted(self, client_id: int, payload: bytes) -> bool:
        """Hand a payload to the aggregator; False when it is refused (logged)."""
        if self._aggregator is None:
            raise RuntimeError("begin_round() must be called before submit()")
        t0 = time.perf_counter()
        accepted = self._aggregator.add(client_id, payload)
        self._timers["aggregate_s"] += time.perf_counter() - t0
        self._upload_bytes += len(payload)
        self._payloads += 1
        return accepted

    def _encryptor_for(self, public_context: bytes) -> Encryptor:
        if public_context == self._encryptor_context:
            return self._encryptor
        self._encryptor = Encryptor(public_context)  # refuses a context that carries a secret key
        self._encryptor_context = public_context
        return self._encryptor

    def finish(self) -> SumResult:
        aggregator = self._aggregator
        if aggregator is None:
            raise RuntimeError("begin_round() must be called before finish()")
        self._aggregator = None
        spec = aggregator.spec
        if aggregator.count < self.min_clients:
            raise CryptoError(
                f"round {spec.round_index}: only {aggregator.count} contribution(s) were accepted "
                f"({aggregator.rejected} rejected), fewer than min_clients={self.min_clients}; the aggregate "
                "is not decrypted. Lower min_clients or sample more clients per round"
            )
        t0 = time.perf_counter()
        payload = aggregator.result()
        self._timers["aggregate_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            decrypted = self._key_holder.decrypt(payload, spec.n_params)
        except RangeOverflow as exc:
            self._adapt(exc.magnitude)
            raise
        self._timers["decrypt_s"] += time.perf_counter() - t0
        self._adapt(decrypted.magnitude)
        stats = {
            **self._timers,
            "bytes_per_client": self._upload_bytes / max(self._payloads, 1),
            "rejected": aggregator.rejected,
            "he_bound_bits": list(spec.bound_bits),
        }
        if self._plain is not None:
            plain_vector, plain_weight = self._plain
            err = float(np.max(np.abs(decrypted.vector - plain_vector))) if spec.n_params else 0.0
            peak = float(np.max(np.abs(plain_vector))) if spec.n_params else 0.0
            stats["max_abs_error"] = err
            stats["max_rel_error"] = err / peak if peak > 0 else err
            stats["weight_abs_error"] = abs(decrypted.weight - plain_weight)
        return SumResult(decrypted.vector, decrypted.weight, decrypted.count, stats, self._clipped)

    def state(self) -> dict:
        """The bound the next round packs at (adapted from the last decrypted magnitude)."""
        return {"bound_bits": None if self._bounds is None else list(self._bounds)}

    def load_state(self, state: dict) -> None:
        """Continue from a checkpoint: the next round uses the bound an uninterrupted run would."""
        bounds = state.get("bound_bits")
        if bounds is not None and self.params.bound_bits is None:
            self._bounds = tuple(int(b) for b in bounds)

    def _adapt(self, magnitude: float) -> None:
        """Next round's bound from this round's public magnitude (unless the bound is fixed)."""
        if self.params.bound_bits is None and magnitude > 0:
            self._bounds = (next_bound_bits(magnitude, self.params.margin_bits),)
