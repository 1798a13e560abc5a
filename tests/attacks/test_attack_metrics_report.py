"""What an attack report says about its inputs, its bootstrap and its low-FPR rates, by hand."""

import numpy as np
import pytest

from privfl.attacks.metrics import _point_metrics, attack_metrics, fast_metrics, roc, tpr_at_fpr

SCORES = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
LABELS = np.array([1, 0, 1, 1, 0, 0])


@pytest.mark.parametrize(
    "scores,labels,message",
    [
        ([0.1, 0.2, 0.3], [0, 1], r"^3 scores but 2 labels$"),
        ([0.1, 0.2], [0, 2], r"^labels must be 0 \(negative\) or 1 \(positive\)$"),
        ([0.1, 0.2], [0, 0.7], r"^labels must be 0 \(negative\) or 1 \(positive\)$"),  # not truncated to 0
        ([0.1, 0.2], [0, 0], r"^need both positives and negatives to score an attack$"),
        ([0.1, 0.2], [1, 1], r"^need both positives and negatives to score an attack$"),
        ([], [], r"^need both positives and negatives to score an attack$"),
        ([0.1, np.nan], [0, 1], r"^scores contain NaN or infinity$"),
        ([0.1, np.inf], [0, 1], r"^scores contain NaN or infinity$"),
    ],
)
def test_bad_inputs_are_refused_saying_what_is_wrong(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        attack_metrics(scores, labels, bootstrap=0)


def test_column_vectors_and_boolean_scores_are_read_as_flat_scores():
    """Scores of a hard yes/no attack (booleans) and column-shaped arrays give the flat float report."""
    hard = np.array([True, False, True, False, False, True, False, False])
    labels = np.array([1, 0, 1, 1, 0, 1, 0, 0])
    flat = attack_metrics(hard.astype(float), labels, bootstrap=50, seed=3)
    assert attack_metrics(hard, labels, bootstrap=50, seed=3) == flat
    assert attack_metrics(hard.astype(float)[:, None], labels[:, None], bootstrap=50, seed=3) == flat


def test_report_counts_resolution_rule_and_bootstrap_settings():
    m = attack_metrics(SCORES, LABELS, bootstrap=20, seed=7)
    assert m["n_positive"] == 3 and m["n_negative"] == 3
    assert m["fpr_resolution"] == pytest.approx(1 / 3)
    assert m["threshold_rule"] == "oracle (best on these scores)"
    assert m["bootstrap"] == {"resamples": 20, "used": m["bootstrap"]["used"], "seed": 7, "unit": "score"}
    assert 0 < m["bootstrap"]["used"] <= 20
    g = attack_metrics(SCORES, LABELS, threshold=0.5, groups=[0, 1, 2, 3, 4, 5], bootstrap=20, seed=7)
    assert g["threshold_rule"] == "given" and g["bootstrap"]["unit"] == "group"
    unbalanced = attack_metrics(np.arange(5.0), [1, 0, 0, 0, 0], bootstrap=0)
    assert unbalanced["n_positive"] == 1 and unbalanced["n_negative"] == 4
    assert unbalanced["fpr_resolution"] == pytest.approx(0.25)


def test_the_default_bootstrap_is_1000_resamples_seeded_0():
    m = attack_metrics(SCORES, LABELS)
    assert m["bootstrap"]["resamples"] == 1000 and m["bootstrap"]["seed"] == 0
    assert m == attack_metrics(SCORES, LABELS, bootstrap=1000, seed=0)


def test_without_resamples_there_are_no_intervals():
    m = attack_metrics(SCORES, LABELS, bootstrap=0)
    assert m["bootstrap"]["used"] == 0
    assert m["auc_ci95"] is None and m["balanced_accuracy_ci95"] is None and m["tpr_at_1pct_fpr_ci95"] is None
    assert m["auc"] == pytest.approx(7 / 9)


def test_a_given_threshold_is_used_for_the_point_and_for_every_resample():
    """A threshold above every score calls everything negative: balanced accuracy 0.5, exactly, in
    the estimate and across the bootstrap (the oracle threshold would give more)."""
    m = attack_metrics(SCORES, LABELS, threshold=2.0, bootstrap=200, seed=1)
    assert m["balanced_accuracy"] == 0.5
    assert m["balanced_accuracy_ci95"] == [0.5, 0.5]
    oracle = attack_metrics(SCORES, LABELS, bootstrap=200, seed=1)
    assert oracle["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)  # threshold 0.3: TPR 1, TNR 2/3
    assert oracle["balanced_accuracy_ci95"][1] > 0.5


def test_grouped_bootstrap_draws_every_group_with_equal_chance():
    """Positives only in the first group, negatives in two others: a resample of 3 groups has both
    classes with probability 1 - (2/3)^3 - (1/3)^3 = 2/3; resamples with one class are skipped, not
    ended on."""
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.4, 0.1])
    labels = np.array([1, 1, 0, 0, 0, 0])
    m = attack_metrics(scores, labels, groups=[0, 0, 1, 1, 2, 2], bootstrap=2000, seed=0)
    assert m["bootstrap"]["used"] / 2000 == pytest.approx(2 / 3, abs=0.04)


