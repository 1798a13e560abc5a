"""What a DP client discloses besides its contribution, the trainer's refusals of a client it has no
plan for, and McMahan et al.'s fixed-size client sample."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privfl.errors import PrivacyError
from privfl.fl.client import LocalConfig, Update
from privfl.fl.dp import disclosed, fixed_size_clients
from tests.fl.test_dp import client_data, privacy_for, trainer_for

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
