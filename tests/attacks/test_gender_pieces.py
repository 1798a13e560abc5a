"""The gender attack's pure pieces exactly: each config refusal by its message and at its boundary,
view parsing, the sigmoid's clipping, per-round scores and the aggregate row."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from torch import nn

from privfl.attacks import gender
from privfl.attacks.gender import (
    GenderAttackConfig,
    _aggregate_row,
    _aggregate_score,
    _default_shadow_size,
    _per_round,
    _sigmoid,
    first_layer_names,
    fit_classifier,
    log_odds,
    parse_views,
    profile_layer,
)
from privfl.config import ExperimentConfig
from privfl.errors import AttackError, ConfigError


# --- the config ------------------------------------------------------------------------------------
def test_the_defaults_validate() -> None:
    config = GenderAttackConfig()
    assert config.validate() is config
    assert (config.views, config.classifier, config.shadow_clients, config.speeds, config.pitch_window) == (
        (("fc-profile", 3), ("probe", 0), ("activation-pitch", 0)),
        "logreg",
        12,
        (0.9, 1.0, 1.1),
        1,
    )


def test_an_empty_or_malformed_view_is_refused_by_message() -> None:
    with pytest.raises(
        ConfigError, match=r"^gender views are empty; give at least one, e.g. --views fc-profile:3$"
    ):
        GenderAttackConfig(views=()).validate()
    for view in (("conv", 3), ("fc-profile", -1), ("fc-profile", 2.0)):
        with pytest.raises(
            ConfigError,
            match=rf"^gender view \({view[0]!r}, {view[1]!r}\) needs a feature set among fc-profile, "
            r"first-layer, all-layers and a subspace size k >= 0, or \(VIEW, 0\) with VIEW one of probe, "
            r"pitch, activation-pitch, reconstruction; e.g. --views fc-profile:2-5,first-layer:2-3$",
        ):
            GenderAttackConfig(views=(("first-layer", 2), view)).validate()
    GenderAttackConfig(views=(("all-layers", 0),)).validate()  # k = 0: no subspace


def test_an_unknown_classifier_is_refused_and_both_known_ones_pass() -> None:
    with pytest.raises(ConfigError, match=r"^gender classifier 'svm' is not one of logreg, mlp$"):
        GenderAttackConfig(classifier="svm").validate()
    GenderAttackConfig(classifier="mlp").validate()


def test_four_shadow_clients_are_enough_and_three_are_refused() -> None:
    GenderAttackConfig(shadow_clients=4).validate()
    with pytest.raises(
        ConfigError, match=r"^shadow_clients must be >= 4 \(two per gender at least\), got 3$"
    ):
        GenderAttackConfig(shadow_clients=3).validate()


def test_one_control_repeat_is_enough_and_none_is_refused() -> None:
    GenderAttackConfig(control_repeats=1).validate()
    with pytest.raises(ConfigError, match=r"^control_repeats must be >= 1, got 0$"):
        GenderAttackConfig(control_repeats=0).validate()


@pytest.mark.parametrize("field", ["shadow_size", "max_rounds", "bootstrap", "seed"])
def test_negative_sizes_and_seeds_are_refused_with_all_four_values(field) -> None:
    GenderAttackConfig(**{field: 0}).validate()
    values = {"shadow_size": 0, "max_rounds": 0, "bootstrap": 1000, "seed": 0, field: -1}
    got = ", ".join(str(values[k]) for k in ("shadow_size", "max_rounds", "bootstrap", "seed"))
    with pytest.raises(
        ConfigError, match=rf"^shadow_size, max_rounds, bootstrap and seed must be >= 0, got {got}$"
    ):
        GenderAttackConfig(**{field: -1}).validate()


def test_speeds_without_the_recorded_speech_or_none_at_all_are_refused() -> None:
    for speeds in ((0.9, 1.1), ()):
        message = (
            f"speeds {list(speeds)} must include 1.0 (the auxiliary speech as recorded), "
            "e.g. --speeds 0.9,1.0,1.1 or --speeds 1.0 for none"
        )
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            GenderAttackConfig(speeds=speeds).validate()
    with pytest.raises(ConfigError, match="speed"):
        GenderAttackConfig(speeds=(1.0, 1.0)).validate()  # the factors themselves are checked too


# --- views ----------------------------------------------------------------------------------------
def test_views_expand_ranges_in_order_without_repeats() -> None:
    assert parse_views(" first-layer:1-2 , fc-profile:0") == (
        ("first-layer", 1),
        ("first-layer", 2),
        ("fc-profile", 0),
    )
    assert parse_views("fc-profile:2-2") == (("fc-profile", 2),)
    assert parse_views("fc-profile:3,fc-profile:2-3") == (("fc-profile", 3), ("fc-profile", 2))
    with pytest.raises(
        ConfigError,
        match=r"^gender view 'fc-profile:3-2' is not FEATURES:K or FEATURES:K1-K2 with FEATURES one of "
        r"fc-profile, first-layer, all-layers and 0 <= K1 <= K2, nor one of probe, pitch, activation-pitch, "
        r"reconstruction; "
        r"e.g. --views fc-profile:2-5,first-layer:2-3 or --views fc-profile:3,probe$",
    ):
        parse_views("fc-profile:1,fc-profile:3-2")


# --- scores ---------------------------------------------------------------------------------------
def test_sigmoid_is_clipped_at_30_so_it_never_reaches_0_or_1() -> None:
    got = _sigmoid(np.array([0.0, 2.0, -1000.0, 1000.0, 30.0]))
    np.testing.assert_allclose(got[:2], [0.5, 1 / (1 + np.exp(-2.0))], rtol=1e-15)
    assert got[2] == 1 / (1 + np.exp(30.0)) and got[3] == 1 / (1 + np.exp(-30.0)) == got[4]
    assert 0.0 < got[2] and got[3] < 1.0


def test_per_round_scores_give_auc_and_balanced_accuracy_at_one_half() -> None:
    rounds = np.array([3, 3, 3, 3, 1, 1])
    scores = np.array([0.9, 0.5, 0.4, 0.2, 0.7, 0.6])
    labels = np.array([1, 0, 1, 0, 1, 1])
    assert _per_round(rounds, scores, labels) == [
        {"round": 1, "n": 2, "auc": None, "balanced_accuracy": None},
        # AUC 0.75; at P >= 0.5: TPR 1/2 (0.9 yes, 0.4 no), TNR 1/2 (0.5 called female, 0.2 not)
        {"round": 3, "n": 4, "auc": 0.75, "balanced_accuracy": 0.5},
    ]


def test_the_aggregate_row_scores_rounds_by_their_majority_gender() -> None:
    config = GenderAttackConfig(bootstrap=0)
    empty = _aggregate_row([], config)
    assert (empty.name, empty.observed) == ("gender: aggregate update", "aggregate")
    assert empty.reason == "w_{t+1} of the attacked rounds was not recorded" and empty.metrics is None
    rounds = [
        {"round": 1, "female_share": 0.8, "score": 0.9},
        {"round": 2, "female_share": 0.5, "score": 0.2},  # half is not a female majority
        {"round": 3, "female_share": 0.6, "score": 0.7},
        {"round": 4, "female_share": 0.1, "score": 0.4},
    ]
    row = _aggregate_row(rounds, config)
    assert row.per_round == rounds and row.reason == ""
    assert row.metrics["auc"] == 1.0
    same = _aggregate_row([{**r, "female_share": 0.9} for r in rounds], config)
    assert same.metrics is None and same.reason.startswith(
        "every attacked round's participants have the same majority gender, so the aggregate carries "
        "one label"
    )


def test_the_first_layer_is_found_in_a_nested_model_even_with_one_parameter() -> None:
    model = nn.Sequential(nn.Sequential(nn.Linear(3, 2, bias=False)), nn.Linear(2, 1))
    assert first_layer_names(model) == ("0.0.weight",)


def test_the_aggregate_score_reads_a_planted_direction_and_averages_the_feature_sets() -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 2  # 1 = female
    shadow = rng.normal(size=(40, 4)) + 2.0 * np.outer(2 * labels - 1, [1.0, 0, 0, 0])
    config = GenderAttackConfig()
    one = {"fc-profile": lambda d: d}
    female, male = np.array([3.0, 0, 0, 0]), np.array([-3.0, 0, 0, 0])
    assert _aggregate_score({"fc-profile": shadow}, labels, one, female, config) > 0.95
    assert _aggregate_score({"fc-profile": shadow}, labels, one, male, config) < 0.05
    # two feature sets: one classifier each, their log-odds averaged (the second reads it backwards)
    two = {"fc-profile": lambda d: d, "first-layer": lambda d: -d}
    both = {"fc-profile": shadow, "first-layer": shadow}
    odds = [log_odds(fit_classifier(shadow, labels), x[None])[0] for x in (female, -female)]
    assert odds[0] > 3 > -3 > odds[1]
    want = 1 / (1 + np.exp(-(odds[0] + odds[1]) / 2))
    assert _aggregate_score(both, labels, two, female, config) == pytest.approx(want, rel=1e-9)


def test_a_model_without_a_fully_connected_layer_has_no_profile_layer() -> None:
    assert profile_layer(nn.Sequential(nn.Conv1d(2, 2, 3), nn.Linear(4, 2))) == "1.weight"
    with pytest.raises(
        ConfigError, match=r"^Sequential has no fully connected layer for the fc-profile features$"
    ):
        profile_layer(nn.Sequential(nn.Conv1d(2, 2, 3)))


# --- the preflight --------------------------------------------------------------------------------
class FakeRun:
    """What gender_preflight reads of an observed run: its rounds, clients' genders, sizes, config."""

    def __init__(self, mode: str, batch: int, sizes) -> None:
        self.config = ExperimentConfig().override({"train.mode": mode, "train.batch_size": batch})
        self.asked: list = []
        truth = SimpleNamespace(genders=[("female",), ("male",)])
        self.observe = lambda r: (None, truth)
        self.run = SimpleNamespace(
            path=Path("runs/x"), load_updates=lambda r: {"num_samples": np.asarray(sizes[r])}
        )

    def select_rounds(self, rounds, max_rounds):
        self.asked.append((rounds, max_rounds))
        return [2, 4]


