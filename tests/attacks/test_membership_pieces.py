"""The membership attacks' pure pieces exactly: each config refusal by its message, LiRA's score by
hand, which DP claim covers which observation, per-round AUCs, LiRA's power note and the
candidate sets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privfl.attacks.membership import (
    MembershipAttackConfig,
    _concat_xy,
    _cosines,
    _dp_for,
    _lira_power,
    _per_round_auc,
    balanced_sets,
    lira_score,
)
from privfl.attacks.observe import Privacy
from privfl.errors import AttackError, ConfigError
from tests.attacks.conftest import make_speech_set


# --- the config ------------------------------------------------------------------------------------
def test_the_defaults_validate_and_the_methods_are_named() -> None:
    config = MembershipAttackConfig()
    assert config.validate() is config
    assert config.methods == ("speaker", "loss", "alignment")
    assert MembershipAttackConfig(methods=("lira",), lira_shadows=2).validate().lira_shadows == 2


def test_unknown_or_no_methods_are_refused_by_name() -> None:
    with pytest.raises(
        ConfigError, match=r"^membership method\(s\) \['guess'\] not among speaker, loss, alignment, lira$"
    ):
        MembershipAttackConfig(methods=("loss", "guess")).validate()
    with pytest.raises(ConfigError, match=r"^membership method\(s\) \(none\) not among speaker, loss"):
        MembershipAttackConfig(methods=()).validate()


@pytest.mark.parametrize(
    ("field", "got"),
    [("candidates", "0, 100, 3"), ("lira_candidates", "40, 0, 3"), ("max_rounds", "40, 100, 0")],
)
def test_counts_below_one_are_refused_with_all_three_values(field, got) -> None:
    MembershipAttackConfig(**{field: 1}).validate()  # 1 is enough
    with pytest.raises(
        ConfigError, match=rf"^candidates, lira_candidates and max_rounds must be >= 1, got {got}$"
    ):
        MembershipAttackConfig(**{field: 0}).validate()


@pytest.mark.parametrize("shadows", [0, 1, 3])
def test_lira_needs_an_even_number_of_at_least_two_shadows(shadows) -> None:
    with pytest.raises(
        ConfigError,
        match=rf"^LiRA needs an even number >= 2 of shadow federations \(half IN, half OUT per utterance\), "
        rf"got {shadows}; e.g. --lira-shadows 8$",
    ):
        MembershipAttackConfig(methods=("lira",), lira_shadows=shadows).validate()
    MembershipAttackConfig(methods=("loss",), lira_shadows=shadows).validate()  # only LiRA needs them


@pytest.mark.parametrize("field", ["bootstrap", "seed", "speaker_rounds", "speaker_utterances"])
def test_negative_counts_and_seeds_are_refused_and_zero_is_not(field) -> None:
    MembershipAttackConfig(**{field: 0}).validate()
    values = {"bootstrap": 1000, "seed": 0, "speaker_rounds": 10, "speaker_utterances": 0, field: -1}
    got = ", ".join(str(values[k]) for k in ("bootstrap", "seed", "speaker_rounds", "speaker_utterances"))
    with pytest.raises(
        ConfigError,
        match=rf"^bootstrap, seed, speaker_rounds and speaker_utterances must be >= 0, got {got}$",
    ):
        MembershipAttackConfig(**{field: -1}).validate()


# --- LiRA ------------------------------------------------------------------------------------------
def test_lira_score_is_the_gaussian_log_likelihood_ratio_by_hand() -> None:
    # two utterances, four shadows: utterance 0 IN for shadows 0 and 1, utterance 1 IN for 2 and 3
    inside = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=bool)
    conf = np.array([[3.0, 0.0], [1.0, 2.0], [-1.0, 4.0], [1.0, 6.0]])
    # IN means (2, 5), OUT means (0, 1); residuals IN: 1, -1, -1, 1 (sd 1); OUT: -1, 1, -1, 1 (sd 1)
    target = np.array([2.0, 1.0])
    want = [-0.5 * 0.0**2 + 0.5 * 2.0**2, -0.5 * 4.0**2 + 0.5 * 0.0**2]
    np.testing.assert_allclose(lira_score(target, conf, inside), want, atol=1e-12)
    # wider OUT residuals (sd 2): the log sd term enters
    conf_wide = np.array([[3.0, 0.0], [1.0, 4.0], [-2.0, 4.0], [2.0, 6.0]])  # OUT residuals -2, 2, -2, 2
    mu_out = np.array([0.0, 2.0])
    got = lira_score(np.array([0.0, 2.0]), conf_wide, inside)
    mu_in = np.array([2.0, 5.0])
    want = (
        -0.5 * ((np.array([0.0, 2.0]) - mu_in) / 1.0) ** 2
        + 0.5 * ((np.array([0.0, 2.0]) - mu_out) / 2.0) ** 2
    )
    np.testing.assert_allclose(got, want + math.log(2.0), atol=1e-12)


def test_lira_floors_a_zero_variance_at_1e_6() -> None:
    inside = np.array([[1], [1], [0], [0]], dtype=bool)
    conf = np.array([[1.0], [1.0], [0.0], [0.0]])  # no spread on either side
    got = lira_score(np.array([1.0 + 1e-6]), conf, inside)
    # (1e-6 / 1e-6)^2 = 1 from IN, (1 + 1e-6)^2 / 1e-12 from OUT; the log sd terms cancel
    np.testing.assert_allclose(got, [-0.5 + 0.5 * (1.0 + 1e-6) ** 2 / 1e-12], rtol=1e-9)


# --- which DP claim covers a row -------------------------------------------------------------------
def test_record_level_dp_covers_every_view_and_user_level_only_the_aggregate() -> None:
    record = Privacy(2.0, 1e-5, "utterance", "dp")
    user = Privacy(4.0, 1e-3, "speaker", "user-dp")
    assert _dp_for(None, per_client=True) is None and _dp_for(None, per_client=False) is None
    assert _dp_for(record, per_client=True) == (2.0, 1e-5) == _dp_for(record, per_client=False)
    assert _dp_for(user, per_client=False) == (4.0, 1e-3)
    assert _dp_for(user, per_client=True) is None  # the server sees each update before its noise


# --- per-round AUCs and LiRA's power ----------------------------------------------------------------
def test_per_round_aucs_count_each_round_and_leave_one_class_rounds_without_an_auc() -> None:
    rounds = np.array([2, 2, 2, 2, 5, 5, 7])
    scores = np.array([0.9, 0.1, 0.4, 0.6, 0.3, 0.2, 0.5])
    labels = np.array([1, 0, 1, 0, 1, 1, 0])
    assert _per_round_auc(rounds, scores, labels) == [
        {"round": 2, "n": 4, "auc": 0.75},
        {"round": 5, "n": 2, "auc": None},
        {"round": 7, "n": 1, "auc": None},
    ]
    assert isinstance(_per_round_auc(rounds, scores, labels)[0]["round"], int)


def test_lira_power_is_resolved_only_with_1000_non_members_and_64_shadows() -> None:
    assert _lira_power(1000, 64) == "TPR at 0.1 % FPR is resolved: the smallest FPR step is 0.001"
    for n, s in ((999, 64), (1000, 63), (100, 8)):
        note = _lira_power(n, s)
        assert note == (
            f"underpowered at 0.1 % FPR: {n} non-members make the smallest FPR step {1 / n:.2g} and "
            f"{s} shadow models give rough per-utterance Gaussians; report TPR at 0.1 % FPR only with "
            ">= 1000 non-members (--lira-candidates 1000) and >= 64 shadows (Carlini et al. use 64-256)"
        )


# --- candidate sets ----------------------------------------------------------------------------------
def test_balanced_sets_refuse_an_empty_side_by_its_counts(rng) -> None:
    members = make_speech_set({"a": "female"}, per_speaker=4)
    empty = members.take(np.zeros(0, dtype=np.int64))
    with pytest.raises(AttackError, match=r"^need members and non-members, got 4 and 0$"):
        balanced_sets(members, empty, rng)
    with pytest.raises(AttackError, match=r"^need members and non-members, got 0 and 4$"):
        balanced_sets(empty, members, rng)
    nonmembers = make_speech_set({"b": "male"}, per_speaker=3, seed=1)
    cands, labels = balanced_sets(members, nonmembers, rng, limit=0)  # 0: no limit
    assert len(cands) == 6 and labels.dtype == np.int64 and labels.tolist() == [1, 1, 1, 0, 0, 0]
    cands, labels = balanced_sets(members, nonmembers, rng, limit=1)
    assert len(cands) == 2 and labels.tolist() == [1, 0]


def test_concatenated_candidates_keep_features_lengths_and_labels_in_order() -> None:
    a = make_speech_set({"a": "female"}, per_speaker=2)
    b = make_speech_set({"b": "male"}, per_speaker=3, seed=1)
    both = _concat_xy([a, b])
    assert both.x.shape == (5, *a.x.shape[1:]) and both.lengths.tolist() == [20] * 5
    assert both.y.tolist() == a.y.tolist() + b.y.tolist()
    assert (both.x[2:] == b.x).all()


def test_cosines_are_scale_free_and_a_zero_row_scores_zero() -> None:
    a = np.array([[3.0, 4.0], [0.0, 0.0], [-6.0, -8.0]])
    b = np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(_cosines(a, b), [[0.6, 0.8], [0.0, 0.0], [-0.6, -0.8]], atol=1e-15)
    assert _cosines(a.astype(np.float32), b).dtype == np.float64