def test_roc_keeps_a_point_at_every_distinct_score():
    """Points on a straight stretch of the curve are kept (no drop_intermediate): one per threshold."""
    scores = np.array([5, 5, 4, 4, 3, 3, 2, 1], dtype=float)
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    fpr, tpr, thr = roc(scores, labels)
    assert len(thr) == len(np.unique(scores)) + 1  # and the (0, 0) start
    np.testing.assert_allclose(fpr, [0, 0.25, 0.5, 0.75, 0.75, 1])
    np.testing.assert_allclose(tpr, [0, 0.25, 0.5, 0.75, 1, 1])


def _tied_diagonal(n_neg: int, n_pos: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """The top `levels` scores each tie one positive with one negative (a straight diagonal stretch of
    the ROC), the rest are low and interleaved."""
    top = np.repeat(np.arange(100.0, 100.0 - levels, -1), 2)
    top_labels = np.tile([1, 0], levels)
    rest_pos = np.linspace(0, 50, n_pos - levels)
    rest_neg = np.linspace(0.5, 50.5, n_neg - levels)
    scores = np.r_[top, rest_pos, rest_neg]
    labels = np.r_[top_labels, np.ones(n_pos - levels, int), np.zeros(n_neg - levels, int)]
    return scores, labels


@pytest.mark.parametrize("n_neg,levels", [(100, 3), (1000, 4), (250, 5)])
def test_low_fpr_rates_count_points_on_a_straight_stretch_of_the_roc(n_neg, levels):
    """With n_neg = 100 the 1 % FPR budget is one false positive exactly: the point after the first tie
    (1 TP, 1 FP) counts, although it lies on a line with its neighbours."""
    scores, labels = _tied_diagonal(n_neg, 200, levels)
    k1 = int(np.floor(0.01 * n_neg + 1e-12))
    k01 = int(np.floor(0.001 * n_neg + 1e-12))
    expected = {
        "tpr_at_1pct_fpr": min(k1, levels) / 200,
        "tpr_at_0.1pct_fpr": min(k01, levels) / 200,
    }
    ref, fast = _point_metrics(scores, labels, None), fast_metrics(scores, labels, None)
    for key, value in expected.items():
        assert ref[key] == pytest.approx(value), key
        assert fast[key] == pytest.approx(value), key


def test_fast_metrics_equal_scikit_learn_with_hundreds_of_negatives():
    """The k-th highest negative for k >= 1 (small samples only ever use the highest)."""
    rng = np.random.default_rng(11)
    scores = np.r_[rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 1000)].round(2)  # ties
    labels = np.r_[np.ones(200, int), np.zeros(1000, int)]
    ref, fast = _point_metrics(scores, labels, None), fast_metrics(scores, labels, None)
    for k in ref:
        assert fast[k] == pytest.approx(ref[k], abs=1e-12), k
    assert ref["tpr_at_1pct_fpr"] > ref["tpr_at_0.1pct_fpr"] > 0


def test_tpr_at_fpr_is_zero_when_no_point_is_that_low():
    fpr, tpr = np.array([0.2, 0.5, 1.0]), np.array([0.6, 0.9, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.01) == 0.0
    assert tpr_at_fpr(fpr, tpr, 0.5) == 0.9
