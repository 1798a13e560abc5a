"""ROC arithmetic, the bootstrap and the DP bound, on scores whose answer is known by hand."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from privfl.attacks.metrics import (
    _eps_from_rates,
    _point_metrics,
    attack_metrics,
    balanced_accuracy,
    clopper_pearson,
    dp_bound_violations,
    dp_tpr_bound,
    empirical_epsilon,
    fast_metrics,
    roc,
    tpr_at_fpr,
)
from privfl.attacks.result import dp_check


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


def test_eps_forced_by_each_roc_point_by_hand():
    """max(ln((TPR - d) / FPR), ln((1 - FPR - d) / (1 - TPR))) per point; a zero rate gives no evidence."""
    fpr, tpr = np.array([0.1, 0.0, 0.5, 0.3]), np.array([0.5, 0.3, 1.0, 0.9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the zero rates must not warn
        out = _eps_from_rates(fpr, tpr, 0.01)
    expected = [math.log(0.49 / 0.1), math.log(0.99 / 0.7), math.log(0.99 / 0.5), math.log(0.69 / 0.1)]
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_empirical_epsilon_by_hand():
    # 6 members ranked first, then one non-member, then 4 members, then 9 non-members (10 + 10)
    labels = np.r_[np.ones(6), 0, np.ones(4), np.zeros(9)]
    scores = -np.arange(20.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eps = empirical_epsilon(scores, labels, delta=0.01)
    # the point estimate: ln((1 - 0.01) / 0.1) at (FPR 0.1, TPR 1)
    assert eps["point"] == pytest.approx(math.log(0.99 / 0.1), rel=1e-12)
    # Clopper-Pearson at the two corners (FPR 0, TPR 0.6) and (FPR 0.1, TPR 1), the pessimistic ends
    lo6, lo10 = clopper_pearson(np.array([6, 10]), 10, 0.05)[0]
    hi0, hi1 = clopper_pearson(np.array([0, 1]), 10, 0.05)[1]
    corners = [
        math.log((lo6 - 0.01) / hi0),
        math.log((1 - hi0 - 0.01) / (1 - lo6)),
        math.log((lo10 - 0.01) / hi1),
        math.log((1 - hi1 - 0.01) / (1 - lo10)),  # the largest
    ]
    assert eps == {
        "point": eps["point"],
        "clopper_pearson": pytest.approx(max(corners), rel=1e-12),
        "confidence": 0.95,
        "delta": 0.01,
    }
    # a weak attack on two of each: a point estimate below 1 and no significant evidence at all
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # log(0) of a zero rate must not warn
        weak = empirical_epsilon(np.array([3.0, 2.0, 1.0, 0.0]), np.array([1, 0, 1, 0]), delta=0.0)
    assert weak["point"] == pytest.approx(math.log(2), rel=1e-12) and weak["clopper_pearson"] == 0.0


def test_clopper_pearson_one_success():
    lo, hi = clopper_pearson(np.array([1]), 10, 0.05)
    assert lo[0] == pytest.approx(1 - 0.975 ** (1 / 10), rel=1e-9) and 0 < lo[0] < hi[0] < 1


def test_a_point_on_the_dp_bound_is_not_a_violation():
    assert dp_bound_violations(np.array([0.1, 0.1]), np.array([0.2, 0.2001]), math.log(2), 0.0) == 1


def test_empirical_epsilon_of_a_perfect_attack_on_few_members_is_set_by_the_tpr_side():
    """20 members, 100 non-members, perfectly separated: ln((TPR_lo - d) / FPR_hi) at (0, 1) is the bound."""
    labels = np.r_[np.ones(20), np.zeros(100)]
    eps = empirical_epsilon(labels.copy(), labels, delta=0.001)
    t, f = 0.025 ** (1 / 20), 1 - 0.025 ** (1 / 100)
    assert eps["clopper_pearson"] == pytest.approx(math.log((t - 0.001) / f), rel=1e-6)


def test_dp_bound_is_capped_at_one_where_fpr_reaches_one():
    np.testing.assert_array_equal(dp_tpr_bound(np.array([1.0, 0.99]), 1.0, 0.05), [1.0, 1.0])