def aux_data(per_speaker: int, corpus=None):
    speakers = tuple(s for s in ("f1", "m1") for _ in range(per_speaker))
    return SimpleNamespace(aux=SimpleNamespace(speakers=speakers), corpus=corpus)


@pytest.fixture()
def checks(monkeypatch):
    seen = []
    monkeypatch.setattr(gender, "check_auxiliary", lambda aux: seen.append(("aux", aux)))
    monkeypatch.setattr(gender, "check_data_matches", lambda o, d, r: seen.append(("data", o, d, r)))
    return seen


def test_preflight_selects_the_configured_rounds_and_checks_the_data_on_the_first(checks) -> None:
    observed, data = FakeRun("fedavg", 4, {2: [6, 10], 4: [8]}), aux_data(12, corpus=object())
    config = GenderAttackConfig(rounds=(2, 4), max_rounds=3)
    assert gender.gender_preflight(observed, data, config) == [2, 4]
    assert observed.asked == [((2, 4), 3)]
    assert checks == [("aux", data.aux), ("data", observed, data, 2)]


def test_speed_perturbation_needs_the_corpus_audio(checks) -> None:
    observed = FakeRun("fedavg", 4, {2: [6], 4: [8]})
    with pytest.raises(
        AttackError,
        match=r"^speed-perturbed auxiliary speech needs the corpus's audio, and this data has none; "
        r"pass speeds=\(1.0,\) \(--speeds 1.0\)$",
    ):
        gender.gender_preflight(observed, aux_data(12), GenderAttackConfig(speeds=(0.9, 1.0)))
    gender.gender_preflight(observed, aux_data(12), GenderAttackConfig(speeds=(1.0,)))
    gender.gender_preflight(observed, aux_data(12, corpus=object()), GenderAttackConfig(speeds=(0.9, 1.0)))


