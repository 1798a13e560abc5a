"""The built-in engine's CKKS summation: simulated clients, and the server as a relay to a key
holder that runs as its own OS process (`privfl keyholder serve`, spawned here on loopback).

This process never holds the secret key. Its simulated clients hold their own Ed25519 signing
keys (enrolled with the key holder when it starts) and pin the key holder's verify key, which the
child process prints when it is ready; the server half only forwards announcements, signed
ciphertexts and the released sum (docs/secure-aggregation.md).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from privfl.errors import CryptoError
from privfl.fl.aggregate import Contribution, SumResult
from privfl.fl.enrolment import enrol_clients
from privfl.fl.keyholder_party import KeyHolderClient, PinnedEncryptor, spawn_keyholder

log = logging.getLogger(__name__)


class RelayedCkksSummation:
    """`Summation` over a key-holder process: begin_round opens the round at the key holder,
    submit seals (client) and relays (server) one contribution, finish asks for the one sum.

    A client that cannot send (non-finite update, weight outside the published bound) and a payload
    the key holder refuses are client faults: logged and counted in stats["rejected"]; the round
    goes on with the others and is released if at least min_clients remain.
    """

    def __init__(self, cfg, client_ids: list[int], *, debug_check: bool = False) -> None:
        from privfl.fl.engines.messages import config_to_text
        from privfl.fl.keyholder_party import keyholder_settings

        keyholder_settings(cfg)  # every setting fails here, before a process is started
        self.cfg = cfg
        self.debug_check = debug_check
        self._config_text = config_to_text(cfg)
        self._client_ids = list(client_ids)
        self._bounds: tuple[int, int] | None = None
        self._process = None
        self._conn: KeyHolderClient | None = None
        self._round: tuple[int, int, bytes, bytes] | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def _start(self) -> None:
        keys, registry = enrol_clients(self._client_ids)
        self._keys = keys
        address = self.cfg.secure.keyholder
        if address:
            pinned = bytes.fromhex(self.cfg.secure.keyholder_key) if self.cfg.secure.keyholder_key else b""
            if not pinned:
                raise CryptoError(
                    f"secure.keyholder = {address!r} needs secure.keyholder_key (the key it prints) to pin"
                )
        else:
            self._process = spawn_keyholder(self._config_text, registry, bounds=self._bounds)
            address, pinned = self._process.address, self._process.verify_key
        self._conn = KeyHolderClient(address)
        self._encryptor = PinnedEncryptor(pinned, self._conn.public_context)

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

    # --- Summation ---------------------------------------------------------------------------------
    def begin_round(self, round_index: int, n_params: int) -> None:
        if self._conn is None:
            self._start()
        announcement, signature = self._conn.open_round(round_index, n_params)
        self._round = (round_index, n_params, announcement, signature)
        self._timers = {"encrypt_s": 0.0, "aggregate_s": 0.0, "decrypt_s": 0.0, "encrypt_cpu_s": 0.0}
        self._upload, self._payloads, self._rejected = 0, 0, 0
        self._plain = {}

    def submit(self, contribution: Contribution) -> None:
        if self._round is None:
            raise RuntimeError("begin_round() must be called before submit()")
        r, _, announcement, signature = self._round
        cid = contribution.client_id
        t0, c0 = time.perf_counter(), time.process_time()
        try:  # the client's half
            payload, signed, clamped = self._encryptor.seal(
                contribution, announcement, signature, self._keys[cid]
            )
        except CryptoError as exc:
            self._rejected += 1
            log.warning("round %d: client %d sends nothing: %s", r, cid, exc)
            return
        self._timers["encrypt_s"] += time.perf_counter() - t0
        self._timers["encrypt_cpu_s"] += time.process_time() - c0
        if clamped:
            log.info("round %d: client %d clamped its update to the published bound", r, cid)
        t0 = time.perf_counter()
        reason = self._conn.submit(r, cid, payload, signed)  # the server's half: relay
        self._timers["aggregate_s"] += time.perf_counter() - t0
        self._upload += len(payload) + len(signed)
        self._payloads += 1
        if reason is not None:
            self._rejected += 1
            log.warning("round %d: the key holder refused client %d: %s", r, cid, reason)
        elif self.debug_check:
            self._plain[cid] = (np.asarray(contribution.vector, dtype=np.float64), float(contribution.weight))

    def finish(self) -> SumResult:
        if self._round is None:
            raise RuntimeError("begin_round() must be called before finish()")
        r, n_params, announcement, _ = self._round
        self._round = None
        t0 = time.perf_counter()
        released = self._conn.release(r)
        self._timers["decrypt_s"] += time.perf_counter() - t0
        self._bounds = released.next_bounds
        from privfl.fl.keyholder_party import RoundAnnouncement

        stats = {
            **self._timers,
            "bytes_per_client": self._upload / max(self._payloads, 1),
            "rejected": self._rejected,
            "he_bound_bits": list(RoundAnnouncement.from_bytes(announcement).bounds),
        }
        if self.debug_check and self._plain:
            plain = sum(v for v, _ in self._plain.values())
            weight = sum(w for _, w in self._plain.values())
            err = float(np.max(np.abs(released.vector - plain))) if n_params else 0.0
            peak = float(np.max(np.abs(plain))) if n_params else 0.0
            stats["max_abs_error"] = err
            stats["max_rel_error"] = err / peak if peak > 0 else err
            stats["weight_abs_error"] = abs(released.weight - weight)
        return SumResult(released.vector, released.weight, released.count, stats)

    def state(self) -> dict:
        """The public bounds the key holder announced for the next round (a resumed run starts there)."""
        return {"bound_bits": None if self._bounds is None else list(self._bounds)}

    def load_state(self, state: dict) -> None:
        bounds = state.get("bound_bits")
        if isinstance(bounds, list) and len(bounds) == 2:
            self._bounds = (int(bounds[0]), int(bounds[1]))
