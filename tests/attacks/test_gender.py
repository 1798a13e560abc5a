"""Gender inference on synthetic updates where the answer is planted, and the shuffled-label control."""

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from privfl.attacks.gender import (
    DEFAULT_VIEWS,
    ENSEMBLE_VIEWS,
    GenderAttackConfig,
    client_label,
    feature_columns,
    first_layer_names,
    fit_classifier,
    gender_attack,
    parse_views,
    project_views,
    shuffled_labels,
    update_features,
    view_log_odds,
)
from privfl.attacks.observe import PER_CLIENT, Observation, Truth
from privfl.attacks.shadow import (
    client_trainer,
    local_updates,
)
from privfl.config import ExperimentConfig, ModelConfig
from privfl.data.dataset import ClientData, PreparedData, SpeechSet
from privfl.models import build_model, count_parameters, initial_weights
from privfl.parallel import torch_threads
from tests.attacks.conftest import make_speech_set


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


# --- the whole attack on updates with a known amount of gender signal -----------------------------
N_MELS = 8
ATTACK_CFG = ExperimentConfig().override(
    {"model.conv_channels": 4, "model.fc_hidden": 8, "train.batch_size": 4, "train.lr": 0.1}
)


def voices(genders: dict[str, str], per_speaker: int, seed: int, gendered: bool) -> SpeechSet:
    """Random features; with `gendered`, female speakers louder in the low mel bands, male in the high."""
    s = make_speech_set(genders, per_speaker, n_mels=N_MELS, seed=seed)
    if not gendered:
        return s
    female = torch.tensor([g == "female" for g in s.genders])
    shift = torch.where(
        female[:, None], torch.tensor([6.0] * 4 + [0.0] * 4), torch.tensor([0.0] * 4 + [6.0] * 4)
    )
    return dataclasses.replace(s, x=s.x + shift[:, None, :])


class InMemoryRun:
    """What gender_attack reads of a finished run (one recorded round), with updates computed here."""

    secure, observed, summary, rounds, verified_rounds = False, PER_CLIENT, {}, [1], {1}
    config = ATTACK_CFG
    run = SimpleNamespace(path=Path("in-memory"))

    def __init__(self, weights: np.ndarray, clients: list[ClientData], deltas: np.ndarray) -> None:
        ids = np.arange(len(clients))
        self.observation = Observation(
            1, weights, ids, np.array([c.num_samples for c in clients]), deltas, None
        )
        self.truth = Truth(ids, tuple(c.speakers for c in clients), tuple(c.genders for c in clients))

    def select_rounds(self, requested=(), max_rounds=3) -> list[int]:
        return [1]

    def observe(self, round_index: int):
        return self.observation, self.truth


def one_speaker_clients(own: SpeechSet, genders: dict[str, str]) -> list[ClientData]:
    """One client per speaker of `own`, in the order of `genders`."""
    clients = []
    for i, s in enumerate(genders):
        part = own.take(np.flatnonzero(np.array(own.speakers) == s))
        clients.append(ClientData(i, part.x, part.lengths, part.y, (s,), (genders[s],)))
    return clients


def attack_one_round(data: PreparedData, clients: list[ClientData], config: GenderAttackConfig):
    """(result, rows by name) of the gender attack on one round of FedAvg from initial weights."""
    w = initial_weights(ATTACK_CFG.model, N_MELS, 0)
    with torch_threads(1):
        deltas = local_updates(client_trainer(ATTACK_CFG, data, clients), clients, w, 1)
    with threadpool_limits(1), torch_threads(1):  # tiny fits: extra BLAS/OpenMP threads only spin
        result = gender_attack(InMemoryRun(w, clients, deltas), data, config)
    return result, {r.name: r for r in result.rows}


def attack_on_clients(gendered_clients: bool, views: str = "fc-profile:3") -> dict:
    """The attack's per-client and control AUCs on 160 one-speaker clients trained from w_1 as a run would.

    The attacker's auxiliary speakers always carry the gender cue; the real clients carry it only
    when `gendered_clients` (otherwise their updates hold no gender information at all).
    """
    aux = voices({f"af{i}": "female" for i in range(4)} | {f"am{i}": "male" for i in range(4)}, 12, 1, True)
    speakers = {f"c{i}": ("female" if i % 2 else "male") for i in range(160)}
    own = voices(speakers, 6, 2, gendered_clients)
    clients = one_speaker_clients(own, speakers)
    empty = aux.take(np.array([], dtype=np.int64))
    data = PreparedData(None, None, empty, empty, empty, aux, clients, N_MELS)
    config = GenderAttackConfig(
        shadow_clients=32,
        shadow_size=6,
        speeds=(1.0,),
        bootstrap=0,
        control_repeats=10,
        views=ENSEMBLE_VIEWS if views == "ensemble" else parse_views(views),
    )
    result, rows = attack_one_round(data, clients, config)
    return {
        "attack": rows["gender: per-client updates, all rounds combined"].metrics["auc"],
        "control": rows["gender: shuffled shadow labels (control)"].metrics["auc"],
    }


@pytest.mark.parametrize(
    "views", ["fc-profile:3", "first-layer:3", "ensemble", "probe", "fc-profile:3,probe", "reconstruction"]
)
def test_attack_on_updates_without_gender_signal_is_at_chance(views):
    """Nothing to find: an attack that also learnt from the clients' true genders would score high here."""
    auc = attack_on_clients(gendered_clients=False, views=views)
    assert abs(auc["attack"] - 0.5) < 0.15, auc  # 160 clients: sd of a chance AUC about 0.05
    assert abs(auc["control"] - 0.5) < 0.15, auc


@pytest.mark.parametrize(
    "views", ["fc-profile:3", "first-layer:3", "ensemble", "probe", "fc-profile:3,probe", "reconstruction"]
)
def test_attack_finds_a_planted_gender_signal_and_its_control_does_not(views):
    auc = attack_on_clients(gendered_clients=True, views=views)
    assert auc["attack"] > 0.75, auc
    assert abs(auc["control"] - 0.5) < 0.15, auc  # a control fitted on the true labels scores as the attack


