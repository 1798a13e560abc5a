"""`CkksSummation`, the encrypted `Summation`: clients seal, the server relays, a key holder in its
own process sums and releases one sum per round.

`encode` is the client: apply the policy, check the key holder's signed announcement against the
pinned key, clamp, pack, encrypt with the public context and sign. `begin_round`, `submit` and
`finish` are the server, a relay: open the round at the key holder, forward each signed payload,
ask for the one sum. The process that runs the server half never holds the secret key.

Where the key holder is:
  secure.keyholder = ""          this summation starts `privfl keyholder serve` as a child process
                                 on loopback (the built-in engine; a Flower ServerApp on its own
                                 machine), with the registry of the clients it was told about;
  secure.keyholder = host:port   one started apart by its own operator, with its own registry;
                                 clients must pin its key (secure.keyholder_key or their node config).

In the built-in engine one object plays both halves: `begin_round` then also enrols every simulated
client (fresh Ed25519 keys) with the key holder it spawns, and the clients pin the key the child
printed. Under Flower each client's copy only encodes, with the key its node enrolled (`enrol`).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from privfl.errors import CryptoError
from privfl.fl.aggregate import Contribution, ContributionRule, RoundKeys, SumResult, Upload
from privfl.fl.client import Update
from privfl.fl.secure.encryptor import Encryptor
from privfl.fl.secure.enrolment import SigningKey, enrol_clients
from privfl.fl.secure.keyholder import RoundAnnouncement
from privfl.fl.secure.service import KeyHolderClient, keyholder_settings, spawn_keyholder

log = logging.getLogger(__name__)


class CkksSummation:
    """Encrypted summation over a key-holder party (see the module docstring).

    A client that cannot send (non-finite update, weight outside the published bound) and a payload
    the key holder refuses are client faults: logged, counted in stats["rejected"], and the round
    is released without them if at least min_clients remain.

    stats per round: encrypt_s, encrypt_cpu_s (clients), aggregate_s (relay + key-holder sum),
    decrypt_s (release), bytes_per_client, rejected, he_bound_bits; with debug_check (one process
    only) max_abs_error / max_rel_error / weight_abs_error against a plaintext sum kept client-side.
    """

    def __init__(self, cfg, *, debug_check: bool = False) -> None:
        keyholder_settings(cfg)  # every setting fails here, before a process is started
        self.cfg = cfg
        self.debug_check = debug_check
        s = cfg.secure
        self._pin: bytes | None = bytes.fromhex(s.keyholder_key) if s.keyholder_key else None
        self._client_keys: dict[int, SigningKey] = {}
        self._registry: dict[int, bytes] | None = None
        self._bounds: tuple[int, int] | None = None
        self._process = None
        self._conn: KeyHolderClient | None = None
        self._verify_key: bytes | None = None
        self._encryptor: tuple[bytes, bytes, Encryptor] | None = None
        self._round: RoundKeys | None = None
        self._pending: dict[int, tuple[np.ndarray, float]] = {}

    # --- the client side ---------------------------------------------------------------------------
    def enrol(self, client_id: int, key: SigningKey, keyholder_key: bytes | None = None) -> None:
        """A client process: sign with `key`; pin `keyholder_key` (its node's own copy) if given."""
        self._client_keys[int(client_id)] = key
        if keyholder_key is not None:
            self._pin = bytes(keyholder_key)

    def encode(self, update: Update, contribution: ContributionRule, keys: RoundKeys) -> Upload:
        """The client: policy, then check, clamp, pack, encrypt, sign. A client fault sends nothing."""
        if keys.public_context is None or keys.announcement is None or keys.signature is None:
            raise CryptoError(
                f"round {keys.round_index}: no public CKKS context or key-holder announcement came with the "
                "round; server and clients must run the same secure.scheme"
            )
        return self._seal(contribution(update), keys, update.num_samples)

    def _seal(self, c: Contribution, keys: RoundKeys, num_samples: int) -> Upload:
        """Check, clamp, pack, encrypt and sign one contribution with its client's key."""
        cid = c.client_id
        key = self._client_keys.get(cid)
        if key is None:
            raise CryptoError(
                f"client {cid} has no enrolled signing key in this process: create one with "
                "`privfl keyholder enrol` and give its path as the node's signing-key"
            )
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            payload, signature, clamped = self._encryptor_for(keys).seal(
                c, keys.announcement, keys.signature, key
            )
        except CryptoError as exc:
            log.warning("round %d: client %d sends nothing: %s", keys.round_index, cid, exc)
            payload, signature, clamped = b"", b"", False
        if clamped:
            log.info("round %d: client %d clamped its update to the published bound", keys.round_index, cid)
        if self.debug_check and payload:
            self._pending[cid] = (np.asarray(c.vector, dtype=np.float64), float(c.weight))
        return Upload(
            cid,
            keys.round_index,
            num_samples,
            ciphertext=payload,
            signature=signature,
            clipped=c.clipped,
            encode_s=time.perf_counter() - t0,
            encode_cpu_s=time.process_time() - c0,
        )

    def _encryptor_for(self, keys: RoundKeys) -> Encryptor:
        pin = self._pin
        if pin is None:
            if self.cfg.secure.keyholder:
                raise CryptoError(
                    f"secure.keyholder = {self.cfg.secure.keyholder!r} is run apart, but this client pinned "
                    "no key for it: set secure.keyholder_key, or start the SuperNode with "
                    '--node-config "keyholder-key=<hex key privfl keyholder serve printed>"'
                )
            # a key holder the server side spawned itself: the server operator runs both parties,
            # so the key it forwards is all there is to trust (docs/secure-aggregation.md)
            pin = keys.keyholder_key
        if pin is None:
            raise CryptoError("no key-holder key to check the round's announcement against")
        cached = self._encryptor
        if cached is None or cached[0] != pin or cached[1] != keys.public_context:
            cached = (pin, keys.public_context, Encryptor(pin, keys.public_context))
            self._encryptor = cached
        return cached[2]

    # --- the server side: a relay ------------------------------------------------------------------
    def register(self, registry: dict[int, bytes]) -> None:
        """Clients' public keys for a key holder this summation will spawn (Flower: from the roll call)."""
        if self._conn is not None:
            raise CryptoError("the key holder is already running; register clients before the first round")
        self._registry = dict(registry)

    def _start(self) -> None:
        address = self.cfg.secure.keyholder
        if address:
            self._conn = KeyHolderClient(address)
            self._verify_key = self._conn.verify_key
            if self._pin is not None and self._pin != self._verify_key:
                raise CryptoError(
                    f"the key holder at {address} has key {self._verify_key.hex()}, not the pinned "
                    f"secure.keyholder_key {self._pin.hex()}"
                )
            return
        registry = self._registry
        if registry is None:  # the built-in engine: this process simulates every client
            keys, registry = enrol_clients(list(range(self.cfg.train.clients)))
            self._client_keys.update(keys)
        self._process = spawn_keyholder(self.cfg, registry, bounds=self._bounds)
        self._conn = KeyHolderClient(self._process.address)
        self._verify_key = self._process.verify_key
        if self._registry is None:
            self._pin = self._verify_key  # simulated clients pin what the child printed

    def begin_round(self, round_index: int, n_params: int) -> RoundKeys:
        if self._conn is None:
            self._start()
        announcement, signature = self._conn.open_round(round_index, n_params)
        bounds = RoundAnnouncement.from_bytes(announcement).bounds
        self._timers = {"encrypt_s": 0.0, "encrypt_cpu_s": 0.0, "aggregate_s": 0.0, "decrypt_s": 0.0}
        self._upload, self._payloads, self._rejected, self._clipped = 0, 0, 0, 0
        self._accepted: dict[int, bool] = {}
        self._round = RoundKeys(
            round_index,
            n_params,
            self._conn.public_context,
            bounds,
            announcement=announcement,
            signature=signature,
            keyholder_key=self._verify_key,
        )
        return self._round

    def submit(self, upload: Upload, contribution: ContributionRule) -> None:
        """The server: forward one signed payload to the key holder (a refused one is logged, dropped)."""
        if self._round is None:
            raise RuntimeError("begin_round() must be called before submit()")
        if upload.ciphertext is None:
            raise CryptoError(
                f"client {upload.client_id} sent its update in the clear to an encrypted summation; "
                "server and clients must run the same secure.scheme"
            )
        r, cid = self._round.round_index, upload.client_id
        self._timers["encrypt_s"] += upload.encode_s
        self._timers["encrypt_cpu_s"] += upload.encode_cpu_s
        if not upload.ciphertext:
            self._rejected += 1  # the client sent nothing (it logged why)
            self._pending.pop(cid, None)
            return
        t0 = time.perf_counter()
        reason = self._conn.submit(r, cid, upload.ciphertext, upload.signature or b"")
        self._timers["aggregate_s"] += time.perf_counter() - t0
        self._upload += len(upload.ciphertext) + len(upload.signature or b"")
        self._payloads += 1
        if reason is not None:
            # the client's own plaintext stays: a refused payload under its id (a replay, a forgery)
            # must not drop it from the debug check; finish() compares only the released clients
            self._rejected += 1
            log.warning("round %d: the key holder refused client %d: %s", r, cid, reason)
        else:
            self._clipped += int(upload.clipped)

    def add(self, contribution: Contribution) -> None:
        """Both halves in one process: encode one contribution for this round and submit it."""
        if self._round is None:
            raise RuntimeError("begin_round() must be called before add()")
        self.submit(self._seal(contribution, self._round, 0), lambda _: contribution)

    def finish(self) -> SumResult:
        keys = self._round
        if keys is None:
            raise RuntimeError("begin_round() must be called before finish()")
        self._round = None
        t0 = time.perf_counter()
        released = self._conn.release(keys.round_index)
        self._timers["decrypt_s"] += time.perf_counter() - t0
        self._bounds = released.next_bounds
        stats = {
            **self._timers,
            "bytes_per_client": self._upload / max(self._payloads, 1),
            "rejected": self._rejected,
            "he_bound_bits": list(keys.bound_bits),
        }
        pending = {c: self._pending.pop(c) for c in released.clients if c in self._pending}
        self._pending.clear()
        if self.debug_check and pending:
            plain = sum(v for v, _ in pending.values())
            weight = sum(w for _, w in pending.values())
            err = float(np.max(np.abs(released.vector - plain)))  # n_params >= 1: open_round says so
            peak = float(np.max(np.abs(plain)))
            stats["max_abs_error"] = err
            stats["max_rel_error"] = err / peak if peak > 0 else err
            stats["weight_abs_error"] = abs(released.weight - weight)
        return SumResult(released.vector, released.weight, released.count, stats, self._clipped)

    def state(self) -> dict:
        """The public bounds the key holder announced for the next round (a resumed run starts there)."""
        return {"bound_bits": None if self._bounds is None else list(self._bounds)}

    def load_state(self, state: dict) -> None:
        bounds = state.get("bound_bits")
        if isinstance(bounds, list) and len(bounds) == 2:
            self._bounds = (int(bounds[0]), int(bounds[1]))

    def close(self) -> None:
        """Stop the key-holder process this summation started (it holds the only secret key)."""
        if self._conn is not None:
            try:
                if self._process is not None:
                    self._conn.shutdown()
                else:
                    self._conn.close()
            except CryptoError:
                pass  # already gone: nothing left to stop
            self._conn = None
        if self._process is not None:
            self._process.stop()
            self._process = None
