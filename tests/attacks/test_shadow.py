"""Shadow clients: one known-gender speaker each, trained by the trainer the run's clients used."""

import dataclasses

import numpy as np
import pytest

from privfl.attacks.shadow import (
    SHADOW_ID_BASE,
    check_auxiliary,
    client_trainer,
    known_gender_speakers,
    local_updates,
    sample_shadow_clients,
    shadow_client_data,
)
from privfl.config import ExperimentConfig
from privfl.data.dataset import ClientData, PreparedData
from privfl.errors import AttackError
from privfl.fl.components import build_components
from privfl.models import initial_weights
from tests.attacks.conftest import make_speech_set


def test_known_gender_speakers_leave_out_unknown_genders():
    aux = make_speech_set({"a": "female", "b": "male", "c": "unknown", "d": "female"}, per_speaker=2)
    assert known_gender_speakers(aux) == {"female": ["a", "d"], "male": ["b"]}


def test_shadow_clients_alternate_genders_and_hold_one_speaker_each(aux_set, rng):
    shadows = sample_shadow_clients(aux_set, 12, 5, rng)
    assert [s.gender for s in shadows] == ["female", "male"] * 6
    for s in shadows:
        assert len(s.indices) == 5 and len(set(s.indices.tolist())) == 5
        assert {aux_set.speakers[i] for i in s.indices} == {s.speaker}
        assert {aux_set.genders[i] for i in s.indices} == {s.gender}
    assert {s.speaker for s in shadows} == {"f1", "f2", "m1", "m2"}
    again = sample_shadow_clients(aux_set, 12, 5, np.random.default_rng(0))
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(shadows, again, strict=True))


def test_shadow_updates_come_from_the_given_trainer(aux_set, rng):
    class MeanFeatureTrainer:
        """A stand-in client: its 'update' is the mean of its features, gender is what the data says."""

        def train(self, data, weights, round_index):
            from privfl.fl.client import Update

            delta = np.resize(data.x.mean(dim=(0, 1)).numpy(), weights.shape)
            return Update(data.client_id, round_index, delta, data.num_samples, 0.0)

    shadows = sample_shadow_clients(aux_set, 4, 3, rng)
    clients = shadow_client_data(aux_set, shadows)
    assert [c.client_id for c in clients] == [SHADOW_ID_BASE + i for i in range(4)]
    assert clients[1].genders == ("male",) and clients[1].num_samples == 3
    out = local_updates(MeanFeatureTrainer(), clients, np.zeros(16, np.float32), 1)
    assert out.shape == (4, 16) and out.dtype == np.float32
    expected = aux_set.x[shadows[0].indices].mean(dim=(0, 1)).numpy()
    np.testing.assert_allclose(out[0, :8], expected, rtol=1e-6)


def test_auxiliary_data_of_one_gender_is_refused():
    only_female = make_speech_set({"f1": "female", "f2": "female"}, per_speaker=4)
    with pytest.raises(AttackError, match="both genders.*0 male.*aux_speakers"):
        check_auxiliary(only_female)
    unknown = make_speech_set({"a": "unknown", "b": "unknown"}, per_speaker=4)
    with pytest.raises(AttackError, match="2 of unknown gender"):
        check_auxiliary(unknown)


# every local-training setting away from its default, so a shadow trainer that drops one differs
RUN_TRAINER = {
    "model.conv_channels": 4,
    "model.fc_hidden": 8,
    "train.local_epochs": 2,
    "train.batch_size": 3,
    "train.lr": 0.05,
    "train.momentum": 0.5,
    "train.class_weights": "balanced",
    "train.lr_schedule": "cosine",
    "train.rounds": 4,
}


@pytest.mark.parametrize(
    "mode, extra",
    [
        ("fedavg", {}),
        ("user-dp", {"dp.noise_multiplier": 1.0}),
        ("dp", {"dp.noise_multiplier": 1.0, "dp.delta": 1e-3, "dp.noise": "seeded"}),
    ],
)
def test_shadow_clients_train_exactly_as_the_runs_clients(aux_set, mode, extra):
    """A shadow client given a real client's data, id and round computes the real client's update, bit
    for bit, for every trainer setting the run changed (class weights, lr schedule, E, B, eta, momentum)."""
    cfg = ExperimentConfig().override({**RUN_TRAINER, "train.mode": mode, **extra})
    # unbalanced emotions, so the balanced class weights change the loss
    y = aux_set.y.clone()
    y[: len(y) // 2] = 0
    clients = [
        ClientData(7, aux_set.x[:12], aux_set.lengths[:12], y[:12]),
        ClientData(9, aux_set.x[12:24], aux_set.lengths[12:24], y[12:24]),
    ]
    n_mels = int(aux_set.x.shape[2])
    data = PreparedData(None, None, aux_set, aux_set, aux_set, aux_set, clients, n_mels)
    run_trainer = build_components(cfg, data).trainer
    privacy = {"sigma": 1.0, "delta": 1e-3} if mode == "dp" else None
    shadow_trainer = client_trainer(cfg, dataclasses.replace(data, clients=[]), clients, privacy)
    w = initial_weights(cfg.model, n_mels, cfg.seed)
    for r in (1, 3):  # the cosine schedule's rate differs between rounds
        for client in clients:
            real = run_trainer.train(client, w, r).delta
            shadow = shadow_trainer.train(client, w, r).delta
            np.testing.assert_array_equal(shadow, real)
            assert np.abs(real).max() > 0


def test_plain_shadow_clients_train_in_parallel_exactly_as_one_after_another(aux_set, rng):
    """Each worker trains on its own copy of the trainer: the deltas are those of a plain loop."""
    from privfl.parallel import torch_threads

    cfg = ExperimentConfig().override({"model.conv_channels": 4, "model.fc_hidden": 8, "train.batch_size": 2})
    clients = shadow_client_data(aux_set, sample_shadow_clients(aux_set, 6, 4, rng))
    data = PreparedData(None, None, aux_set, aux_set, aux_set, aux_set, clients, 8)
    w = initial_weights(cfg.model, 8, 0)
    trainer = client_trainer(cfg, data, clients)
    seen = []
    got = local_updates(trainer, clients, w, 3, lambda d, n: seen.append((d, n)))
    assert seen == [(d, 6) for d in range(1, 7)]
    with torch_threads(1):
        want = np.stack([trainer.train(c, w, 3).delta for c in clients])
    np.testing.assert_array_equal(got, want)
    assert len({row.tobytes() for row in got}) == 6 and np.abs(got).max() > 0
