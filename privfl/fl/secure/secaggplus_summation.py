"""`SecAggPlusSummation`, the masking `Summation`: SecAgg+ with no key holder (secure.scheme "secaggplus").

How its four stages ride on the round loop's one pass (`Federation.run_round`):

  encode    (client, after local training) the policy's contribution is encoded in fixed point
            [vector, weight, clipped-coordinate count] (`masking.FixedPoint`) and kept on the client
            with the round's fresh key pairs; the Upload carries only the public keys (stage 1).
  submit    (server) notes the keys of each client that trained.
  finish    (server) runs stages 2-4 through a `Relay` to the clients that advertised keys: share
            keys, masked input, unmask; then decodes the survivors' exact sum.

A `Relay` carries one stage's requests to clients and returns the replies of those that answered;
a client that does not answer has dropped. The built-in engine's relay calls this object's client
half in-process (`respond`); the Flower engine's goes over the Grid (`privfl.fl.engines`).

A round the protocol must abort (fewer than t live neighbours) sums to nothing: with
secure.on_abort = "skip" the policy skips it (logged, stats["secagg_aborted"] = 1), with "stop"
the run stops with the reason.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from privfl.errors import CryptoError
from privfl.fl.aggregate import Contribution, ContributionRule, RoundKeys, SumResult, Upload
from privfl.fl.client import Update
from privfl.fl.secure.masking import FixedPoint
from privfl.fl.secure.secaggplus import ClientRound, RoundAborted, ServerRound

log = logging.getLogger(__name__)

STAGES = ("share_keys", "masked_input", "unmask")
EXTRA_VALUES = 2  # after the model's parameters: the weight, the count of clipped coordinates


class Relay(Protocol):
    """Carries one SecAgg+ stage to clients; returns {client: reply} for those that answered."""

    def __call__(self, round_index: int, stage: str, requests: dict[int, object]) -> dict[int, object]: ...


@dataclass(frozen=True)
class SecAggParams:
    """The round's public protocol settings: fixed point, threshold t, ring size, dropout bound."""

    fixed: FixedPoint
    threshold: float  # t = floor(threshold * n) + 1 of each client's n ring neighbours
    neighbours: int | None  # n (odd, itself included); None: every client of the round
    max_dropout: float
    clip_values: bool = True  # False under user-level DP: values beyond the range wrap instead

    @classmethod
    def from_config(cls, cfg) -> SecAggParams:
        """From secure.* and the most clients a round can hold (config.clients_per_round)."""
        from privfl.config import clients_per_round

        s = cfg.secure
        return cls(
            FixedPoint(s.modulus_bits, s.value_range, clients_per_round(cfg)),
            s.threshold,
            s.neighbours,
            s.max_dropout,
            clip_values=cfg.train.mode != "user-dp",
        )


def encode_keys(pk1: bytes, pk2: bytes) -> bytes:
    return len(pk1).to_bytes(4, "little") + pk1 + pk2


def decode_keys(data: bytes) -> tuple[bytes, bytes]:
    n = int.from_bytes(data[:4], "little")
    if len(data) < 4 + n:
        raise CryptoError(f"a SecAgg+ key advertisement of {len(data)} bytes is truncated")
    return data[4 : 4 + n], data[4 + n :]


def message_bytes(message: object) -> int:
    """Bytes a stage message carries (arrays by size, bytes by length, containers summed)."""
    if isinstance(message, bytes):
        return len(message)
    if isinstance(message, np.ndarray):
        return message.nbytes
    if isinstance(message, dict):
        return sum(8 + message_bytes(v) for v in message.values())
    if isinstance(message, list | tuple):
        return sum(message_bytes(v) if not isinstance(v, int | str) else 8 for v in message)
    return 8