def test_gender_balanced_clients_are_refused_with_the_partition_to_change():
    """An iid run's clients each hold as many female as male speakers: the error says so (not that the
    corpus lacks gender labels) and names the by-speaker partition that gives clients a gender."""
    from types import SimpleNamespace

    from privfl.attacks.gender import _check_gender_labels
    from privfl.errors import AttackError

    def observed(genders_per_client):
        truth = SimpleNamespace(genders=genders_per_client)
        return SimpleNamespace(
            observe=lambda r: (None, truth),
            run=SimpleNamespace(path=Path("runs/x")),
            config=ExperimentConfig(),
        )

    balanced = [("female", "male"), ("male", "female", "female", "male")]
    expected = r"each holds as many female as male.*'iid'.*--partition by-speaker"
    with pytest.raises(AttackError, match=expected):
        _check_gender_labels(observed(balanced), [1])
    with pytest.raises(AttackError, match="no usable gender labels.*genders seen: unknown"):
        _check_gender_labels(observed([("unknown",), ("unknown",)]), [1])
    _check_gender_labels(observed([("female",), ("male", "male")]), [1])  # clients with a gender pass


# --- the pieces that combine rounds and read the fully connected layer -----------------------------
def test_fc_profile_features_are_the_column_norms_of_fc1s_update():
    from privfl.attacks.gender import FeatureMap
    from privfl.models import layer_slices

    cnn = build_model(ModelConfig(name="cnn", conv_channels=4, fc_hidden=8), n_mels=8)
    fmap = FeatureMap.of(cnn, "fc-profile")
    fc1 = layer_slices(cnn)["fc1.weight"]
    assert fmap.rows == 8 and fmap.size == 4 * 4  # 4 channels x 4 Mel pairs in, 8 out
    rng = np.random.default_rng(0)
    deltas = rng.normal(size=(3, count_parameters(cnn)))
    w = deltas[:, fc1].reshape(3, 8, 16)
    expected = np.sqrt((w**2).sum(axis=1))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(fmap(deltas), expected)
    np.testing.assert_allclose(fmap(7.5 * deltas), expected)  # the client's size and lr drop out
    deltas[:, : fc1.start] = 0.0
    deltas[:, fc1.stop :] = 0.0
    np.testing.assert_allclose(fmap(deltas), expected)  # nothing outside fc1.weight is read


def test_client_subspace_finds_the_direction_clients_differ_along():
    from privfl.attacks.gender import client_subspace, project

    rng = np.random.default_rng(2)
    axis = np.zeros(50)
    axis[7] = 1.0
    real = 0.05 * rng.normal(size=(16, 50)) + np.outer(np.tile([-1.0, 1.0], 8), axis) + 3.0
    basis = client_subspace(real, 1)
    assert basis.shape == (50, 1) and abs(basis[7, 0]) > 0.99
    projected = project(real, basis)[:, 0]
    assert abs(projected.mean()) < 1e-9  # each population is centred on its own mean
    assert roc_auc_score(np.tile([0, 1], 8), projected * np.sign(basis[7, 0])) == 1.0
    assert client_subspace(real[:3], 10).shape == (50, 2)  # 3 points span at most 2 directions
    assert client_subspace(real, 0) is None and project(real, None) is real


def test_combining_rounds_adds_up_evidence_no_single_round_has():
    """30 rounds of weak, independent evidence per client: one round separates poorly, the mean well."""
    from privfl.attacks.gender import Scored, _sigmoid, client_scores

    rng = np.random.default_rng(3)
    labels = np.tile([0, 1], 8)
    nan = float("nan")
    items = [
        Scored(
            r, c, float(rng.normal(0.6 * (2 * labels[c] - 1), 2.0)), nan, nan, nan, nan, int(labels[c]), False
        )
        for r in range(1, 31)
        for c in range(16)
    ]
    ids, score, label = client_scores(items)
    assert ids.tolist() == list(range(16)) and label.tolist() == labels.tolist()
    np.testing.assert_allclose(score[5], _sigmoid(np.mean([t.odds for t in items if t.client == 5])))
    single = [roc_auc_score(labels, [t.odds for t in items if t.round == r]) for r in range(1, 31)]
    assert np.median(single) < 0.8 < 0.95 < roc_auc_score(label, score)


def test_log_odds_are_finite_for_a_sure_classifier():
    from privfl.attacks.gender import log_odds

    x = np.r_[np.zeros((5, 2)), 100 * np.ones((5, 2))]
    clf = fit_classifier(x, np.r_[np.zeros(5, int), np.ones(5, int)])
    odds = log_odds(clf, x)
    assert np.isfinite(odds).all() and odds[:5].max() < 0 < odds[5:].min()


def test_speeds_must_include_the_recorded_speech():
    from privfl.errors import ConfigError

    with pytest.raises(ConfigError, match="must include 1.0"):
        GenderAttackConfig(speeds=(0.9, 1.1)).validate()
    GenderAttackConfig(speeds=(1.0,)).validate()


def test_views_parse_ranges_and_refuse_what_is_not_a_view():
    from privfl.errors import ConfigError

    assert parse_views("fc-profile:2-5,first-layer:2-3") == ENSEMBLE_VIEWS
    assert parse_views("fc-profile:3,probe,activation-pitch") == DEFAULT_VIEWS
    assert parse_views("all-layers:0, fc-profile:3,fc-profile:3") == (("all-layers", 0), ("fc-profile", 3))
    assert parse_views("fc-profile:3,probe") == (("fc-profile", 3), ("probe", 0))
    assert parse_views("probe") == parse_views("probe:0") == (("probe", 0),)
    for bad in ("fc-profile", "conv:3", "fc-profile:5-2", "fc-profile:-1", "fc-profile:x", "probe:2"):
        with pytest.raises(ConfigError, match="FEATURES:K"):
            parse_views(bad)
    with pytest.raises(ConfigError, match="views are empty"):
        GenderAttackConfig(views=()).validate()
    with pytest.raises(ConfigError, match="subspace size k >= 0"):
        GenderAttackConfig(views=(("fc-profile", -1),)).validate()
    with pytest.raises(ConfigError, match="subspace size k >= 0"):
        GenderAttackConfig(views=(("probe", 3),)).validate()
    GenderAttackConfig(views=(("probe", 0),)).validate()


def test_each_view_is_its_own_subspace_and_the_log_odds_are_their_mean():
    from privfl.attacks.gender import client_subspace, log_odds, project

    rng = np.random.default_rng(4)
    real = {"fc-profile": rng.normal(size=(16, 30)), "first-layer": rng.normal(size=(16, 20))}
    shadow = {"fc-profile": rng.normal(size=(12, 30)), "first-layer": rng.normal(size=(12, 20))}
    views = (("fc-profile", 2), ("fc-profile", 4), ("first-layer", 0), ("first-layer", 3))
    got = project_views(shadow, real, views)
    assert len(got) == 4
    for (name, k), (ps, pr) in zip(views, got, strict=True):
        basis = client_subspace(real[name], k)
        np.testing.assert_allclose(ps, project(shadow[name], basis), atol=1e-12)
        np.testing.assert_allclose(pr, project(real[name], basis), atol=1e-12)
        assert pr.shape == (16, k or 20)
    labels = np.tile([0, 1], 6)
    config = GenderAttackConfig(views=views)
    expected = np.mean([log_odds(fit_classifier(ps, labels), pr) for ps, pr in got], axis=0)
    np.testing.assert_allclose(view_log_odds(got, labels, config), expected)
    assert not np.allclose(expected, log_odds(fit_classifier(got[0][0], labels), got[0][1]))  # not one view