def test_default_shadow_size_is_the_clients_median_capped_by_the_auxiliary_speakers() -> None:
    observed = FakeRun("fedavg", 4, {2: [6, 10, 30], 4: [8, 9]})
    several, one = GenderAttackConfig(), GenderAttackConfig(speeds=(1.0,))
    assert _default_shadow_size(observed, [2, 4], aux_data(12), several) == 9  # median of the five
    assert _default_shadow_size(observed, [2], aux_data(12), several) == 10
    assert _default_shadow_size(observed, [2, 4], aux_data(8), several) == 8  # the smallest speaker's count
    assert _default_shadow_size(observed, [2, 4], aux_data(8), one) == 6  # 3/4 of it with one speed
    assert _default_shadow_size(observed, [2, 4], aux_data(1), one) == 1
    empty = FakeRun("fedavg", 4, {2: []})
    assert _default_shadow_size(empty, [2], aux_data(8), several) == 8


def test_dp_sgd_shadow_clients_smaller_than_the_batch_are_refused_naming_both(checks) -> None:
    config = GenderAttackConfig(speeds=(1.0,))
    sizes = {2: [8, 8], 4: [8]}
    with pytest.raises(
        AttackError,
        match=r"^shadow clients of 8 utterances are smaller than the run's batch size 9, which DP-SGD's "
        r"sample "
        r"rate B/n does not allow; pass --shadow-size 9 or more \(the auxiliary speakers need that many "
        r"utterances each\)$",
    ):
        gender.gender_preflight(FakeRun("dp", 9, sizes), aux_data(20), config)
    gender.gender_preflight(FakeRun("dp", 8, sizes), aux_data(20), config)  # exactly the batch: allowed
    gender.gender_preflight(FakeRun("fedavg", 9, sizes), aux_data(20), config)  # only DP-SGD samples B/n
    with pytest.raises(AttackError, match="^shadow clients of 5 utterances"):
        gender.gender_preflight(
            FakeRun("dp", 9, sizes), aux_data(20), GenderAttackConfig(speeds=(1.0,), shadow_size=5)
        )


