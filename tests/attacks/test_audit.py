"""The auditor's arithmetic: Steinke et al.'s one-run p-value and bound, Andrew et al.'s Gaussian estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from privfl.attacks.audit import (
    _delta_of,
    auc,
    epsilon_lower_bound,
    gaussian_epsilon,
    gaussian_estimate,
    guess_grid,
    one_run_bound,
    p_value,
)


# --- p-value --------------------------------------------------------------------------------------
def test_p_value_at_epsilon_zero_is_a_fair_coin_tail():
    assert p_value(10, 10, 10, 0.0, 0.0) == pytest.approx(1 / 1024)
    assert p_value(10, 10, 8, 0.0, 0.0) == pytest.approx((45 + 10 + 1) / 1024)
    assert p_value(100, 0, 0, 3.0, 0.0) == 1.0


def test_p_value_delta_term_by_hand():
    # m=10, r=2, v=2, eps=0: beta = P[Bin(2, 1/2) >= 2] = 1/4; alpha = max(P[Bin = 1] / 1,
    # P[0 <= Bin < 2] / 2) = max(1/2, 3/8) = 1/2; p = 1/4 + 1/2 * 0.01 * 2 * 10 = 0.35
    assert p_value(10, 2, 2, 0.0, 0.01) == pytest.approx(0.35)


def test_p_value_at_higher_epsilon_uses_the_randomised_response_accuracy():
    eps = 1.5
    q = math.exp(eps) / (1 + math.exp(eps))
    assert p_value(50, 20, 15, eps, 0.0) == pytest.approx(stats.binom.sf(14, 20, q))


def test_p_value_rejects_impossible_counts():
    with pytest.raises(ValueError, match="v <= r <= m"):
        p_value(5, 6, 3, 1.0, 0.0)


# --- the bound ----------------------------------------------------------------------------------
@pytest.mark.parametrize("r,beta", [(100, 0.05), (30, 0.05), (400, 0.01)])
def test_all_guesses_right_without_delta_gives_the_closed_form(r, beta):
    # P[Bin(r, q) >= r] = q^r = beta  =>  eps = logit(beta^(1/r))
    expected = special.logit(beta ** (1 / r))
    assert epsilon_lower_bound(r, r, r, 0.0, beta) == pytest.approx(expected, abs=1e-4)


def test_100_of_100_right_at_95_percent_is_3_493():
    # by hand: 0.05^(1/100) = 0.970487, logit = ln(0.970487 / 0.029513) = 3.4930: with 100 guesses
    # no audit can claim more, however good the attack (Steinke et al.'s point about few canaries)
    assert epsilon_lower_bound(1000, 100, 100, 0.0, 0.05) == pytest.approx(3.4930, abs=1e-3)
    # delta makes it smaller, never larger
    assert epsilon_lower_bound(1000, 100, 100, 1e-5, 0.05) < 3.4930


def test_chance_level_guessing_gives_no_bound():
    assert epsilon_lower_bound(1000, 1000, 500, 1e-5, 0.05) == 0.0
    assert epsilon_lower_bound(1000, 1000, 520, 1e-5, 0.05) == 0.0  # P[Bin >= 520] = 0.1: chance
    assert epsilon_lower_bound(1000, 1000, 540, 1e-5, 0.05) > 0.0  # P = 0.007: not chance


def test_bound_is_valid_and_nearly_tight_on_randomised_response():
    """Randomised response at eps = 1 is exactly eps-DP: the bound stays below 1 in at least 95 % of
    runs (its confidence) and is not far below it (m = 2000 canaries)."""
    eps, m, runs = 1.0, 2000, 60
    rng = np.random.default_rng(0)
    bounds = []
    for _ in range(runs):
        included = rng.random(m) < 0.5
        truthful = rng.random(m) < special.expit(eps)
        guess_in = np.where(truthful, included, ~included)
        v = int((guess_in == included).sum())
        bounds.append(epsilon_lower_bound(m, m, v, 0.0, 0.05))
    bounds = np.array(bounds)
    assert (bounds > eps).mean() <= 0.1
    assert np.median(bounds) > 0.8


def test_guess_grid_is_fixed_and_within_m():
    grid = guess_grid(500)
    assert (250, 250) in grid and (500, 0) in grid and (3, 2) in grid
    assert all(0 < kp + km <= 500 for kp, km in grid)
    assert guess_grid(500) == grid


def test_one_run_bound_detects_separated_scores_and_not_random_ones():
    rng = np.random.default_rng(1)
    m = 500
    included = rng.random(m) < 0.5
    separated = np.where(included, 1.0, 0.0) + rng.normal(0, 0.01, m)
    found = one_run_bound(separated, included, 1e-5, 0.95)
    assert found["epsilon_lower_bound"] > 4.0
    assert found["correct"] == found["guesses"]
    # control: scores independent of the draw give no bound (each seed a new draw)
    nothing = [
        one_run_bound(rng.normal(size=m), rng.random(m) < 0.5, 1e-5, 0.95)["epsilon_lower_bound"]
        for _ in range(20)
    ]
    assert sum(b > 0 for b in nothing) <= 2


def test_one_run_bound_with_bonferroni_stays_valid_on_gaussian_mechanism_scores():
    """Scores of a Gaussian mechanism with mu = 1 (its exact eps at delta 1e-5 is ~4.4): the bound
    from 1000 canaries never exceeds that eps, and finds something."""
    mu, m = 1.0, 1000
    true_eps = gaussian_epsilon(mu, 1.0, 0.0, 1.0, 1e-5)
    rng = np.random.default_rng(2)
    bounds = []
    for _ in range(10):
        included = rng.random(m) < 0.5
        scores = rng.normal(size=m) + mu * included
        bounds.append(one_run_bound(scores, included, 1e-5, 0.95)["epsilon_lower_bound"])
    assert max(bounds) <= true_eps
    assert np.median(bounds) > 0.2


# --- Gaussian estimate --------------------------------------------------------------------------
def _gaussian_mechanism_delta(eps: float, mu: float) -> float:
    """Balle and Wang (2018): delta(eps) of N(mu, 1) vs N(0, 1)."""
    return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)


@pytest.mark.parametrize("mu", [0.5, 1.0, 3.0])
def test_equal_variance_epsilon_matches_the_analytic_gaussian_mechanism(mu):
    eps = gaussian_epsilon(mu, 1.0, 0.0, 1.0, 1e-5)
    assert _gaussian_mechanism_delta(eps, mu) == pytest.approx(1e-5, rel=1e-3)
    # scale-free, shift-free
    assert gaussian_epsilon(5 + 2 * mu, 2.0, 5.0, 2.0, 1e-5) == pytest.approx(eps, rel=1e-6)


def test_unequal_variance_delta_matches_numerical_integration():
    mu1, s1, mu0, s0, eps = 1.0, 1.6, 0.0, 1.0, 0.8
    p, q = stats.norm(mu1, s1), stats.norm(mu0, s0)
    numeric, _ = integrate.quad(
        lambda x: max(p.pdf(x) - math.exp(eps) * q.pdf(x), 0.0), -40, 40, limit=400, points=[-3, 0, 3]
    )
    assert _delta_of(eps, mu1, s1, mu0, s0) == pytest.approx(numeric, rel=1e-5, abs=1e-10)
    assert _delta_of(eps, mu0, s0, mu1, s1) == pytest.approx(
        integrate.quad(lambda x: max(q.pdf(x) - math.exp(eps) * p.pdf(x), 0.0), -40, 40, limit=400)[0],
        rel=1e-5,
        abs=1e-10,
    )


def test_estimate_recovers_a_known_gaussian_pair():
    rng = np.random.default_rng(3)
    m = 4000
    included = rng.random(m) < 0.5
    scores = rng.normal(size=m) + 2.0 * included
    est = gaussian_estimate(scores, included, 1e-5, bootstrap=50, seed=0)
    truth = gaussian_epsilon(2.0, 1.0, 0.0, 1.0, 1e-5)
    assert est["epsilon_estimate"] == pytest.approx(truth, rel=0.15)
    lo, hi = est["ci95"]
    assert lo < truth < hi
    assert est["mu"] == pytest.approx(2.0, rel=0.1)


def test_pooled_estimate_ignores_a_sampling_variance_ratio_the_unequal_fit_blows_up():
    """Inserted scores with 10 % more spread than held-out ones (as 250 samples can show by chance):
    the unequal-variance fit's eps at delta 1e-5 jumps well above the shift's, the pooled one does not."""
    m = 500
    included = np.arange(m) < 250
    base = stats.norm.ppf((np.arange(250) + 0.5) / 250)  # exact quantiles: no sampling noise
    scores = np.where(included, 1.6 + 1.1 * np.tile(base, 2), np.tile(base, 2))
    est = gaussian_estimate(scores, included, 1e-5, bootstrap=0)
    shift_only = gaussian_epsilon(1.6 / math.sqrt((1.1**2 + 1) / 2), 1.0, 0.0, 1.0, 1e-5)
    assert est["epsilon_estimate"] == pytest.approx(shift_only, rel=0.02)
    assert est["epsilon_unequal_variances"] > est["epsilon_estimate"] + 1.5


def test_auc_of_perfect_and_reversed_scores():
    included = np.array([True, False, True, False])
    assert auc(np.array([3.0, 1.0, 4.0, 0.0]), included) == 1.0
    assert auc(np.array([0.0, 3.0, 1.0, 4.0]), included) == 0.0


def test_gaussian_epsilon_matches_opacus_prv_for_composed_unsampled_gaussians():
    """R rounds of the Gaussian mechanism at sigma without subsampling are N(sqrt(R)/sigma, 1) vs
    N(0, 1); Opacus's PRV accountant (tight to eps_error 0.01) must agree."""
    import warnings

    from privfl.privacy import epsilon_of

    sigma, rounds = 2.02, 10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # PRV's log(1 - q) at q = 1
        prv = epsilon_of([(sigma, 1.0, rounds)], 1e-5, "prv")
    assert gaussian_epsilon(math.sqrt(rounds) / sigma, 1.0, 0.0, 1.0, 1e-5) == pytest.approx(prv, abs=0.03)
