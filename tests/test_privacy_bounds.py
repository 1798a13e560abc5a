"""The largest TPR and AUC an attack may reach against an (epsilon, delta)-DP mechanism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privfl.privacy import dp_auc_bound, dp_tpr_bound


def test_no_privacy_loss_allows_only_chance():
    assert dp_auc_bound(0.0, 0.0) == pytest.approx(0.5)
    assert dp_tpr_bound(0.3, 0.0, 0.0) == pytest.approx(0.3)


@pytest.mark.parametrize("eps", [0.1, 1.0, 3.0])
def test_pure_dp_auc_bound_is_logistic(eps):
    # delta = 0: the region's area is e^eps / (1 + e^eps) (worked out by hand from the two lines)
    assert dp_auc_bound(eps, 0.0) == pytest.approx(math.exp(eps) / (1 + math.exp(eps)), rel=1e-12)


@pytest.mark.parametrize("eps,delta", [(0.5, 0.0), (1.0, 1e-5), (2.0, 1e-2), (4.0, 0.1), (8.0, 1e-3)])
def test_closed_form_equals_the_area_under_the_tpr_bound(eps, delta):
    # dense near 0, where the bound is steep for large epsilon
    x = np.unique(np.concatenate([np.linspace(0.0, 1.0, 4001), np.logspace(-9, 0, 4001)]))
    y = np.array([dp_tpr_bound(v, eps, delta) for v in x])
    area = float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))
    assert dp_auc_bound(eps, delta) == pytest.approx(area, abs=1e-5)


def test_bound_grows_with_epsilon_and_delta_and_tends_to_one():
    eps = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    vals = [dp_auc_bound(e, 1e-5) for e in eps]
    assert all(a < b for a, b in zip(vals, vals[1:], strict=False))
    assert dp_auc_bound(1.0, 1e-2) > dp_auc_bound(1.0, 1e-5)
    assert vals[-1] > 0.9999 and dp_auc_bound(math.inf, 0.0) == 1.0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        dp_auc_bound(-1.0, 0.0)
    with pytest.raises(ValueError):
        dp_auc_bound(1.0, 1.0)


def test_huge_epsilon_does_not_overflow():
    # user-level DP with few clients reports epsilons in the hundreds
    assert dp_auc_bound(703.0, 1e-2) == 1.0 and dp_auc_bound(39.0, 0.0) == pytest.approx(1.0)
    assert dp_tpr_bound(0.01, 1e4, 0.0) == 1.0 and dp_tpr_bound(0.0, 1e4, 0.0) == 0.0
