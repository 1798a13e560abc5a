"""Sigma calibration and resumed accounting: the solver's contract on every path it can take."""

from __future__ import annotations

import json

import pytest

from privfl import privacy
from privfl.errors import PrivacyError
from privfl.privacy import RecordLevelPrivacy, UserLevelPrivacy, epsilon_of, solve_noise_multiplier
from tests import privacy_settings


def record_level(**overrides) -> RecordLevelPrivacy:
    """The shared settings, sigma solved for epsilon 3 instead of given."""
    return privacy_settings.record_level(**{"noise_multiplier": None, "target_epsilon": 3.0, **overrides})


def user_level(**overrides) -> UserLevelPrivacy:
    """The shared settings over 3 rounds, sigma solved for epsilon 2 instead of given."""
    return privacy_settings.user_level(
        **{"noise_multiplier": None, "target_epsilon": 2.0, "rounds": 3, **overrides}
    )


def in_band(eps: float, target: float, rel_tol: float = 0.005) -> bool:
    return target * (1 - rel_tol) <= eps <= target


def test_a_client_that_took_no_steps_has_spent_nothing():
    assert epsilon_of([(1.0, 0.5, 0), (0.0, 0.5, 0)], 1e-5, "rdp") == 0.0
    assert epsilon_of([(1.0, 0.5, 0)], 1e-5, "prv") == 0.0
    # zero-step runs add nothing to a history that did take steps
    assert epsilon_of([(1.0, 0.1, 5), (0.0, 0.5, 0)], 1e-5, "rdp") == epsilon_of([(1.0, 0.1, 5)], 1e-5, "rdp")


def test_steps_that_sample_nothing_leak_nothing_noise_or_not():
    """At sample rate 0 no record enters a step, so the missing noise cannot matter."""
    without = epsilon_of([(0.0, 0.0, 3)], 1e-5, "rdp")
    assert without == epsilon_of([(1.0, 0.0, 3)], 1e-5, "rdp") < 1.0


def test_rdp_is_the_default_accountant_of_the_solver():
    assert solve_noise_multiplier(2.0, 1e-5, [(0.05, 200)]) == solve_noise_multiplier(
        2.0, 1e-5, [(0.05, 200)], "rdp"
    )


@pytest.mark.parametrize("target", [20.0, 60.0])
def test_loose_targets_get_less_than_unit_noise_within_the_band(target):
    sigma = solve_noise_multiplier(target, 1e-5, [(0.5, 3)], "rdp")
    assert sigma < 0.5
    assert in_band(epsilon_of([(sigma, 0.5, 3)], 1e-5, "rdp"), target)


def test_a_target_that_tiny_noise_already_meets_gets_tiny_noise():
    """Below sigma = 1e-3 the solver stops halving: epsilon stays under the target."""
    sigma = solve_noise_multiplier(1e9, 1e-5, [(0.01, 1)], "rdp")
    assert sigma < 2e-3
    assert epsilon_of([(sigma, 0.01, 1)], 1e-5, "rdp") <= 1e9


def test_when_brent_misses_the_band_bisection_still_lands_in_it(monkeypatch):
    """epsilon is only piecewise smooth in sigma: if Brent's root falls outside
    [target (1 - rel_tol), target], the bisection that follows must still return a sigma inside it."""
    calls = []

    def brent_at_the_low_end(f, a, b, **kwargs):
        calls.append((a, b))
        return a  # the noisy end of the bracket is too little noise: epsilon above the target

    monkeypatch.setattr(privacy.optimize, "brentq", brent_at_the_low_end)
    for target, q, steps in [(2.0, 0.05, 600), (5.0, 0.3, 40), (0.7, 0.01, 1000)]:
        sigma = solve_noise_multiplier(target, 1e-5, [(q, steps)], "rdp")
        assert in_band(epsilon_of([(sigma, q, steps)], 1e-5, "rdp"), target)
    assert len(calls) == 3


def test_a_run_that_has_spent_exactly_its_target_cannot_take_another_round():
    history = [(1.0, 0.1, 50)]
    spent = epsilon_of(history, 1e-5, "rdp")
    with pytest.raises(
        PrivacyError,
        match=r"^the run has already spent epsilon = .* of target_epsilon = .*; no further round can stay "
        r"within it: raise --target-epsilon or keep the rounds it was planned for$",
    ):
        solve_noise_multiplier(spent, 1e-5, [(0.1, 10)], "rdp", spent=[history])


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_a_target_run_is_calibrated_with_its_own_accountant(kind):
    rec = record_level(accountant=kind, target_epsilon=3.0, rounds=2)
    usr = user_level(accountant=kind, target_epsilon=2.0, rounds=4)
    for r in (1, 2):
        rec.spend(0, 4, 0.25, r)
        rec.spend(1, 10, 0.1, r)
    for _ in range(4):
        usr.spend_round()
    assert 3.0 * 0.99 <= max(rec.epsilons().values()) <= 3.0
    assert 2.0 * 0.99 <= usr.epsilon() <= 2.0


def test_a_checkpoint_taken_before_any_round_resolves_sigma_as_a_fresh_run():
    fresh = record_level(rounds=2)
    assert fresh.state()["last_round"] == 0
    extended = record_level(rounds=4)
    extended.load_state(json.loads(json.dumps(fresh.state())))
    assert extended.noise_multiplier == record_level(rounds=4).noise_multiplier


@pytest.mark.parametrize("make", [record_level, user_level])
def test_one_more_round_than_planned_resolves_sigma_to_the_band(make):
    a = make(rounds=2)
    _run(a, 1, 2)
    b = make(rounds=3)
    b.load_state(a.state())
    assert b.noise_multiplier > a.noise_multiplier
    _run(b, 3, 3)
    assert 0.99 * b.target_epsilon <= _worst(b) <= b.target_epsilon


@pytest.mark.parametrize("make", [record_level, user_level])
def test_resuming_a_finished_run_with_fewer_planned_rounds_keeps_its_sigma(make):
    """Nothing is left to plan: the checkpoint's sigma stands (re-solving for zero rounds would drop it)."""
    a = make(rounds=4)
    _run(a, 1, 3)
    for rounds in (3, 2):  # as many rounds as were done, and fewer
        b = make(rounds=rounds)
        b.load_state(a.state())
        assert b.noise_multiplier == a.noise_multiplier


def _run(report, first: int, last: int) -> None:
    for r in range(first, last + 1):
        if isinstance(report, UserLevelPrivacy):
            report.spend_round()
        else:
            report.spend(0, 4, 0.25, r)
            report.spend(1, 10, 0.1, r)


def _worst(report) -> float:
    return report.epsilon() if isinstance(report, UserLevelPrivacy) else max(report.epsilons().values())