class SecAggPlusSummation:
    """SecAgg+ behind the `Summation` protocol (see the module docstring).

    stats per round: secagg_clients (advertised keys), secagg_survivors (in the sum),
    secagg_dropped, bytes_per_client (uploaded in every stage, per advertised client),
    download_bytes_per_client (what the server sent them after training),
    encode_s / encode_cpu_s (clients: encode, keys, masking), aggregate_s (server: relay and
    unmask), quant_error_bound (largest per-coordinate error of the decoded sum), and
    clipped_values (coordinates clipped to the range, summed inside the mask; not under DP).
    With debug_check (both halves in one process) max_abs_error against the plaintext sum.
    """

    def __init__(
        self,
        params: SecAggParams,
        *,
        on_abort: str = "skip",
        debug_check: bool = False,
        relay: Relay | None = None,
    ) -> None:
        self.params = params
        self.on_abort = on_abort
        self.debug_check = debug_check
        self.relay: Relay = relay or self.respond_all
        self._clients: dict[int, tuple[ClientRound, np.ndarray]] = {}  # the client half's secrets
        self._plain: dict[int, np.ndarray] = {}
        self._round: RoundKeys | None = None
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._clipped = 0
        self._timers: dict[str, float] = {}
        self._bytes = 0  # uploaded by the clients this round (keys, shares, masked inputs, unmask shares)
        self._down = 0  # sent to them after training (keys, forwarded shares, unmask requests)
        self._shuffle = random.SystemRandom()

    # --- the client half ---------------------------------------------------------------------------
    def encode(self, update: Update, contribution: ContributionRule, keys: RoundKeys) -> Upload:
        """The client: encode the contribution in fixed point, keep it, advertise fresh public keys."""
        t0, c0 = time.perf_counter(), time.process_time()
        c = contribution(update)
        p = self.params
        values = np.concatenate([np.asarray(c.vector, dtype=np.float64), [float(c.weight)]])
        encoded, clipped = p.fixed.encode(values, clip=p.clip_values)
        encoded = np.concatenate([encoded, np.asarray([clipped], dtype=np.uint64)])
        party = ClientRound(c.client_id)
        pk1, pk2 = party.advertise()
        self._clients[c.client_id] = (party, encoded)
        if self.debug_check:
            self._plain[c.client_id] = values
        return Upload(
            c.client_id,
            keys.round_index,
            update.num_samples,
            ciphertext=encode_keys(pk1, pk2),
            clipped=c.clipped,
            encode_s=time.perf_counter() - t0,
            encode_cpu_s=time.process_time() - c0,
        )

    def held(self, client_id: int) -> tuple[ClientRound, np.ndarray] | None:
        """This client's round secrets and encoded input, if this process holds them."""
        return self._clients.get(client_id)

    def hold(self, client_id: int, party: ClientRound, encoded: np.ndarray) -> None:
        """Restore a client's round state (a Flower node keeps it between messages)."""
        self._clients[client_id] = (party, encoded)

    def use_relay(self, relay: Relay) -> None:
        """Carry the stages over this relay (the Flower engine's Grid) instead of in-process calls."""
        self.relay = relay

    def respond(self, round_index: int, stage: str, client_id: int, request: object) -> object:
        """One client's answer to one stage's request (the relay's far end). Raises CryptoError when
        the client refuses (e.g. `UnmaskRefused`); a relay treats that client as dropped."""
        held = self._clients.get(client_id)
        if held is None:
            raise CryptoError(
                f"round {round_index}: client {client_id} holds no SecAgg+ state for this round"
            )
        party, encoded = held
        if stage == "share_keys":
            public_keys, threshold = request
            return party.share_keys(public_keys, threshold)
        if stage == "masked_input":
            return party.masked_input(request, encoded, self.params.fixed)
        if stage == "unmask":
            survivors, dropped = request
            return party.unmask(survivors, dropped)
        raise CryptoError(f"round {round_index}: unknown SecAgg+ stage {stage!r}; expected one of {STAGES}")

    def respond_all(self, round_index: int, stage: str, requests: dict[int, object]) -> dict[int, object]:
        """The built-in engine's relay: every client answers here; one that refuses is dropped."""
        replies: dict[int, object] = {}
        for cid, request in requests.items():
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                replies[cid] = self.respond(round_index, stage, cid, request)
            except CryptoError as exc:
                log.warning("round %d: client %d left SecAgg+ at %s: %s", round_index, cid, stage, exc)
            self._timers["encode_s"] = self._timers.get("encode_s", 0.0) + time.perf_counter() - t0
            self._timers["encode_cpu_s"] = self._timers.get("encode_cpu_s", 0.0) + time.process_time() - c0
        return replies

    # --- the server half ---------------------------------------------------------------------------
    def begin_round(self, round_index: int, n_params: int) -> RoundKeys:
        self._round = RoundKeys(round_index, n_params)
        self._keys, self._clipped, self._bytes, self._down = {}, 0, 0, 0
        self._timers = {"encode_s": 0.0, "encode_cpu_s": 0.0, "aggregate_s": 0.0}
        return self._round

    def submit(self, upload: Upload, contribution: ContributionRule) -> None:
        if self._round is None:
            raise RuntimeError("begin_round() must be called before submit()")
        if upload.ciphertext is None:
            raise CryptoError(
                f"client {upload.client_id} sent its update in the clear to a SecAgg+ summation; server and "
                "clients must run the same secure.scheme"
            )
        self._keys[upload.client_id] = decode_keys(upload.ciphertext)
        self._bytes += len(upload.ciphertext)
        self._clipped += int(upload.clipped)
        self._timers["encode_s"] += upload.encode_s
        self._timers["encode_cpu_s"] += upload.encode_cpu_s

    def add(self, contribution: Contribution) -> None:
        """Both halves in one process: encode one contribution for this round and submit it."""
        if self._round is None:
            raise RuntimeError("begin_round() must be called before add()")
        update = Update(contribution.client_id, self._round.round_index, np.zeros(0, np.float32), 0, 0.0)
        self.submit(self.encode(update, lambda _: contribution, self._round), lambda _: contribution)

    def _exchange(self, r: int, stage: str, requests: dict[int, object]) -> dict[int, object]:
        self._down += sum(message_bytes(m) for m in requests.values())
        replies = self.relay(r, stage, requests)
        self._bytes += sum(message_bytes(m) for m in replies.values())
        return {c: m for c, m in replies.items() if c in requests}

    def finish(self) -> SumResult:
        keys = self._round
        if keys is None:
            raise RuntimeError("begin_round() must be called before finish()")
        self._round = None
        r, p = keys.round_index, self.params
        advertised = len(self._keys)
        t0, clients_before = time.perf_counter(), self._timers["encode_s"]
        try:
            total, survivors = self._run_stages(r, keys.n_params)
        except RoundAborted as exc:
            self._clients.clear()
            self._plain.clear()
            if self.on_abort == "stop":
                raise RoundAborted(
                    f"{exc}; secure.on_abort = 'stop' ends the run here (resume it, or set 'skip')"
                ) from exc
            log.warning("round %d: SecAgg+ aborted, the round is skipped: %s", r, exc)
            stats = {"secagg_aborted": 1, "secagg_clients": advertised, "secagg_survivors": 0}
            return SumResult(np.zeros(keys.n_params), 0.0, 0, stats)
        # the in-process relay books the clients' seconds in encode_s; the rest is the server's
        self._timers["aggregate_s"] += time.perf_counter() - t0 - (self._timers["encode_s"] - clients_before)
        decoded = p.fixed.decode(total[: keys.n_params + 1])
        clipped_values = int(total[-1])  # a count, < K * n_params, never near the modulus
        stats = {
            **self._timers,
            "secagg_aborted": 0,
            "secagg_clients": advertised,
            "secagg_survivors": len(survivors),
            "secagg_dropped": advertised - len(survivors),
            "bytes_per_client": self._bytes / max(advertised, 1),
            "download_bytes_per_client": self._down / max(advertised, 1),
            "quant_error_bound": p.fixed.sum_error_bound(len(survivors)),
            "quant_step": p.fixed.step,
        }
        if p.clip_values:
            stats["clipped_values"] = clipped_values
        if self.debug_check and self._plain:
            plain = sum(self._plain[c] for c in survivors if c in self._plain)
            stats["max_abs_error"] = float(np.max(np.abs(decoded - plain)))
        self._clients.clear()
        self._plain.clear()
        return SumResult(decoded[: keys.n_params], float(decoded[-1]), len(survivors), stats, self._clipped)

    def _run_stages(self, r: int, n_params: int) -> tuple[np.ndarray, list[int]]:
        p = self.params
        server = ServerRound(r, p.fixed, p.neighbours, p.threshold, n_params + EXTRA_VALUES)
        order = sorted(self._keys)
        self._shuffle.shuffle(order)  # ring places from the OS, not the config seed
        to_send = server.collect_keys(self._keys, order)
        shares = self._exchange(r, "share_keys", to_send)
        inbox = server.route_shares(shares)
        for cid, y in self._exchange(r, "masked_input", inbox).items():
            server.add_masked(cid, np.asarray(y, dtype=np.uint64))
        requests = server.unmask_requests()
        replies = self._exchange(r, "unmask", requests)
        return server.unmask(replies), sorted(server.masked_from)

    def state(self) -> dict:
        return {}  # every round starts from fresh keys

    def load_state(self, state: dict) -> None:
        pass


def with_dropouts(
    inner: Relay, drop: dict[str, set[int]], on_drop: Callable[[str, int], None] | None = None
) -> Relay:
    """A relay in which the clients in drop[stage] do not answer that stage (tests, benchmarks)."""

    def relay(round_index: int, stage: str, requests: dict[int, object]) -> dict[int, object]:
        gone = drop.get(stage, set())
        for cid in gone & set(requests):
            if on_drop is not None:
                on_drop(stage, cid)
        return inner(round_index, stage, {c: m for c, m in requests.items() if c not in gone})

    return relay
