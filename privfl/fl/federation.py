"""The FedAvg round loop, independent of how updates travel (engine) or are summed (policy).

One round (McMahan et al. 2017, Algorithm 1):
  sample clients -> each trains locally from w_t -> the summation encodes each Update on the
  client (plaintext: as is; encrypted: the policy's Contribution as a ciphertext) and adds it on
  the server -> policy's server step gives w_{t+1}.

`Federation.run_round` is the one round loop: the built-in engine calls it with in-process
clients, the Flower engine with clients behind a Grid (`ClientGate`). Neither names the scheme.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from privfl.data.dataset import ClientData
from privfl.fl.aggregate import Contribution, PlainSummation, RoundKeys, Summation, SumResult, Upload
from privfl.fl.client import Update


class Trainer(Protocol):
    """Local training: global weights in, Update out (plain SGD or DP-SGD)."""

    def train(self, data: ClientData, global_weights: np.ndarray, round_index: int) -> Update: ...


class Policy(Protocol):
    """How updates are weighted before summation and how the server turns the sum into w_{t+1}."""

    def contribution(self, update: Update) -> Contribution: ...

    def server_step(
        self, weights: np.ndarray, result: SumResult, round_index: int
    ) -> tuple[np.ndarray, dict]: ...


class FedAvgPolicy:
    """McMahan et al.'s FedAvg: w_{t+1} = w_t + eta_s sum_k n_k delta_k / sum_k n_k, eta_s = 1.

    server_lr (eta_s) != 1 is FedOpt's server SGD (Reddi et al. 2021) on the averaged update.
    """

    def __init__(self, server_lr: float = 1.0):
        self.server_lr = float(server_lr)

    def contribution(self, update: Update) -> Contribution:
        n = float(update.num_samples)
        return Contribution(update.client_id, update.delta.astype(np.float64) * n, n)

    def server_step(
        self, weights: np.ndarray, result: SumResult, round_index: int
    ) -> tuple[np.ndarray, dict]:
        if result.count == 0 or result.weight <= 0:
            return weights, {"skipped": True}
        step = result.vector / result.weight
        if self.server_lr != 1.0:  # 1.0: the paper's arithmetic, bit for bit
            step = self.server_lr * step
        return (weights + step).astype(np.float32), {}


def sample_clients(n_clients: int, fraction: float, seed: int, round_index: int) -> list[int]:
    """McMahan et al.'s selection: m = max(round(C*K), 1) clients without replacement, seeded per round."""
    if fraction >= 1.0:
        return list(range(n_clients))
    m = max(int(round(fraction * n_clients)), 1)
    rng = np.random.default_rng([seed, round_index, 0x5A3])
    return sorted(rng.choice(n_clients, size=m, replace=False).tolist())


Sampler = Callable[[int], list[int]]


@dataclass
class RoundOutcome:
    """The new global weights, the updates that produced them, and timings/stats."""

    weights: np.ndarray
    updates: list[Update]
    selected: list[int]
    stats: dict = field(default_factory=dict)


class PrivacyReport(Protocol):
    """Tracks the privacy spent by a DP run; checkpointed with the run."""

    def round_report(self, round_index: int, outcome: RoundOutcome) -> dict: ...

    def state(self) -> dict: ...

    def load_state(self, state: dict) -> None: ...

    def summary(self) -> dict: ...


class ClientGate(Protocol):
    """Where a round's sampled clients train and encode: in this process or behind a transport.

    train_round yields, in the order of `selected`, each client's Update (its delta may be empty
    when the server cannot see it) and Upload; once exhausted, `round_stats` holds the round's
    seconds of local training ("train_s") and of transport ("exchange_s", when there is one).
    """

    round_stats: dict

    def train_round(
        self, round_index: int, weights: np.ndarray, selected: list[int], keys: RoundKeys
    ) -> Iterator[tuple[Update, Upload]]: ...


class InProcessClients:
    """The built-in gate: every client trains and encodes here, one after another."""

    def __init__(self, trainer: Trainer, clients: Sequence[ClientData], policy: Policy, summation: Summation):
        self.trainer = trainer
        self.clients = list(clients)
        self.policy = policy
        self.summation = summation
        self.round_stats: dict = {}

    def train_round(
        self, round_index: int, weights: np.ndarray, selected: list[int], keys: RoundKeys
    ) -> Iterator[tuple[Update, Upload]]:
        self.round_stats = {"train_s": 0.0}
        for cid in selected:  # one at a time, so the server sums each upload as it arrives
            t0 = time.perf_counter()
            update = self.trainer.train(self.clients[cid], weights, round_index)
            self.round_stats["train_s"] += time.perf_counter() - t0
            yield update, self.summation.encode(update, self.policy.contribution, keys)


class Federation:
    """Runs rounds: sample, let the gate's clients train and encode, sum on the server, step."""

    def __init__(
        self,
        trainer: Trainer | None,
        clients: Sequence[ClientData],
        sampler: Sampler,
        policy: Policy | None = None,
        summation: Summation | None = None,
        *,
        gate: ClientGate | None = None,
    ) -> None:
        self.sampler = sampler
        self.policy = policy or FedAvgPolicy()
        self.summation = summation or PlainSummation()
        self.gate = gate or InProcessClients(trainer, clients, self.policy, self.summation)

    def run_round(self, round_index: int, weights: np.ndarray) -> RoundOutcome:
        selected = list(self.sampler(round_index))
        keys = self.summation.begin_round(round_index, weights.shape[0])
        updates: list[Update] = []
        for update, upload in self.gate.train_round(round_index, weights, selected, keys):
            self.summation.submit(upload, self.policy.contribution)  # in the sampled order
            updates.append(update)
        gate_stats = self.gate.round_stats
        t0 = time.perf_counter()
        result = self.summation.finish()
        new_weights, step_stats = self.policy.server_step(weights, result, round_index)
        stats = {
            "train_s": gate_stats.get("train_s", 0.0),
            "server_s": time.perf_counter() - t0,
            **{k: v for k, v in gate_stats.items() if k != "train_s"},
            "clients": len(selected),
            **result.stats,
            **step_stats,
        }
        return RoundOutcome(new_weights, updates, selected, stats)