def test_default_shadow_size_takes_the_smallest_speakers_count_and_whole_counts() -> None:
    observed = FakeRun("fedavg", 4, {2: [40, 40], 4: []})
    uneven = SimpleNamespace(aux=SimpleNamespace(speakers=("a",) * 12 + ("b",) * 9 + ("c",) * 10))
    two_speeds = GenderAttackConfig(speeds=(1.0, 1.1))
    assert _default_shadow_size(observed, [2], uneven, two_speeds) == 9  # b's 9, not another count
    # two speeds are already several voices: the whole count, not 3/4 of it
    assert _default_shadow_size(observed, [2], aux_data(8), two_speeds) == 8
    # one speed: 3/4 of the smallest count, rounded down to a whole utterance, also with no sizes
    one = GenderAttackConfig(speeds=(1.0,))
    for rounds in ([2], [4]):
        got = _default_shadow_size(observed, rounds, uneven, one)
        assert got == 6 and isinstance(got, int)  # 27 // 4


def test_the_aggregate_scores_mlp_is_seeded_by_the_attack_seed() -> None:
    rng = np.random.default_rng(1)
    labels = np.arange(8) % 2
    shadow = rng.normal(size=(8, 2)) + 5.0 * np.outer(2 * labels - 1, [1.0, 0])
    aggregate = rng.normal(size=2)

    def want(seed: int) -> float:
        return float(_sigmoid(log_odds(fit_classifier(shadow, labels, "mlp", seed), aggregate[None])[0]))

    config = GenderAttackConfig(classifier="mlp", seed=7)
    got = _aggregate_score({"fc-profile": shadow}, labels, {"fc-profile": lambda d: d}, aggregate, config)
    assert got == want(7) != want(0)


