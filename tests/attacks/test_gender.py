"""Gender inference on synthetic updates where the answer is planted, and the shuffled-label control."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from privfl.attacks.gender import (
    client_label,
    feature_columns,
    first_layer_names,
    fit_classifier,
    shuffled_labels,
    update_features,
)
from privfl.config import ModelConfig
from privfl.models import build_model, count_parameters


def planted_updates(labels: np.ndarray, direction: np.ndarray, strength: float, rng) -> np.ndarray:
    """Updates whose gender shows only along one direction, buried in isotropic noise of larger norm."""
    noise = rng.normal(size=(len(labels), direction.size))
    return noise + strength * np.outer(2 * labels - 1, direction)


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_classifier_recovers_a_planted_gender_direction(kind):
    rng = np.random.default_rng(0)
    p = 400
    direction = rng.normal(size=p) / np.sqrt(p)
    y_shadow, y_real = np.tile([0, 1], 32), np.tile([0, 1], 40)
    xs = update_features(planted_updates(y_shadow, direction, 6.0, rng), np.arange(p))
    xr = update_features(planted_updates(y_real, direction, 6.0, rng), np.arange(p))
    clf = fit_classifier(xs, y_shadow, kind, seed=0)
    assert roc_auc_score(y_real, clf.predict_proba(xr)[:, 1]) > 0.9


def test_shuffled_shadow_labels_give_chance_auc():
    """The randomised-label control: same updates, the attacker's labels permuted, AUC about 0.5."""
    p = 400
    aucs = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        direction = rng.normal(size=p) / np.sqrt(p)
        y_shadow, y_real = np.tile([0, 1], 32), np.tile([0, 1], 40)
        xs = update_features(planted_updates(y_shadow, direction, 6.0, rng), np.arange(p))
        xr = update_features(planted_updates(y_real, direction, 6.0, rng), np.arange(p))
        shuffled = shuffled_labels(y_shadow, rng)
        clf = fit_classifier(xs, shuffled, "logreg", seed=seed)
        aucs.append(roc_auc_score(y_real, clf.predict_proba(xr)[:, 1]))
    assert abs(np.mean(aucs) - 0.5) < 0.1
    assert max(abs(a - 0.5) for a in aucs) < 0.3


def test_shuffled_labels_are_uncorrelated_with_the_truth():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(9, int), np.zeros(12, int)]
    for _ in range(20):
        s = shuffled_labels(y, rng)
        assert set(s.tolist()) == {0, 1}
        assert int(s[y == 1].sum()) in (4, 5) and int(s[y == 0].sum()) == 6
    balanced = np.tile([0, 1], 32)
    assert shuffled_labels(balanced, rng).sum() == 32
    speakers = np.repeat(["f1", "m1", "f2", "m2"], 16)  # labels follow speakers: f* = 1
    by_speaker = shuffled_labels((np.char.startswith(speakers, "f")).astype(int), rng, strata=speakers)
    for s in ("f1", "m1", "f2", "m2"):
        assert by_speaker[speakers == s].sum() == 8
    # one item per stratum: still both labels, half and half
    for _ in range(10):
        tiny = shuffled_labels(np.array([1, 0, 1, 0]), rng, strata=np.array(["f1", "m1", "f2", "m2"]))
        assert tiny.sum() == 2


def test_update_features_are_unit_norm_so_client_size_does_not_matter():
    rng = np.random.default_rng(1)
    d = rng.normal(size=(3, 10))
    f = update_features(np.r_[d, 40 * d[:1], np.zeros((1, 10))], np.arange(10))
    np.testing.assert_allclose(np.linalg.norm(f[:4], axis=1), 1.0)
    np.testing.assert_allclose(f[3], f[0])
    assert not f[4].any()


def test_first_layer_features_are_the_layer_that_sees_the_input():
    cnn = build_model(ModelConfig(name="cnn", conv_channels=4, fc_hidden=8), n_mels=8)
    assert first_layer_names(cnn) == ("conv.weight", "conv.bias")
    assert feature_columns(cnn, "first-layer").tolist() == list(range(4 * 25 + 4))
    lstm = build_model(ModelConfig(name="lstm", lstm_hidden=6, fc_hidden=8), n_mels=8)
    assert first_layer_names(lstm) == ("lstm.weight_ih_l0", "lstm.bias_ih_l0")
    assert feature_columns(lstm, "first-layer").size == 4 * 6 * 8 + 4 * 6
    assert feature_columns(lstm, "all-layers").size == count_parameters(lstm)


@pytest.mark.parametrize(
    ("genders", "expected"),
    [
        (("female",), (1, False)),
        (("male", "male"), (0, False)),
        (("female", "male", "male"), (0, True)),  # majority, flagged as mixed
        (("female", "male"), (-1, True)),  # a tie has no label
        (("unknown",), (-1, False)),
        (("unknown", "female"), (1, False)),
    ],
)
def test_client_label_is_the_majority_of_known_genders(genders, expected):
    assert client_label(genders) == expected
