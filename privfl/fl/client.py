"""A client's local training: E epochs of minibatch SGD from the global weights.

The trainer returns an `Update` (the weight delta and the sample count); turning it into what is
sent (weighting, clipping, noise, encryption) is the aggregation policy's job, not the client's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from privfl.canaries import GradientCanaries, dirac_rows
from privfl.config import ModelConfig, TrainConfig
from privfl.data.dataset import ClientData
from privfl.data.records import EMOTIONS
from privfl.models import build_model, canonical_parameters, get_flat, set_flat
from privfl.randomness import derive_seed


@dataclass(frozen=True)
class LocalConfig:
    """Local SGD hyper-parameters: E, B, eta (and optional momentum)."""

    epochs: int = 1
    batch_size: int = 10
    lr: float = 0.01
    momentum: float = 0.0
    class_weights: str = "none"  # "balanced": cross-entropy weighted by the client's own class counts
    lr_schedule: str = "constant"  # "cosine": lr annealed over `rounds` rounds (round_lr)
    rounds: int = 1

    @classmethod
    def of(cls, train: TrainConfig) -> LocalConfig:
        """Every local-training setting of a run's `train` section: what its clients (and an attacker's
        shadow clients, which must train as they do) run."""
        return cls(
            train.local_epochs,
            train.batch_size,
            train.lr,
            train.momentum,
            train.class_weights,
            train.lr_schedule,
            train.rounds,
        )

    def round_lr(self, round_index: int) -> float:
        """The local learning rate in round `round_index` (1-based)."""
        if self.lr_schedule == "constant":
            return self.lr
        progress = min(max(round_index - 1, 0) / max(self.rounds, 1), 1.0)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Update:
    """What local training produced: delta = w_local - w_global (float32 [n_params])."""

    client_id: int
    round: int
    delta: np.ndarray
    num_samples: int
    train_loss: float
    stats: dict = field(default_factory=dict)


def balanced_class_weights(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[n_classes] weights n / (n_classes * count_c) from labels y [n]; a class absent from y gets 0
    (no term of the loss has it) and the classes present average to 1 per utterance."""
    counts = torch.bincount(y, minlength=n_classes).to(torch.float32)
    present = counts > 0
    weights = torch.zeros(n_classes)
    weights[present] = y.numel() / (int(present.sum()) * counts[present])
    return weights


def sgd_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: ClientData,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    after_backward: Callable[[int, int, int], None] | None = None,
    class_weights: torch.Tensor | None = None,
) -> tuple[float, int]:
    """Run `epochs` shuffled passes of minibatch training; returns (mean loss, steps taken).

    after_backward(epoch, batch, batch_size), if given, may change the gradients before each step
    (gradient canaries do). class_weights [n_classes] weight each utterance's cross-entropy by its
    class (None: plain).
    """
    loss_fn = nn.CrossEntropyLoss(weight=class_weights)
    total, steps = 0.0, 0
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(data.num_samples, generator=generator)
        for batch, start in enumerate(range(0, data.num_samples, batch_size)):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(data.x[idx], data.lengths[idx]), data.y[idx])
            loss.backward()
            if after_backward is not None:
                after_backward(epoch, batch, int(idx.numel()))
            optimizer.step()
            total += float(loss.detach())
            steps += 1
    return total / max(steps, 1), steps


class LocalTrainer:
    """Plain (non-private) local training; one model instance reused for every client.

    canaries: gradient canaries (`privfl.canaries`): each included canary the client holds joins
    one random batch of every epoch (from its own OS-seeded generator) as a record whose gradient
    is a Dirac of norm `canaries.norm`, averaged in like a real record's (divided by the batch size).
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        n_mels: int,
        local: LocalConfig,
        seed: int,
        canaries: GradientCanaries | None = None,
    ) -> None:
        self.model = build_model(model_cfg, n_mels)
        self.local = local
        self.seed = seed
        self.canaries = canaries

    def train(self, data: ClientData, global_weights: np.ndarray, round_index: int) -> Update:
        set_flat(self.model, global_weights)
        lr = self.local.round_lr(round_index)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=self.local.momentum)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, round_index, data.client_id))
        weights = None
        if self.local.class_weights == "balanced":
            weights = balanced_class_weights(data.y, len(EMOTIONS))
        loss, steps = sgd_epochs(
            self.model,
            optimizer,
            data,
            self.local.epochs,
            self.local.batch_size,
            generator,
            self._canary_hook(data),
            weights,
        )
        delta = get_flat(self.model) - global_weights
        return Update(data.client_id, round_index, delta, data.num_samples, loss, {"steps": steps})

    def _canary_hook(self, data: ClientData) -> Callable[[int, int, int], None] | None:
        if self.canaries is None:
            return None
        coords, values = self.canaries.held(data.client_id)
        n_batches = -(-data.num_samples // self.local.batch_size)
        plan = self.canaries.epoch_plan(data.client_id, self.local.epochs, n_batches)
        params = [p for _, p in canonical_parameters(self.model)]
        shapes = [p.shape for p in params]

        def add(epoch: int, batch: int, size: int) -> None:
            picked = plan.get((epoch, batch))
            if picked is None:
                return
            rows = dirac_rows(shapes, coords[picked], values[picked], params[0].dtype)
            with torch.no_grad():
                for p, row in zip(params, rows, strict=True):
                    p.grad += row.sum(dim=0) / size

        return add