def test_ranks_are_scaled_to_zero_one_and_a_lone_client_sits_in_the_middle() -> None:
    from privfl.attacks.gender import _rank01

    np.testing.assert_array_equal(_rank01(np.array([2.0, -1.0])), [1.0, 0.0])
    np.testing.assert_array_equal(_rank01(np.array([0.3, 0.3, 5.0])), [0.25, 0.25, 1.0])  # ties averaged
    one = _rank01(np.array([4.0]))
    assert one.dtype == np.float64 and one.tolist() == [0.5]
    assert _rank01(np.array([])).shape == (0,)


def test_standardise_centres_and_scales_each_column_and_zeroes_a_constant_one() -> None:
    from privfl.attacks.gender import _standardise

    x = np.array([[1.0, 10.0, 3.0], [3.0, 30.0, 3.0], [5.0, 20.0, 3.0]])
    got = _standardise(x)
    np.testing.assert_allclose(got[:, :2].mean(axis=0), 0.0, atol=1e-12)  # each column on its own mean
    np.testing.assert_allclose(got[:, :2].std(axis=0), 1.0)
    np.testing.assert_allclose(got[:, 0], np.array([-1.0, 0.0, 1.0]) * np.sqrt(1.5))
    assert np.isfinite(got).all() and not got[:, 2].any()  # the constant column becomes 0


# --- the probe's and the attack's refusals, by message ----------------------------------------------
def test_probe_scores_refuse_labels_that_split_a_voice_or_miss_a_gender_by_message() -> None:
    from privfl.attacks.gender import probe_scores

    voices = np.array(["a", "a", "b", "b", "c"])
    drops = np.arange(15.0).reshape(3, 5) ** 1.5
    with pytest.raises(
        AttackError,
        match=r"^the probe's labels must be one per voice; split a voice into pseudo-voices instead$",
    ):
        probe_scores(drops, np.array([1, 0, 0, 0, 1]), voices)
    for label, n in ((1, 3), (0, 0)):
        with pytest.raises(
            AttackError, match=rf"^the probe needs voices of both labels, got {n} of 3 female$"
        ):
            probe_scores(drops, np.full(5, label), voices)
    # a voice of one utterance is a voice like any other
    scores = probe_scores(drops, np.array([1, 1, 0, 0, 1]), voices)
    assert scores.shape == (3,) and np.isfinite(scores).all()


