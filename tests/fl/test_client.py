"""Local training: class-balanced cross-entropy from the client's own labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privfl.config import ExperimentConfig, ModelConfig
from privfl.data.dataset import ClientData
from privfl.errors import ConfigError
from privfl.fl.client import LocalConfig, LocalTrainer, balanced_class_weights
from privfl.models import initial_weights

SMALL = ModelConfig(conv_channels=4, fc_hidden=8)


def test_balanced_weights_by_hand():
    w = balanced_class_weights(torch.tensor([0, 0, 0, 1]), 4)
    torch.testing.assert_close(w, torch.tensor([4 / 6, 2.0, 0.0, 0.0]))
    torch.testing.assert_close(balanced_class_weights(torch.tensor([3, 2, 1, 0]), 4), torch.ones(4))


def _client(labels: list[int]) -> ClientData:
    g = torch.Generator().manual_seed(0)
    n = len(labels)
    return ClientData(0, torch.randn(n, 20, 40, generator=g), torch.full((n,), 20), torch.tensor(labels))


def _delta(data: ClientData, class_weights: str) -> np.ndarray:
    local = LocalConfig(epochs=1, batch_size=4, lr=0.1, momentum=0.0, class_weights=class_weights)
    trainer = LocalTrainer(SMALL, 40, local, seed=0)
    return trainer.train(data, initial_weights(SMALL, 40, 0), round_index=1).delta


def test_balanced_loss_changes_training_only_where_classes_are_unequal(one_thread):
    even = _client([0, 1, 2, 3] * 2)
    np.testing.assert_allclose(_delta(even, "balanced"), _delta(even, "none"), atol=1e-6)
    skewed = _client([0, 1, 1, 1, 2, 2, 2, 3])
    assert np.abs(_delta(skewed, "balanced") - _delta(skewed, "none")).max() > 1e-4


def test_class_weights_are_validated_and_refused_under_dp_sgd():
    with pytest.raises(ConfigError, match="train.class_weights 'inverse' is not one of none, balanced"):
        ExperimentConfig().override({"train.class_weights": "inverse"}).validate()
    with pytest.raises(ConfigError, match="per-record accounting"):
        ExperimentConfig().override(
            {"train.class_weights": "balanced", "train.mode": "dp", "dp.noise_multiplier": 1.0}
        ).validate()
    ExperimentConfig().override(
        {"train.class_weights": "balanced", "train.mode": "user-dp", "dp.noise_multiplier": 1.0}
    ).validate()


def test_cosine_schedule_by_round_and_constant_default():
    cosine = LocalConfig(lr=0.1, lr_schedule="cosine", rounds=4)
    assert [round(cosine.round_lr(r), 6) for r in (1, 2, 3, 4)] == [0.1, 0.085355, 0.05, 0.014645]
    assert cosine.round_lr(9) == pytest.approx(0.0)  # rounds extended past the schedule: it stays at 0
    assert LocalConfig(lr=0.1, rounds=4).round_lr(3) == 0.1
    with pytest.raises(ConfigError, match="train.lr_schedule 'step' is not one of constant, cosine"):
        ExperimentConfig().override({"train.lr_schedule": "step"}).validate()
    with pytest.raises(ConfigError, match="not implemented for DP-SGD"):
        ExperimentConfig().override(
            {"train.lr_schedule": "cosine", "train.mode": "dp", "dp.noise_multiplier": 1.0}
        ).validate()


def test_the_trainer_steps_with_the_round_lr(one_thread):
    data = _client([0, 1, 2, 3] * 2)
    w0 = initial_weights(SMALL, 40, 0)

    def delta(lr: float, schedule: str, round_index: int) -> np.ndarray:
        local = LocalConfig(epochs=1, batch_size=8, lr=lr, lr_schedule=schedule, rounds=4)
        return LocalTrainer(SMALL, 40, local, seed=0).train(data, w0, round_index).delta

    # one full-batch step of plain SGD: the delta is -lr * gradient, so it scales with the round's lr
    np.testing.assert_allclose(delta(0.1, "cosine", 3), delta(0.05, "constant", 3), rtol=1e-5, atol=1e-7)
