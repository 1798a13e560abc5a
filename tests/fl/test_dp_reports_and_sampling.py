"""What a DP client discloses besides its contribution, the trainer's refusals of a client it has no
plan for, its canaries joining DP-SGD through train, and McMahan et al.'s fixed-size client sample."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from privfl.canaries import CanarySecrets, GradientCanaries
from privfl.errors import PrivacyError
from privfl.fl.client import LocalConfig, Update
from privfl.fl.dp import DPSGDTrainer, _per_sample_norms, disclosed, fixed_size_clients, poisson_batch
from privfl.models import initial_weights
from tests.fl.test_dp import MELS, SEEDED, SMALL, client_data, privacy_for, trainer_for

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/fl/conftest.py


def test_a_dp_client_discloses_who_and_when_and_nothing_of_its_data() -> None:
    delta = np.arange(4, dtype=np.float32)
    full = Update(3, 5, delta, 40, 0.7, {"clipped": 2, "steps": 3})
    out = disclosed(full)
    assert (out.client_id, out.round, out.num_samples, out.stats) == (3, 5, 0, {})
    assert out.delta is delta and math.isnan(out.train_loss)


def test_the_trainer_refuses_a_client_it_has_no_accountant_for_or_whose_data_changed() -> None:
    planned = [client_data(0, n=8)]
    trainer = trainer_for(
        "cnn", "hooks", privacy_for(planned, 4), LocalConfig(epochs=1, batch_size=4, lr=0.1)
    )
    w = np.zeros(1, dtype=np.float32)  # never reached: both refusals come before training
    with pytest.raises(
        PrivacyError, match=r"^client 9 has no accountant; build the trainer with every client's data$"
    ):
        trainer.train(client_data(9, n=8), w, 1)
    with pytest.raises(
        PrivacyError,
        match=r"^client 0 now holds 12 utterances, its accountant was planned for 8; rebuild the components "
        r"for the new data$",
    ):
        trainer.train(client_data(0, n=12), w, 1)


def test_a_fixed_size_sample_draws_round_c_k_distinct_clients_and_at_least_one() -> None:
    for seed in range(20):
        got = fixed_size_clients(10, 0.5, np.random.default_rng(seed))
        assert len(got) == 5 and len(set(got)) == 5 and got == sorted(got) and set(got) <= set(range(10))
    assert len(fixed_size_clients(10, 0.3, np.random.default_rng(0))) == 3
    assert len(fixed_size_clients(10, 0.01, np.random.default_rng(0))) == 1  # max(round(0.1), 1)
    assert fixed_size_clients(7, 1.0, np.random.default_rng(0)) == list(range(7))
    # the sample follows the generator it is given
    draws = {tuple(fixed_size_clients(10, 0.3, np.random.default_rng(s))) for s in range(10)}
    assert len(draws) > 1


def test_a_clients_canaries_join_its_dp_sgd_steps_through_train() -> None:
    """At q = 1 every record and every canary is in the one step; both runs draw the same noise from
    the client's seeded stream, so the update with the canaries differs from the one without
    exactly at their coordinates, by -lr value clip / B."""
    data = client_data(0, n=8)
    local = LocalConfig(epochs=1, batch_size=8, lr=0.5, momentum=0.0)
    secrets = CanarySecrets(
        "gradient",
        n_params=0,
        norm=1.0,
        included=np.array([True, True, False, True]),
        coordinates=np.array([3, 50, 60, 9]),
        signs=np.array([1.0, -1.0, 1.0, 1.0]),
        owners=np.array([0, 0, 0, 1]),  # the last one is another client's
        seeds=np.zeros(4, dtype=np.uint64),
    )

    def trained(canaries):
        trainer = DPSGDTrainer(
            SMALL["cnn"],
            MELS,
            local,
            SEEDED,
            privacy_for([data], 8, sigma=1.0),
            "microbatch",
            max_grad_norm=1.0,
            canaries=canaries,
        )
        return trainer.train(data, w, 2)

    w = initial_weights(SMALL["cnn"], MELS, 0)
    without, with_c = trained(None), trained(GradientCanaries(secrets))
    assert without.round == with_c.round == 2
    diff = with_c.delta.astype(np.float64) - without.delta
    push = 0.5 / (1.0 + 1e-6) / 8  # lr, Opacus's clip factor at norm exactly C, 1 / B
    assert diff[3] == pytest.approx(-push, rel=1e-4) and diff[50] == pytest.approx(push, rel=1e-4)
    diff[[3, 50]] = 0
    assert np.abs(diff).max() < 1e-7  # the excluded canary and client 1's are not there


def test_a_record_is_in_the_poisson_batch_when_its_draw_is_below_the_rate_not_at_it(monkeypatch) -> None:
    draws = torch.tensor([0.25, 0.5, 0.75, 0.0])
    monkeypatch.setattr(torch, "rand", lambda n, generator=None: draws[:n])
    assert poisson_batch(4, 0.5, torch.Generator()).tolist() == [0, 3]  # P(u < q) = q


def test_per_sample_norms_are_the_l2_norm_of_each_samples_whole_gradient() -> None:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1, 1))
    a.grad_sample = torch.tensor([[3.0, 4.0], [1.0, 2.0]])  # two samples
    b.grad_sample = torch.tensor([[[12.0]], [[2.0]]])
    np.testing.assert_allclose(_per_sample_norms([a, b]).numpy(), [13.0, 3.0], rtol=1e-6)


def test_the_steps_and_clipped_gradients_of_a_run_are_counted_over_every_step() -> None:
    data = client_data(0, n=8)
    local = LocalConfig(epochs=1, batch_size=8, lr=0.1, momentum=0.0)
    trainer = trainer_for("cnn", "microbatch", privacy_for([data], 8, sigma=0.0, clip=1e-6), local)
    w = initial_weights(SMALL["cnn"], MELS, 0)
    every = torch.arange(8)
    update = trainer._run(data, w, 1, [every, every[:5], every], torch.Generator().manual_seed(0))
    assert update.stats["steps"] == 3 and update.stats["clipped"] == 8 + 5 + 8  # C = 1e-6 clips them all