def test_a_model_without_the_fc1_relu_fc2_head_is_refused_for_the_probe_by_message() -> None:
    from privfl.attacks.gender import _probe_head

    message = (
        r"^the 'probe' gender view reads a classifier head fc1 -> ReLU -> fc2, which {} does not "
        r"have; use the paper CNN or LSTM, or drop 'probe' from --views$"
    )

    class OnlyFc1(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(3, 2), nn.ReLU()

    with pytest.raises(ConfigError, match=message.format("Sequential")):
        _probe_head(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(ConfigError, match=message.format("OnlyFc1")):
        _probe_head(OnlyFc1())


def test_the_reconstruction_view_finds_fc1s_slices_and_refuses_an_fc1_without_bias_by_message() -> None:
    from privfl.attacks.gender import _reconstruction_layer
    from privfl.config import ModelConfig
    from privfl.models import build_model, layer_slices

    class NoBias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(3, 2, bias=False), nn.Linear(2, 4)

    with pytest.raises(
        ConfigError,
        match=r"^the 'reconstruction' gender view reads the update of fc1's bias, and NoBias's fc1 has none; "
        r"use the paper CNN or LSTM, or drop 'reconstruction' from --views$",
    ):
        _reconstruction_layer(NoBias())
    model = build_model(ModelConfig(name="lstm"), 8)
    at = layer_slices(model)
    assert _reconstruction_layer(model) == (at["fc1.weight"], at["fc1.bias"], model.fc1.out_features)


def test_feature_sets_and_classifiers_outside_the_lists_are_refused_by_message() -> None:
    from privfl.attacks.gender import feature_columns

    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(
        ConfigError, match=r"^feature set 'last-layer' is not one of fc-profile, first-layer, all-layers$"
    ):
        feature_columns(model, "last-layer")
    with pytest.raises(ConfigError, match=r"^classifier 'svm' is not one of logreg, mlp$"):
        fit_classifier(np.eye(4), np.array([0, 1, 0, 1]), "svm")


def fake_observed(genders_per_client, partition: str = "iid"):
    truth = SimpleNamespace(genders=genders_per_client)
    return SimpleNamespace(
        observe=lambda r: (None, truth),
        run=SimpleNamespace(path=Path("runs/x")),
        config=ExperimentConfig().override({"data.partition": partition}),
    )


def test_clients_without_a_gender_to_infer_are_refused_naming_the_cause_and_the_fix() -> None:
    from privfl.attacks.gender import _check_gender_labels

    balanced = fake_observed([("female", "male"), ("male", "female")], partition="dirichlet")
    with pytest.raises(
        AttackError,
        match=r"^no client of runs/x has a gender to infer: each holds as many female as male speakers "
        r"\(data.partition = 'dirichlet'\); the gender attack needs clients of one speaker each, e.g. "
        r"privfl train --partition by-speaker --record-updates \.\.\.$",
    ):
        _check_gender_labels(balanced, [1])
    for genders, seen in (([("unknown",), ("unknown", "x")], "unknown, x"), ([()], "none")):
        with pytest.raises(
            AttackError,
            match=rf"^the corpus of runs/x \(synthetic\) has no usable gender labels for its clients "
            rf"\(genders seen: {seen}\); the gender attack needs a corpus with female/male speakers, "
            r"e.g. the built-in synthetic corpus, IEMOCAP or CREMA-D$",
        ):
            _check_gender_labels(fake_observed(genders), [1, 2])
    _check_gender_labels(fake_observed([]), [1])  # no client at all: nothing to refuse
    _check_gender_labels(fake_observed([("female", "male"), ("male",)]), [1])  # one client has one


def test_no_utterances_give_the_head_no_inputs_of_the_heads_width() -> None:
    from privfl.attacks.gender import head_inputs
    from privfl.config import ModelConfig
    from privfl.models import build_model, initial_weights
    from tests.attacks.conftest import make_speech_set

    cfg = ModelConfig(name="cnn", conv_channels=4, fc_hidden=8)
    model = build_model(cfg, 8)
    none = make_speech_set({"a": "female"}, 2).take(np.array([], dtype=np.int64))
    got = head_inputs(model, initial_weights(cfg, 8, 0), none)
    assert got.shape == (0, model.fc1.in_features) == (0, 16)


def test_the_probe_view_parses_anywhere_in_the_list_with_or_without_its_k() -> None:
    assert parse_views("probe,fc-profile:3") == (("probe", 0), ("fc-profile", 3))
    assert parse_views("first-layer:2, probe:0 ,probe") == (("first-layer", 2), ("probe", 0))
    with pytest.raises(ConfigError, match=r"^gender view 'probe:1' is not FEATURES:K"):
        parse_views("probe:1")


def test_fc_profile_norms_of_float32_updates_are_taken_in_float64() -> None:
    """Recorded updates are float32; the column norms (and so the features) are computed in float64."""
    from privfl.attacks.gender import FeatureMap

    rng = np.random.default_rng(3)
    deltas = (rng.normal(size=(2, 40)) * 10.0 ** rng.integers(-6, 2, size=40)).astype(np.float32)
    fmap = FeatureMap(np.arange(4, 36, dtype=np.int64), rows=4)
    wide = deltas.astype(np.float64)[:, 4:36].reshape(2, 4, 8)
    norms = np.sqrt((wide**2).sum(axis=1))
    want = norms / np.linalg.norm(norms, axis=1, keepdims=True)
    got = fmap(deltas)
    assert got.dtype == np.float64 and fmap.size == 8
    np.testing.assert_allclose(got, want, rtol=1e-13)
    plain = FeatureMap(np.arange(4, 36, dtype=np.int64))(deltas)  # the values themselves, unit norm
    want = wide.reshape(2, -1) / np.linalg.norm(wide.reshape(2, -1), axis=1, keepdims=True)
    assert plain.dtype == np.float64 and plain.shape == (2, 32)
    np.testing.assert_allclose(plain, want, rtol=1e-13)


def test_the_aggregate_row_is_scored_at_one_half_with_the_attacks_bootstrap_and_seed() -> None:
    rounds = [
        {"round": 1, "female_share": 0.8, "score": 0.9},
        {"round": 2, "female_share": 0.5, "score": 0.2},
        {"round": 3, "female_share": 0.6, "score": 0.45},  # female, but scored below one half
        {"round": 4, "female_share": 0.1, "score": 0.4},
    ]
    row = _aggregate_row(rounds, GenderAttackConfig(bootstrap=30, seed=4))
    assert row.observed == "aggregate" and row.party == "server"
    assert row.notes == [
        "one score per round: the classifier applied to w_{t+1} - w_t; label: the participants' majority "
        "gender (by samples)"
    ]
    m = row.metrics
    assert m["threshold_rule"] == "given" and m["balanced_accuracy"] == 0.75  # at P >= 0.5
    assert (m["bootstrap"]["resamples"], m["bootstrap"]["seed"]) == (30, 4)


def test_the_views_mlps_are_seeded_by_the_attack_seed() -> None:
    from privfl.attacks.gender import view_log_odds

    rng = np.random.default_rng(2)
    labels = np.arange(8) % 2
    shadow = rng.normal(size=(8, 2)) + 5.0 * np.outer(2 * labels - 1, [1.0, 0])
    real = rng.normal(size=(3, 2))

    def want(seed: int) -> np.ndarray:
        return log_odds(fit_classifier(shadow, labels, "mlp", seed), real)

    got = view_log_odds([(shadow, real)], labels, GenderAttackConfig(classifier="mlp", seed=7))
    np.testing.assert_array_equal(got, want(7))
    assert not np.array_equal(got, want(0))


def test_log_odds_of_a_certain_classifier_stop_at_the_clip() -> None:
    x = np.r_[np.zeros((5, 2)), np.ones((5, 2))]
    clf = fit_classifier(x, np.r_[np.zeros(5, int), np.ones(5, int)])
    far = np.array([[-1e6, -1e6], [1e6, 1e6]])
    assert clf.predict_proba(far)[:, 1].tolist() == [0.0, 1.0]  # certain, both ways
    low, high = 1e-13, 1 - 1e-13  # P clipped to [1e-13, 1 - 1e-13]: log-odds about -+29.93
    want = [np.log(low) - np.log1p(-low), np.log(high) - np.log1p(-high)]
    np.testing.assert_allclose(log_odds(clf, far), want, rtol=1e-12)


def test_the_client_subspace_centres_each_feature_on_its_own_mean() -> None:
    from privfl.attacks.gender import client_subspace

    rng = np.random.default_rng(8)
    real = 0.05 * rng.normal(size=(16, 12)) + np.outer(np.tile([-1.0, 1.0], 8), np.eye(12)[3])
    real += np.linspace(
        -40.0, 40.0, 12
    )  # features at very different levels: not a direction clients differ in
    basis = client_subspace(real, 1)
    assert abs(basis[3, 0]) > 0.99


def test_the_score_note_names_the_rule_of_the_views_that_scored() -> None:
    from privfl.attacks.gender import Scored, _score_note

    nan = float("nan")
    both = (
        "score: the mean of two ranks among the clients (scaled to [0, 1]): the classifier views' mean "
        "log-odds and the probe's mean score over the client's rounds; threshold 0.5 (the median client)"
    )
    probe = "score: sigmoid of the probe's mean score over the client's rounds; threshold 0.5 (the mean)"
    odds = "score: P(female) from the mean log-odds over the client's rounds; threshold 0.5"
    four = (
        "score: the mean of four ranks among the clients (scaled to [0, 1]): the classifier views' mean "
        "log-odds, the probe's mean score, the pitch view's mean score and the activation-pitch view's mean "
        "score over the client's rounds; threshold 0.5 (the median client)"
    )
    act = (
        "score: sigmoid of the activation-pitch view's mean score over the client's rounds; threshold 0.5 "
        "(the mean)"
    )
    # one item is enough (a round that scored one client); every item has the same views
    assert _score_note([Scored(1, 7, 0.3, -1.2, nan, nan, nan, 1, False)]) == both
    assert _score_note([Scored(1, 7, nan, -1.2, nan, nan, nan, 1, False)]) == probe
    assert _score_note([Scored(1, 7, 0.3, -1.2, 0.4, 2.0, nan, 1, False)]) == four
    assert _score_note([Scored(1, 7, nan, nan, nan, 2.0, nan, 1, False)]) == act
    five = _score_note([Scored(1, 7, 0.3, -1.2, 0.4, 2.0, 0.5, 1, False)])
    assert (
        five.startswith("score: the mean of five ranks")
        and "and the reconstruction view's mean score" in five
    )
    two = [Scored(1, 7, 0.3, nan, nan, nan, nan, 1, False), Scored(2, 7, 0.1, nan, nan, nan, nan, 1, False)]
    assert _score_note(two) == odds
    assert _score_note([]) == odds  # nothing scored: the classifier's rule, the attack's default


def control_items(k: int, odds: list[float], labels: list[int]) -> list:
    """One relabelling's control items: classifier log-odds only, round 1, client i the i-th value."""
    from privfl.attacks.gender import Scored

    nan = float("nan")
    return [
        Scored(1, c, o, nan, nan, nan, nan, lab, False, k)
        for c, (o, lab) in enumerate(zip(odds, labels, strict=True))
    ]


def test_each_relabelling_is_scored_on_its_own_and_one_class_relabellings_are_skipped() -> None:
    from privfl.attacks.gender import _single_relabelling_aucs

    perfect = control_items(0, [2.0, -1.0, 1.0, -2.0], [1, 0, 1, 0])  # AUC 1
    three_quarters = control_items(1, [2.0, 1.0, -1.0, -2.0], [1, 0, 1, 0])  # 3 of 4 pairs in order
    backwards = control_items(2, [-2.0, 1.0, -1.0, 2.0], [1, 0, 1, 0])  # AUC 0
    one_class = control_items(3, [1.0, 2.0], [1, 1])
    assert _single_relabelling_aucs(perfect + three_quarters + backwards + one_class) == [1.0, 0.75, 0.0]
    assert _single_relabelling_aucs(one_class) == [] == _single_relabelling_aucs([])


def test_the_control_note_leaves_out_the_spread_when_no_relabelling_could_be_scored() -> None:
    from privfl.attacks.gender import _per_client_rows

    single = control_items(-1, [1.0, -1.0], [1, 0])  # relabelling -1: the attack's own items
    config = GenderAttackConfig(bootstrap=0, control_repeats=2)
    rows = _per_client_rows(single, control_items(0, [1.0, 2.0], [1, 1]), config, "per-client updates")
    assert rows[2].notes[0].endswith("utterances called female): AUC should be about 0.5")


def test_a_round_called_right_at_one_half_has_balanced_accuracy_one() -> None:
    got = _per_round(np.array([1, 1, 1]), np.array([0.5, 0.49, 0.9]), np.array([1, 0, 1]))
    assert got == [{"round": 1, "n": 3, "auc": 1.0, "balanced_accuracy": 1.0}]  # 0.5 itself is female
