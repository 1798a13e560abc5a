"""ROC arithmetic, the bootstrap and the DP bound, on scores whose answer is known by hand."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from privfl.attacks.metrics import (
    _point_metrics,
    attack_metrics,
    balanced_accuracy,
    clopper_pearson,
    dp_bound_violations,
    empirical_epsilon,
    fast_metrics,
    roc,
    tpr_at_fpr,
)
from privfl.attacks.result import dp_check
from privfl.privacy import dp_tpr_bound


def test_auc_and_low_fpr_rates_by_hand():
    scores = np.array([0.9, 0.8, 0.3, 0.1])
    labels = np.array([1, 0, 1, 0])
    m = _point_metrics(scores, labels, threshold=None)
    assert m["auc"] == pytest.approx(0.75)  # 3 of the 4 positive-negative pairs are ordered right
    assert m["tpr_at_1pct_fpr"] == pytest.approx(0.5)  # only 0.9 is above every negative
    assert m["balanced_accuracy"] == pytest.approx(0.75)  # threshold 0.9: TPR 1/2, TNR 1
    fpr, tpr, _ = roc(scores, labels)
    assert tpr_at_fpr(fpr, tpr, 0.5) == pytest.approx(1.0)


def test_balanced_accuracy_weights_classes_equally():
    # 9 negatives all right, the only positive wrong: plain accuracy 0.9, balanced 0.5
    assert balanced_accuracy(np.zeros(10), np.r_[1, np.zeros(9)]) == pytest.approx(0.5)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-5, 5), min_size=1, max_size=40),
    st.lists(st.integers(-5, 5), min_size=1, max_size=40),
    st.one_of(st.none(), st.integers(-5, 5)),
)
def test_fast_bootstrap_metrics_equal_scikit_learn(pos, neg, threshold):
    scores = np.array(pos + neg, dtype=float)  # small integers: many ties
    labels = np.r_[np.ones(len(pos), int), np.zeros(len(neg), int)]
    th = None if threshold is None else float(threshold)
    ref, fast = _point_metrics(scores, labels, th), fast_metrics(scores, labels, th)
    assert ref.keys() == fast.keys()
    for k in ref:
        assert fast[k] == pytest.approx(ref[k], abs=1e-12), k
    assert fast["auc"] == pytest.approx(roc_auc_score(labels, scores))


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(1.0, 1.0, 150), rng.normal(0.0, 1.0, 150)]
    labels = np.r_[np.ones(150), np.zeros(150)]
    a = attack_metrics(scores, labels, bootstrap=300, seed=3)
    b = attack_metrics(scores, labels, bootstrap=300, seed=3)
    c = attack_metrics(scores, labels, bootstrap=300, seed=4)
    assert a == b and a["auc_ci95"] != c["auc_ci95"]
    lo, hi = a["auc_ci95"]
    assert lo < a["auc"] < hi and hi - lo < 0.15
    # N(1,1) vs N(0,1): AUC = Phi(1/sqrt 2) = 0.760
    assert lo < 0.760 < hi


def test_grouped_bootstrap_gives_wider_intervals_for_clustered_scores():
    rng = np.random.default_rng(1)
    # 10 clusters that each repeat one score 20 times: only 10 independent observations
    base = np.r_[rng.normal(0.5, 1, 5), rng.normal(0, 1, 5)]
    scores, labels, groups = (
        np.repeat(base, 20),
        np.repeat(np.r_[np.ones(5), np.zeros(5)], 20),
        np.repeat(np.arange(10), 20),
    )
    flat = attack_metrics(scores, labels, bootstrap=300, seed=0)
    grouped = attack_metrics(scores, labels, groups=groups, bootstrap=300, seed=0)
    width = lambda m: m["auc_ci95"][1] - m["auc_ci95"][0]  # noqa: E731
    assert width(grouped) > 2 * width(flat)


def test_one_class_is_refused():
    with pytest.raises(ValueError, match="both positives and negatives"):
        attack_metrics(np.ones(4), np.ones(4))


def test_dp_bound_is_the_diagonal_at_epsilon_zero_and_opens_with_epsilon():
    fpr = np.linspace(0, 1, 11)
    np.testing.assert_allclose(dp_tpr_bound(fpr, 0.0, 0.0), fpr)
    loose = dp_tpr_bound(fpr, 1.0, 1e-5)
    assert np.all(loose >= fpr) and loose[1] == pytest.approx(math.e * 0.1 + 1e-5)
    # the mirrored inequality caps TPR below 1 until FPR reaches 1 - delta - e^-eps ... at FPR 0.5:
    assert dp_tpr_bound(np.array([0.5]), 1.0, 0.0)[0] == pytest.approx(1 - math.exp(-1) * 0.5)


def test_empirical_epsilon_of_a_perfect_attack_is_limited_by_the_sample_size():
    scores = np.r_[np.ones(100), np.zeros(100)]
    labels = np.r_[np.ones(100), np.zeros(100)]
    eps = empirical_epsilon(scores, labels, delta=0.0)
    # 95% Clopper-Pearson: TPR >= 0.025^(1/100), FPR <= 1 - 0.025^(1/100); eps >= ln(ratio)
    t = 0.025 ** (1 / 100)
    assert eps["clopper_pearson"] == pytest.approx(math.log(t / (1 - t)), rel=1e-6)


def test_clopper_pearson_ends():
    lo, hi = clopper_pearson(np.array([0, 10]), 10, 0.05)
    assert lo[0] == 0.0 and hi[1] == 1.0
    assert hi[0] == pytest.approx(1 - 0.025 ** (1 / 10))


def test_a_chance_attack_respects_a_dp_bound_and_a_strong_one_violates_it():
    rng = np.random.default_rng(2)
    labels = np.r_[np.ones(300), np.zeros(300)]
    chance = rng.normal(size=600)
    assert dp_check(chance, labels, 1.0, 1e-5)["respects_bound"]
    strong = chance + 4.0 * labels
    check = dp_check(strong, labels, 0.5, 1e-5)
    assert not check["respects_bound"] and check["significant_violations"] > 0
    fpr, tpr, _ = roc(strong, labels)
    assert dp_bound_violations(fpr, tpr, 0.5, 1e-5) >= check["significant_violations"]
    assert check["empirical_epsilon"]["clopper_pearson"] > 0.5