# --- the model-behaviour probe ---------------------------------------------------------------------
def probe_population(signal: float, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Loss drops [16 clients, 12 voices x 10 utterances] with a per-voice offset and scale that every
    client shares (some voices improve more under any update), noise, and `signal` extra drop on the
    voices of the client's own gender."""
    clients = np.tile([0, 1], 8)  # 1: female
    voices = np.repeat([f"v{i}" for i in range(12)], 10)
    female = np.repeat(np.tile([1, 0], 6), 10)
    shared = np.repeat(rng.normal(size=12) * 5.0, 10) + rng.normal(size=120)
    scale = np.repeat(rng.uniform(0.5, 20.0, size=12), 10)
    same = (clients[:, None] == female[None, :]).astype(float)
    drops = shared + scale * (rng.normal(size=(16, 120)) + signal * same)
    return drops, female, voices, clients


def test_probe_scores_find_a_planted_own_gender_loss_drop():
    """Clients whose models improve more on their own gender's voices score to their gender, whatever the
    voices' shared offsets and scales; the scores are standardised over the round's clients."""
    from privfl.attacks.gender import probe_scores

    drops, female, voices, clients = probe_population(0.5, np.random.default_rng(5))
    scores = probe_scores(drops, female, voices)
    assert roc_auc_score(clients, scores) > 0.95
    np.testing.assert_allclose([scores.mean(), scores.std()], [0.0, 1.0], atol=1e-9)
    # the voices' gender, swapped, mirrors the scores: the probe reads the labels it is given
    np.testing.assert_allclose(probe_scores(drops, 1 - female, voices), -scores, atol=1e-9)
    # a shared per-voice shift or a positive per-voice scale changes nothing
    shifted = drops * np.repeat(np.arange(1, 13), 10) + np.repeat(np.arange(12) * 100.0, 10)
    np.testing.assert_allclose(probe_scores(shifted, female, voices), scores, atol=1e-9)


def test_probe_scores_without_signal_or_under_the_control_labels_are_at_chance():
    """No own-gender drop: chance. A planted one read through the control's labels (random halves of each
    voice called female): chance too, and the control never labels a voice both ways in one pseudo-voice."""
    from privfl.attacks.gender import probe_control_labels, probe_scores

    rng = np.random.default_rng(6)
    plain, control = [], []
    for _ in range(40):
        drops, female, voices, clients = probe_population(0.0, rng)
        plain.append(roc_auc_score(clients, probe_scores(drops, female, voices)))
        drops, female, voices, clients = probe_population(0.5, rng)
        fake, pseudo = probe_control_labels(voices, rng)
        for v in np.unique(voices):
            assert fake[voices == v].sum() == 5  # half of each voice's 10 utterances
        control.append(roc_auc_score(clients, probe_scores(drops, fake, pseudo)))
    assert abs(np.mean(plain) - 0.5) < 0.06 and abs(np.mean(control) - 0.5) < 0.06, (plain, control)
    assert np.std(control) < 0.2


def test_probe_refuses_one_label_and_models_without_the_head():
    from privfl.attacks.gender import _probe_head, probe_scores
    from privfl.errors import AttackError, ConfigError

    drops, female, voices, _ = probe_population(0.5, np.random.default_rng(7))
    with pytest.raises(AttackError, match="both labels"):
        probe_scores(drops, np.ones_like(female), voices)
    mixed = female.copy()
    mixed[0] = 1 - mixed[0]
    with pytest.raises(AttackError, match="one per voice"):
        probe_scores(drops, mixed, voices)
    with pytest.raises(ConfigError, match="fc1 -> ReLU -> fc2"):
        _probe_head(torch.nn.Sequential(torch.nn.Linear(3, 2)))


def test_probe_loss_drops_are_the_clients_heads_on_the_global_models_features():
    """A zero update drops nothing; an update of the head changes the loss exactly as the client's model
    would (only the head changed); a change below the head is not read (the features are w_t's)."""
    from privfl.attacks.gender import head_inputs, probe_loss_drops
    from privfl.models import get_flat, layer_slices, set_flat

    cfg = ATTACK_CFG.model
    model = build_model(cfg, N_MELS)
    speech = make_speech_set({"a": "female", "b": "male"}, 5, n_mels=N_MELS, seed=3)
    w = initial_weights(cfg, N_MELS, 0)
    slices = layer_slices(model)
    rng = np.random.default_rng(8)
    head = np.zeros_like(w)
    for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
        head[slices[name]] = rng.normal(size=slices[name].stop - slices[name].start) * 0.3
    below = np.zeros_like(w)
    below[slices["conv.weight"]] = 0.5
    other = np.zeros_like(w)  # a second client's head: first and last clients both change the head
    for name in ("fc1.weight", "fc2.bias"):
        other[slices[name]] = rng.normal(size=slices[name].stop - slices[name].start) * 0.3
    drops = probe_loss_drops(model, speech, w, np.stack([head, np.zeros_like(w), below, other]))
    assert drops.shape == (4, len(speech))
    np.testing.assert_allclose(drops[1], 0.0, atol=1e-7)
    np.testing.assert_allclose(drops[2], 0.0, atol=1e-7)
    reference = build_model(cfg, N_MELS).eval()

    def loss(weights: np.ndarray) -> torch.Tensor:
        set_flat(reference, weights)
        with torch.inference_mode():
            logits = reference(speech.x, speech.lengths)
            return torch.nn.functional.cross_entropy(logits, speech.y, reduction="none")

    for k, delta in ((0, head), (3, other)):
        np.testing.assert_allclose(drops[k], (loss(w) - loss(w + delta)).numpy(), rtol=1e-4, atol=1e-5)
        assert np.abs(drops[k]).max() > 1e-3
    # the caller's model is left at w_t with no hook of the workers' on it
    np.testing.assert_array_equal(get_flat(model), w)
    assert not model.fc1._forward_hooks
    assert head_inputs(model, w, speech).shape == (len(speech), model.fc1.in_features)
    assert not model.fc1._forward_hooks
    assert probe_loss_drops(model, speech, w, np.zeros((0, w.shape[0]), np.float32)).shape == (0, len(speech))


def test_probe_and_classifier_views_are_rank_averaged():
    from privfl.attacks.gender import _sigmoid, combine_scores

    odds = np.array([3.0, -1.0, 0.5, 10.0])
    probe = np.array([0.1, 0.2, -2.0, 0.3])
    np.testing.assert_allclose(combine_scores(odds, None), _sigmoid(odds))
    np.testing.assert_allclose(combine_scores(None, probe), _sigmoid(probe))
    # ranks (0..3)/3: odds 2,0,1,3; probe 1,2,0,3
    np.testing.assert_allclose(combine_scores(odds, probe), np.array([1.5, 1.0, 0.5, 3.0]) / 3)


@pytest.mark.parametrize("name", ["cnn", "lstm"])
def test_head_inputs_batched_by_length_are_each_utterances_own(name):
    """Batching in order of length must give every utterance the features it gets on its own, in order."""
    from privfl.attacks.gender import head_inputs

    cfg = ModelConfig(name=name, conv_channels=4, lstm_hidden=6, fc_hidden=8)
    model = build_model(cfg, N_MELS)
    speech = make_speech_set({"a": "female", "b": "male"}, 7, n_mels=N_MELS, seed=4)
    lengths = torch.tensor([20, 11, 20, 7, 15, 11, 20, 9, 12, 20, 11, 7, 18, 20])
    speech = dataclasses.replace(
        speech, x=speech.x * (torch.arange(20)[None, :, None] < lengths[:, None, None]), lengths=lengths
    )
    w = initial_weights(cfg, N_MELS, 1)
    got = head_inputs(model, w, speech, batch_size=3)
    seen = []
    hook = model.fc1.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    with torch.inference_mode():
        for i in range(len(speech)):
            model(speech.x[i : i + 1], speech.lengths[i : i + 1])
    hook.remove()
    np.testing.assert_allclose(got.numpy(), torch.cat(seen).numpy(), rtol=1e-5, atol=1e-6)


def test_head_inputs_in_parallel_equal_one_forward_pass_per_utterance():
    """Batches run on worker threads, each on its own model copy; rows come back in utterance order."""
    from privfl.attacks.gender import head_inputs
    from privfl.models import set_flat

    speech = make_speech_set({"a": "female", "b": "male", "c": "male"}, 9, n_mels=N_MELS, seed=4)
    lengths = torch.tensor([20 - (i * 7) % 13 for i in range(len(speech))])
    frames = torch.arange(20)[None, :, None] < lengths[:, None, None]  # padding frames are zeros
    speech = dataclasses.replace(speech, x=speech.x * frames, lengths=lengths)
    w = initial_weights(ATTACK_CFG.model, N_MELS, 2)
    got = head_inputs(build_model(ATTACK_CFG.model, N_MELS), w, speech, batch_size=4)
    reference = build_model(ATTACK_CFG.model, N_MELS).eval()
    set_flat(reference, w)
    seen = []
    reference.fc1.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    with torch.inference_mode(), torch_threads(1):
        for i in range(len(speech)):
            reference(speech.x[i : i + 1], speech.lengths[i : i + 1])
    torch.testing.assert_close(got, torch.cat(seen), rtol=1e-6, atol=1e-6)
    assert len({tuple(r.tolist()) for r in got}) == len(speech)


# --- the pitch view ---------------------------------------------------------------------------------
SPEEDS = np.array([0.9, 1.0, 1.1])


def pitch_world(seed: int, pitch_gender: bool, pitch_speed: bool, n_real: int = 80):
    """Shadow features of 4 auxiliary speakers at 3 speeds and real clients' features, 40 dimensions.

    Every speaker has a large idiosyncratic offset, and the auxiliary ones' offsets line up with their
    gender along a direction `spurious` that says nothing about the real clients' genders. With
    `pitch_speed`, speed moves a voice along `pitch`; with `pitch_gender`, female real clients sit
    higher along `pitch` than male ones (female voices are higher)."""
    rng = np.random.default_rng(seed)
    pitch, spurious = np.linalg.qr(rng.normal(size=(40, 2)))[0].T
    speakers, speed, x = [], [], []
    for i, female in enumerate((1, 1, 0, 0)):
        offset = (
            3.0 * rng.normal(size=40) + 4.0 * (2 * female - 1) * spurious + 1.5 * (2 * female - 1) * pitch
        )
        for f in SPEEDS:
            speakers.append(f"a{i}")
            speed.append(f)
            x.append(offset + pitch_speed * 20.0 * np.log(f) * pitch + 0.1 * rng.normal(size=40))
    y = np.arange(n_real) % 2
    real = 3.0 * rng.normal(size=(n_real, 40)) + pitch_gender * 4.0 * np.outer(2 * y - 1, pitch)
    return np.array(x), np.log(np.array(speed)), np.array(speakers), real, y


def test_pitch_scores_find_a_planted_pitch_cue_that_a_gender_classifier_on_the_shadows_misses():
    from privfl.attacks.gender import pitch_scores

    x, log_speed, speakers, real, y = pitch_world(0, pitch_gender=True, pitch_speed=True)
    assert roc_auc_score(y, pitch_scores(x, log_speed, speakers, real)) > 0.9
    # the auxiliary speakers' gender labels lean on their idiosyncrasies (the spurious direction)
    female = np.array([s in ("a0", "a1") for s in speakers]).astype(int)
    classifier = fit_classifier(x, female)
    assert roc_auc_score(y, classifier.decision_function(real)) < 0.75


@pytest.mark.parametrize("gender, speed", [(False, True), (True, False)])
def test_pitch_scores_are_at_chance_without_a_pitch_cue_in_the_clients_or_in_the_speeds(gender, speed):
    """No gender along pitch in the real clients, or speed moving nothing: nothing to find (the offsets
    still tell the auxiliary genders apart, which the view must not use)."""
    from privfl.attacks.gender import pitch_scores

    aucs = [
        roc_auc_score(y, pitch_scores(x, t, s, real))
        for x, t, s, real, y in (pitch_world(seed, gender, speed, 40) for seed in range(20))
    ]
    assert abs(np.mean(aucs) - 0.5) < 0.06, aucs


def test_pitch_control_targets_are_orthogonal_to_speed_and_find_nothing():
    from privfl.attacks.gender import (
        _standardise,
        pitch_control_targets,
        pitch_direction,
        pitch_scores,
    )

    rng = np.random.default_rng(3)
    aucs, attack = [], []
    for seed in range(20):
        x, log_speed, speakers, real, y = pitch_world(seed, pitch_gender=True, pitch_speed=True, n_real=40)
        target = pitch_control_targets(rng.normal(size=len(speakers)), log_speed, speakers)
        for s in np.unique(speakers):
            m = speakers == s
            assert abs(target[m].sum()) < 1e-9 and abs(target[m] @ log_speed[m]) < 1e-9
            assert np.abs(target[m]).max() > 1e-3  # three speeds leave one direction orthogonal to speed
        score = _standardise(real @ pitch_direction(x, target, speakers))
        aucs.append(roc_auc_score(y, score))
        attack.append(roc_auc_score(y, pitch_scores(x, log_speed, speakers, real)))
    assert abs(np.mean(aucs) - 0.5) < 0.08 and np.mean(attack) > 0.9, (aucs, attack)
    # two speeds per speaker leave no target orthogonal to speed
    two = np.array([np.log(0.9), 0.0] * 2)
    none = pitch_control_targets(np.array([1.0, -2.0, 0.5, 3.0]), two, np.array(list("aabb")))
    assert np.abs(none).max() < 1e-12  # the attack skips such a relabelling (rounding leaves ~1e-16)


def test_pitch_direction_ignores_what_tells_the_speakers_apart_and_refuses_one_speed_each():
    from privfl.attacks.gender import pitch_direction, voice_speed
    from privfl.errors import AttackError

    x, log_speed, speakers, _, _ = pitch_world(1, pitch_gender=True, pitch_speed=True)
    per_speaker = 100.0 * np.random.default_rng(2).normal(size=(4, 40))
    shifted = x + per_speaker[np.searchsorted(np.unique(speakers), speakers)]
    # adding any constant per speaker changes nothing: only within-speaker contrasts count
    np.testing.assert_allclose(
        pitch_direction(x, log_speed, speakers), pitch_direction(shifted, log_speed, speakers), atol=1e-9
    )
    with pytest.raises(AttackError, match="raise --shadow-clients"):
        pitch_direction(x[::3], log_speed[::3], speakers[::3])
    assert voice_speed("ravdess-02@speed1.1") == ("ravdess-02", 1.1)
    assert voice_speed("ravdess-02") == ("ravdess-02", 1.0)


def test_pitch_views_parse_and_need_three_and_two_speeds():
    from privfl.errors import ConfigError

    assert parse_views("fc-profile:3,probe,pitch") == (("fc-profile", 3), ("probe", 0), ("pitch", 0))
    assert parse_views("pitch:0") == (("pitch", 0),)
    assert parse_views("activation-pitch:0,pitch") == (("activation-pitch", 0), ("pitch", 0))
    for bad in ("pitch:3", "activation-pitch:3"):
        with pytest.raises(ConfigError, match="FEATURES:K"):
            parse_views(bad)
    with pytest.raises(ConfigError, match="'pitch' gender view needs .* three speeds or more"):
        GenderAttackConfig(views=(("pitch", 0),), speeds=(0.9, 1.0)).validate()
    GenderAttackConfig(views=(("pitch", 0),), speeds=(0.9, 1.0, 1.1)).validate()
    with pytest.raises(
        ConfigError, match=r"'activation-pitch' gender view needs .* two speeds .*got speeds \[1.0\]"
    ):
        GenderAttackConfig(views=(("activation-pitch", 0),), speeds=(1.0,)).validate()
    GenderAttackConfig(views=(("activation-pitch", 0),), speeds=(1.0, 1.1)).validate()


def test_the_default_views_go_without_activation_pitch_at_one_speed_and_other_views_are_kept():
    from privfl.errors import ConfigError

    assert GenderAttackConfig().views == (("fc-profile", 3), ("probe", 0), ("activation-pitch", 0))
    assert GenderAttackConfig(speeds=(1.0,)).validate().views == (("fc-profile", 3), ("probe", 0))
    for speeds in ((0.9, 1.0), (1.0, 1.1), (0.9, 1.0, 1.1, 1.2)):
        assert GenderAttackConfig(speeds=speeds).validate().views == DEFAULT_VIEWS
    # views other than the default are never changed: one that names a pitch view is refused instead
    assert GenderAttackConfig(views=(("fc-profile", 3),), speeds=(1.0,)).views == (("fc-profile", 3),)
    with pytest.raises(ConfigError, match="three speeds or more"):
        GenderAttackConfig(views=(("fc-profile", 3), ("pitch", 0)), speeds=(1.0, 1.1)).validate()


def test_three_views_are_rank_averaged():
    from privfl.attacks.gender import _sigmoid, combine_scores

    odds = np.array([3.0, -1.0, 0.5, 10.0])
    probe = np.array([0.1, 0.2, -2.0, 0.3])
    pitch = np.array([0.0, 5.0, -1.0, 1.0])
    # ranks (0..3)/3: odds 2,0,1,3; probe 1,2,0,3; pitch 1,3,0,2
    np.testing.assert_allclose(combine_scores(odds, probe, pitch), np.array([4, 5, 1, 8]) / 9)
    np.testing.assert_allclose(combine_scores(None, None, pitch), _sigmoid(pitch))
    np.testing.assert_allclose(combine_scores(odds, None, pitch), np.array([3, 3, 1, 5]) / 6)


def pitched_voices(
    centres: dict[str, float], genders: dict[str, str], per_speaker: int, seed: int
) -> SpeechSet:
    """Random features plus an energy bump over the Mel bands centred at each speaker's `centres` (its
    'pitch': a higher voice puts it in higher bands)."""
    s = make_speech_set(genders, per_speaker, n_mels=N_MELS, seed=seed)
    bands = torch.arange(N_MELS, dtype=torch.float32)
    centre = torch.tensor([float(centres[sp]) for sp in s.speakers], dtype=torch.float32)
    bump = 6.0 * torch.exp(-((bands[None, :] - centre[:, None]) ** 2) / 2.0)
    return dataclasses.replace(s, x=s.x + bump[:, None, :])


def attack_on_pitched_clients(pitch_gender: bool, views: str, monkeypatch, shadow_clients: int = 12) -> dict:
    """The attack's AUCs on 160 one-speaker clients whose voices are a Mel-band bump (female higher
    when `pitch_gender`, otherwise anywhere regardless of gender); 4 auxiliary speakers at speeds
    0.9 / 1.0 / 1.1, each speed moving the bump by 8 log(f) bands, as speed perturbation moves pitch."""
    import privfl.attacks.gender as gender_module
    from privfl.attacks.shadow import SPEED_MARK

    rng = np.random.default_rng(5)
    aux_genders = {"af0": "female", "af1": "female", "am0": "male", "am1": "male"}
    aux_centre = {"af0": 4.6, "af1": 5.4, "am0": 1.8, "am1": 2.6}
    parts = []
    for f in (1.0, 0.9, 1.1):
        part = pitched_voices({s: c + 8 * np.log(f) for s, c in aux_centre.items()}, aux_genders, 12, 1)
        mark = "" if f == 1.0 else f"{SPEED_MARK}{f:g}"
        parts.append(dataclasses.replace(part, speakers=tuple(f"{s}{mark}" for s in part.speakers)))
    aux = SpeechSet.concat(parts)
    speakers = {f"c{i}": ("female" if i % 2 else "male") for i in range(160)}
    centres = {
        s: rng.uniform(4.2, 6.0)
        if g == "female" and pitch_gender
        else rng.uniform(1.2, 3.0)
        if pitch_gender
        else rng.uniform(1.2, 6.0)
        for s, g in speakers.items()
    }
    own = pitched_voices(centres, speakers, 6, 2)
    clients = one_speaker_clients(own, speakers)
    empty = aux.take(np.array([], dtype=np.int64))
    data = PreparedData(SimpleNamespace(), None, empty, empty, empty, parts[0], clients, N_MELS)
    monkeypatch.setattr(gender_module, "auxiliary_speech", lambda data, cfg, speeds: aux)
    config = GenderAttackConfig(
        shadow_clients=shadow_clients,
        shadow_size=6,
        speeds=(0.9, 1.0, 1.1),
        bootstrap=0,
        control_repeats=10,
        views=parse_views(views),
    )
    result, rows = attack_one_round(data, clients, config)
    return {
        "attack": rows["gender: per-client updates, all rounds combined"].metrics["auc"],
        "control": rows["gender: shuffled shadow labels (control)"].metrics["auc"],
        "notes": result.notes + rows["gender: per-client updates, all rounds combined"].notes,
    }


# with a classifier view the three scores are rank-averaged as with the probe; the probe itself finds
# nothing in this world (no emotion cue) and has its tests above
@pytest.mark.parametrize(
    "views", ["pitch", "fc-profile:3,pitch", "activation-pitch", "fc-profile:3,activation-pitch"]
)
def test_attack_finds_a_planted_pitch_cue_with_the_pitch_views_and_its_control_does_not(views, monkeypatch):
    auc = attack_on_pitched_clients(True, views, monkeypatch)
    assert auc["attack"] > 0.75, auc
    assert abs(auc["control"] - 0.5) < 0.15, auc
    view = views.rpartition(",")[2]
    ranked = f"the classifier views' and the {view} view's per-client scores rank-averaged"
    assert any(ranked in n for n in auc["notes"]) == ("fc-profile" in views), auc["notes"]


@pytest.mark.parametrize("view", ["pitch", "activation-pitch"])
def test_pitch_views_are_at_chance_when_pitch_says_nothing_about_gender(view, monkeypatch):
    auc = attack_on_pitched_clients(False, view, monkeypatch)
    assert abs(auc["attack"] - 0.5) < 0.15, auc
    assert abs(auc["control"] - 0.5) < 0.15, auc
    assert any(f"{view} (" in n and "no gender labels" in n for n in auc["notes"]), auc["notes"]


def pitch_rounds(seed: int, rounds: int = 9, n_real: int = 40, dims: int = 120):
    """Rounds of a pitch world with few shadow clients per round (2 speakers x 3 speeds): one direction u of
    a higher voice shared by every round, each round's features offset per speaker and per round, and real
    clients whose features lean along u by gender. Returns (shadow, log speed, speakers, real, labels)."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(dims)
    u /= np.linalg.norm(u)
    log_speed = np.tile(np.log(np.array([0.9, 1.0, 1.1])), 2)
    speakers = np.repeat(np.array(["a", "b"]), 3)
    y = np.arange(n_real) % 2
    shadow, real = [], []
    for r in range(rounds):
        offset = {s: 5 * rng.standard_normal(dims) + 3 * r for s in "ab"}
        shadow.append(
            np.array([offset[s] for s in speakers])
            + 10 * log_speed[:, None] * u
            + rng.standard_normal((len(speakers), dims))
        )
        real.append((2 * y - 1)[:, None] * 0.6 * u + 0.5 * rng.standard_normal((n_real, dims)) + 7 * r)
    return shadow, [log_speed] * rounds, [speakers] * rounds, real, y


def test_pitch_window_zero_is_each_rounds_own_pitch_scores():
    from privfl.attacks.gender import pitch_scores, pitch_window_scores

    shadow, log_speed, speakers, real, _ = pitch_rounds(0, rounds=4)
    for got, *one in zip(
        pitch_window_scores(shadow, log_speed, speakers, real, 0),
        shadow,
        log_speed,
        speakers,
        real,
        strict=True,
    ):
        np.testing.assert_allclose(got, pitch_scores(*one), atol=1e-12)


def test_pitch_window_pools_neighbouring_rounds_into_a_direction_one_round_is_too_few_for():
    from privfl.attacks.gender import pitch_window_scores

    auc = {0: [], 4: []}
    for seed in range(3):
        shadow, log_speed, speakers, real, y = pitch_rounds(seed)
        for w in auc:
            auc[w].append(
                roc_auc_score(y, np.mean(pitch_window_scores(shadow, log_speed, speakers, real, w), 0))
            )
    # 6 shadow clients per round find u only roughly (AUC 0.81-0.86 here); 9 rounds of them find it well
    assert np.mean(auc[4]) > 0.93 and np.mean(auc[4]) > np.mean(auc[0]) + 0.08, auc


def test_pitch_window_ignores_what_tells_the_speakers_or_the_rounds_apart():
    from privfl.attacks.gender import pitch_window_scores

    shadow, log_speed, speakers, real, _ = pitch_rounds(1, rounds=5)
    rng = np.random.default_rng(7)
    # a constant per speaker and round (not per speaker alone: the rounds' updates differ as a whole)
    shifted = [x + 100.0 * rng.standard_normal((2, x.shape[1]))[[0, 0, 0, 1, 1, 1]] for x in shadow]
    for a, b in zip(
        pitch_window_scores(shadow, log_speed, speakers, real, 2),
        pitch_window_scores(shifted, log_speed, speakers, real, 2),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, atol=1e-8)


def test_pitch_window_control_targets_find_nothing_and_rounds_without_targets_are_left_out():
    from privfl.attacks.gender import pitch_control_targets, pitch_scores, pitch_window_scores

    shadow, log_speed, speakers, real, y = pitch_rounds(2)
    rng = np.random.default_rng(11)
    aucs = []
    for _ in range(40):
        values = rng.standard_normal(len(speakers[0]))  # one value per voice, kept across rounds
        targets = [pitch_control_targets(values, t, s) for t, s in zip(log_speed, speakers, strict=True)]
        aucs.append(roc_auc_score(y, np.mean(pitch_window_scores(shadow, targets, speakers, real, 2), 0)))
    assert abs(np.mean(aucs) - 0.5) < 0.08, aucs
    # a round with no targets scores nothing and its neighbours leave its shadow clients out
    gap = list(log_speed)
    gap[1] = None
    out = pitch_window_scores(shadow, gap, speakers, real, 1)
    assert out[1] is None
    np.testing.assert_allclose(
        out[0], pitch_scores(shadow[0], log_speed[0], speakers[0], real[0]), atol=1e-12
    )


def test_a_negative_pitch_window_is_refused_naming_the_value():
    from privfl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"pitch_window must be >= 0 .*got -1"):
        GenderAttackConfig(pitch_window=-1).validate()
    assert GenderAttackConfig(pitch_window=2).validate().pitch_window == 2


def test_a_round_whose_shadow_clients_hold_one_speed_per_speaker_is_refused_naming_the_fix(monkeypatch):
    import privfl.attacks.gender as gender_module
    from privfl.attacks.shadow import SPEED_MARK
    from privfl.errors import AttackError

    # the round's shadow clients: each auxiliary speaker's recorded voice only (one speed each)
    sample = gender_module.sample_shadow_clients

    def one_voice_per_speaker(aux, n, size, rng):
        return [c for c in sample(aux, 24, size, rng) if SPEED_MARK not in c.speaker][:n]

    monkeypatch.setattr(gender_module, "sample_shadow_clients", one_voice_per_speaker)
    with pytest.raises(AttackError, match=r"4 shadow clients hold one speed per speaker: raise --shadow-"):
        attack_on_pitched_clients(True, "pitch", monkeypatch, shadow_clients=4)


# --- the activation-pitch view ----------------------------------------------------------------------
def activation_world(seed: int, gender_along_pitch: bool = True, n_real: int = 40, dims: int = 60):
    """Head inputs of 4 auxiliary speakers (2 female, 2 male) x 3 speeds x 10 utterances, where speed moves
    an utterance along `pitch` and each speaker sits at an offset of its own (larger for the females along a
    `spurious` direction), and real clients' fc-profiles that lean along `pitch` by gender (or along nothing).
    Returns (inputs, voices, real, labels, pitch, spurious)."""
    from privfl.attacks.shadow import SPEED_MARK

    rng = np.random.default_rng(seed)
    pitch, spurious = np.linalg.qr(rng.normal(size=(dims, 2)))[0].T
    inputs, voices = [], []
    for s, female in (("af0", 1), ("af1", 1), ("am0", 0), ("am1", 0)):
        offset = 3.0 * rng.normal(size=dims) + 6.0 * female * spurious
        for f in (0.9, 1.0, 1.1):
            for _ in range(10):
                inputs.append(offset + 20.0 * np.log(f) * pitch + 0.3 * rng.normal(size=dims))
                voices.append(s if f == 1.0 else f"{s}{SPEED_MARK}{f:g}")
    y = np.arange(n_real) % 2
    real = rng.normal(size=(n_real, dims)) + gender_along_pitch * 2.0 * np.outer(2 * y - 1, pitch)
    return np.array(inputs), np.array(voices), real, y, pitch, spurious


def test_activation_pitch_scores_find_the_pitch_direction_and_ignore_what_tells_speakers_apart():
    from privfl.attacks.gender import activation_pitch_scores, pitch_scores, voice_speed

    inputs, voices, real, y, pitch, spurious = activation_world(0)
    got = activation_pitch_scores(inputs, voices, real)
    assert roc_auc_score(y, got) > 0.95
    # the same as pitch_scores on each utterance's speaker and log speed (the voice names parsed)
    speakers, speeds = zip(*map(voice_speed, voices.tolist()), strict=True)
    np.testing.assert_allclose(
        got, pitch_scores(inputs, np.log(speeds), np.array(speakers), real), atol=1e-12
    )
    # a constant per auxiliary speaker (what tells speakers, hence their genders, apart) changes nothing
    shift = {s: 50.0 * np.random.default_rng(1).normal(size=inputs.shape[1]) for s in set(speakers)}
    moved = inputs + np.array([shift[s] for s in speakers])
    np.testing.assert_allclose(activation_pitch_scores(moved, voices, real), got, atol=1e-8)
    # clients that differ by gender along the auxiliary females' offset only: the view reads no label there
    fooled = real - np.outer(real @ pitch, pitch) + 2.0 * np.outer(2 * y - 1, spurious)
    assert abs(roc_auc_score(y, activation_pitch_scores(inputs, voices, fooled)) - 0.5) < 0.2


def test_activation_pitch_scores_are_at_chance_without_a_cue_or_under_the_control_targets():
    from privfl.attacks.gender import activation_pitch_scores, pitch_control_targets, voice_speed

    rng = np.random.default_rng(3)
    none, control = [], []
    for seed in range(20):
        inputs, voices, real, y, _, _ = activation_world(seed, gender_along_pitch=False)
        none.append(roc_auc_score(y, activation_pitch_scores(inputs, voices, real)))
        inputs, voices, real, y, _, _ = activation_world(seed)
        speakers, speeds = (np.array(v) for v in zip(*map(voice_speed, voices.tolist()), strict=True))
        target = pitch_control_targets(rng.normal(size=len(voices)), np.log(speeds), speakers)
        for s in set(speakers.tolist()):  # centred and orthogonal to the log speed within each speaker
            m = speakers == s
            assert abs(target[m].sum()) < 1e-9 and abs(target[m] @ np.log(speeds[m])) < 1e-9
        control.append(roc_auc_score(y, activation_pitch_scores(inputs, voices, real, target)))
    assert abs(np.mean(none) - 0.5) < 0.08, none
    assert abs(np.mean(control) - 0.5) < 0.08, control


def test_probe_and_activation_pitch_share_one_forward_pass_of_the_auxiliary_speech_a_round(monkeypatch):
    import privfl.attacks.gender as gender_module

    calls = []
    real_head_inputs = gender_module.head_inputs

    def counted(*args, **kwargs):
        calls.append(1)
        return real_head_inputs(*args, **kwargs)

    monkeypatch.setattr(gender_module, "head_inputs", counted)
    auc = attack_on_pitched_clients(True, "probe,activation-pitch", monkeypatch)
    assert len(calls) == 1, calls  # one attacked round
    assert auc["attack"] > 0.75, auc
    assert any("two ranks" in n and "activation-pitch view's mean score" in n for n in auc["notes"]), auc


def test_several_targets_in_one_solve_give_each_targets_own_scores():
    from privfl.attacks.gender import activation_pitch_scores, pitch_control_targets, voice_speed

    inputs, voices, real, _, _, _ = activation_world(4)
    speakers, speeds = (np.array(v) for v in zip(*map(voice_speed, voices.tolist()), strict=True))
    rng = np.random.default_rng(0)
    targets = [np.log(speeds)] + [
        pitch_control_targets(rng.normal(size=len(voices)), np.log(speeds), speakers) for _ in range(3)
    ]
    together = activation_pitch_scores(inputs, voices, real, np.column_stack(targets))
    assert together.shape == (len(real), 4)
    for i, t in enumerate(targets):
        np.testing.assert_allclose(
            together[:, i], activation_pitch_scores(inputs, voices, real, t), atol=1e-10
        )
    np.testing.assert_allclose(together[:, 0], activation_pitch_scores(inputs, voices, real), atol=1e-10)


# --- the reconstruction view ------------------------------------------------------------------------
def test_reconstructed_inputs_are_a_mean_of_the_clients_own_inputs_with_weights_summing_to_one():
    """Momentum SGD on a linear layer with bias: the reconstruction is exactly sum_i w_i a_i with sum w_i = 1,
    w_i = g_i . db / |db|^2 from the per-sample gradients, and exactly the input when all inputs are equal."""
    from privfl.attacks.gender import reconstructed_inputs

    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 3)
    w0 = torch.cat([layer.weight.detach().flatten(), layer.bias.detach()]).clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    a = torch.randn(8, 6)
    y = torch.randn(8, 3)
    coefficient = torch.zeros(8, 3)  # sum over the steps of -lr x momentum factor x g_i
    velocity = torch.zeros(8, 3)
    for _ in range(3):  # three full-batch steps; the per-sample gradients of the bias are g_i
        opt.zero_grad()
        out = layer(a)
        g = 2 * (out - y) / len(a)  # d(mean squared error)/d(out) per sample
        ((out - y) ** 2).sum(dim=1).mean().backward()
        velocity = 0.9 * velocity + g.detach()
        coefficient -= 0.1 * velocity
        opt.step()
    delta = (torch.cat([layer.weight.detach().flatten(), layer.bias.detach()]) - w0).double().numpy()[None]
    got = reconstructed_inputs(delta, slice(0, 18), slice(18, 21), 3)[0]
    db = coefficient.sum(dim=0).double()
    weights = (coefficient.double() @ db) / (db @ db)
    assert abs(float(weights.sum()) - 1.0) < 1e-6
    np.testing.assert_allclose(got, (weights @ a.double()).numpy(), atol=1e-5)
    # all inputs equal: the reconstruction is that input, whatever the gradients
    same = a[:1].repeat(8, 1)
    dw = torch.randn(8, 3).T @ same  # sum_i g_i a^T
    db = dw[:, 0] / same[0, 0]
    flat = torch.cat([dw.flatten(), db]).double().numpy()[None]
    np.testing.assert_allclose(
        reconstructed_inputs(flat, slice(0, 18), slice(18, 21), 3)[0], same[0].numpy(), atol=1e-5
    )
    # a client whose bias did not move gets zeros, not a division by zero
    assert not reconstructed_inputs(np.zeros((1, 21)), slice(0, 18), slice(18, 21), 3).any()


def test_reconstruction_scores_lean_female_for_female_like_inputs_and_refuse_one_label():
    from privfl.attacks.gender import reconstruction_scores

    rng = np.random.default_rng(0)
    female = np.tile([1, 0], 30)
    inputs = rng.normal(size=(60, 10)) + 2.0 * np.outer(2 * female - 1, np.eye(10)[2])
    y = np.tile([1, 0], 10)
    clients = rng.normal(size=(20, 10)) + 2.0 * np.outer(2 * y - 1, np.eye(10)[2])
    got = reconstruction_scores(inputs, female, clients)
    assert roc_auc_score(y, got) > 0.9 and abs(got.mean()) < 1e-12 and abs(got.std() - 1) < 1e-12
    with pytest.raises(ValueError):
        reconstruction_scores(inputs, np.ones(60, dtype=int), clients)


def test_the_reconstruction_view_parses_and_needs_no_speeds():
    assert parse_views("reconstruction") == parse_views("reconstruction:0") == (("reconstruction", 0),)
    GenderAttackConfig(views=(("reconstruction", 0),), speeds=(1.0,)).validate()


@pytest.mark.parametrize(
    "views, noted", [("probe", True), ("reconstruction", False), ("probe,reconstruction", False)]
)
def test_an_lstm_run_attacked_without_the_reconstruction_view_is_told_to_use_it(views, noted):
    lstm = ATTACK_CFG.override({"model.name": "lstm"})
    aux = voices({"af0": "female", "af1": "female", "am0": "male", "am1": "male"}, 6, 1, True)
    speakers = {f"c{i}": ("female" if i % 2 else "male") for i in range(8)}
    clients = one_speaker_clients(voices(speakers, 4, 2, True), speakers)
    empty = aux.take(np.array([], dtype=np.int64))
    data = PreparedData(None, None, empty, empty, empty, aux, clients, N_MELS)
    w = initial_weights(lstm.model, N_MELS, 0)
    deltas = np.random.default_rng(0).normal(scale=1e-3, size=(len(clients), w.size)).astype(np.float32)
    run = InMemoryRun(w, clients, deltas)
    run.config = lstm
    config = GenderAttackConfig(
        views=parse_views(views), speeds=(1.0,), bootstrap=0, control_repeats=2, shadow_size=4
    )
    with threadpool_limits(1), torch_threads(1):
        result = gender_attack(run, data, config)
    told = [n for n in result.notes if n.startswith("the LSTM's head inputs (mean tanh states) are signed")]
    assert len(told) == noted and all(n.endswith("--views reconstruction") for n in told), result.notes
