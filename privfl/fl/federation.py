"""The FedAvg round loop, independent of how updates travel (engine) or are summed (policy).

One round (McMahan et al. 2017, Algorithm 1):
  sample clients -> each trains locally from w_t -> policy turns each Update into a Contribution
  -> summation adds them (plaintext or encrypted) -> policy's server step gives w_{t+1}.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from privfl.fl.aggregate import Contribution, PlainSummation, Summation, SumResult
from privfl.fl.client import ClientData, Update


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
    """McMahan et al.'s FedAvg: w_{t+1} = w_t + sum_k n_k delta_k / sum_k n_k."""

    def contribution(self, update: Update) -> Contribution:
        n = float(update.num_samples)
        return Contribution(update.client_id, update.delta.astype(np.float64) * n, n)

    def server_step(
        self, weights: np.ndarray, result: SumResult, round_index: int
    ) -> tuple[np.ndarray, dict]:
        if result.count == 0 or result.weight <= 0:
            return weights, {"skipped": True}
        return (weights + result.vector / result.weight).astype(np.float32), {}


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


@dataclass
class Components:
    """The pluggable pieces of a federation for one config."""

    trainer: Trainer
    policy: Policy
    summation: Summation
    sampler: Sampler
    privacy: PrivacyReport | None = None


class Federation:
    """Runs rounds over an in-process set of clients."""

    def __init__(
        self,
        trainer: Trainer,
        clients: Sequence[ClientData],
        sampler: Sampler,
        policy: Policy | None = None,
        summation: Summation | None = None,
    ) -> None:
        self.trainer = trainer
        self.clients = list(clients)
        self.sampler = sampler
        self.policy = policy or FedAvgPolicy()
        self.summation = summation or PlainSummation()

    def run_round(self, round_index: int, weights: np.ndarray) -> RoundOutcome:
        selected = self.sampler(round_index)
        self.summation.begin_round(round_index, weights.shape[0])
        updates: list[Update] = []
        train_s = 0.0
        for cid in selected:
            t0 = time.perf_counter()
            update = self.trainer.train(self.clients[cid], weights, round_index)
            train_s += time.perf_counter() - t0
            self.summation.submit(self.policy.contribution(update))
            updates.append(update)
        t0 = time.perf_counter()
        result = self.summation.finish()
        new_weights, step_stats = self.policy.server_step(weights, result, round_index)
        stats = {
            "train_s": train_s,
            "server_s": time.perf_counter() - t0,
            "clients": len(selected),
            **result.stats,
            **step_stats,
        }
        return RoundOutcome(new_weights, updates, selected, stats)
