"""Accounting: privfl's epsilons against Opacus's analysis, sigma calibration, delta, state round trips."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from privfl.errors import PrivacyError
from privfl.observers import Setting
from privfl.privacy import (
    UNIT_RECORD,
    UNIT_USER,
    UserLevelPrivacy,
    check_delta,
    default_delta,
    default_user_delta,
    epsilon_of,
    solve_noise_multiplier,
)
from privfl.randomness import SEEDED_LABEL
from tests.privacy_settings import record_level, user_level


def opacus_rdp_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """Epsilon straight from Opacus's RDP analysis functions, with its accountant's default orders."""
    orders = RDPAccountant.DEFAULT_ALPHAS
    eps, _ = get_privacy_spent(
        orders=orders, rdp=compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders), delta=delta
    )
    return float(eps)


@pytest.mark.parametrize(
    "sigma,q,steps,delta", [(1.0, 0.25, 8, 1e-3), (0.7, 0.01, 1000, 1e-5), (4.0, 1.0, 3, 1e-2)]
)
def test_rdp_epsilon_equals_opacus_analysis(sigma, q, steps, delta):
    assert epsilon_of([(sigma, q, steps)], delta, "rdp") == pytest.approx(
        opacus_rdp_epsilon(sigma, q, steps, delta), rel=1e-12
    )


def test_prv_epsilon_equals_an_opacus_prv_accountant_and_is_below_rdp():
    acc = PRVAccountant()
    for _ in range(200):
        acc.step(noise_multiplier=1.0, sample_rate=0.05)
    assert epsilon_of([(1.0, 0.05, 200)], 1e-5, "prv") == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-9)
    assert epsilon_of([(1.0, 0.05, 200)], 1e-5, "prv") < epsilon_of([(1.0, 0.05, 200)], 1e-5, "rdp")


def test_epsilon_of_edge_cases():
    assert epsilon_of([], 1e-5, "rdp") == 0.0
    assert math.isinf(epsilon_of([(0.0, 0.5, 3)], 1e-5, "rdp"))


@pytest.mark.parametrize("n,expected", [(1, 1e-1), (5, 1e-2), (20, 1e-3), (128, 1e-4), (5000, 1e-5)])
def test_default_delta_is_a_power_of_ten_below_one_over_ten_n(n, expected):
    assert default_delta(n) == pytest.approx(expected)


@given(st.integers(min_value=1, max_value=10**8))
def test_default_delta_is_always_below_one_over_n(n):
    assert 0 < default_delta(n) <= 1 / (10 * n) * (1 + 1e-12)


def test_check_delta_refuses_delta_not_below_one_over_n():
    check_delta(1e-3, 20, "client 0")
    with pytest.raises(PrivacyError, match=r"0\.1.*1/n = 0\.05.*--delta 0\.001"):
        check_delta(0.1, 20, "client 0")
    with pytest.raises(PrivacyError, match="must be in"):
        check_delta(1.5, 20, "client 0")


def test_check_delta_boundaries():
    """delta in (0, 1) and strictly below 1/n: 0, 1 and exactly 1/n are refused, just below 1/n passes."""
    with pytest.raises(PrivacyError, match=r"must be in \(0, 1\), got 0\.0"):
        check_delta(0.0, 20, "x")
    with pytest.raises(PrivacyError, match=r"must be in \(0, 1\), got 1\.0"):
        check_delta(1.0, 1, "x")
    with pytest.raises(PrivacyError, match=r"dp\.delta = 0\.05 is not below 1/n = 0\.05 for x \(20\)"):
        check_delta(0.05, 20, "x")
    with pytest.raises(PrivacyError, match="is not below 1/n"):
        check_delta(0.07, 20, "x")  # between 1/n and 2/n
    check_delta(0.0499, 20, "x")
    with pytest.raises(PrivacyError, match="^cannot choose delta for a population of 0; need at least one"):
        default_delta(0)


def test_record_level_summary_reports_every_field():
    p = record_level()
    p.spend(0, 4, 0.25, 1)
    p.spend(1, 10, 0.1, 1)
    e0, e1 = opacus_rdp_epsilon(1.1, 0.25, 4, 1e-3), opacus_rdp_epsilon(1.1, 0.1, 10, 1e-3)
    s = p.summary()
    eps = {k: s.pop(k) for k in ("epsilon", "epsilon_mean", "epsilon_per_client")}
    observers = s.pop("observers")
    assert {o["epsilon"] for o in observers.values()} == {eps["epsilon"]}  # the same bound for all
    assert (s.pop("noise"), s.pop("guarantee")) == ("os", "(eps, delta)-DP")
    assert eps["epsilon"] == pytest.approx(max(e0, e1), rel=1e-9)
    assert eps["epsilon_mean"] == pytest.approx((e0 + e1) / 2, rel=1e-9)
    assert eps["epsilon_per_client"] == {"0": pytest.approx(e0, rel=1e-9), "1": pytest.approx(e1, rel=1e-9)}
    assert s == {
        "mode": "dp",
        "unit": UNIT_RECORD,
        "delta": 1e-3,
        "accountant": "rdp",
        "sigma": 1.1,
        "target_epsilon": None,
        "clip_norm": 1.0,
        "sample_rates": {"0": 0.25, "1": 0.1},
        "steps": {"0": 4, "1": 10},
    }


def test_user_level_summary_reports_every_field():
    p = user_level()
    for _ in range(3):
        p.spend_round()
    s = p.summary()
    eps = s.pop("epsilon")
    assert eps == pytest.approx(opacus_rdp_epsilon(1.0, 0.3, 3, 1e-2), rel=1e-9)
    assert s.pop("epsilon_knowing_sample") == pytest.approx(opacus_rdp_epsilon(1.0, 1.0, 3, 1e-2), rel=1e-9)
    observers = s.pop("observers")
    assert observers["released_model"]["epsilon"] == eps and observers["server"]["epsilon"] is None
    assert (s.pop("noise"), s.pop("guarantee")) == ("os", "(eps, delta)-DP")
    assert s == {
        "mode": "user-dp",
        "unit": UNIT_USER,
        "delta": 1e-2,
        "accountant": "rdp",
        "sigma": 1.0,
        "target_epsilon": None,
        "clip_norm": 0.5,
        "sample_rate": 0.3,
        "rounds_accounted": 3,
    }


@pytest.mark.parametrize("target", [0.5, 2.0, 8.0, 30.0])
def test_sigma_solved_for_a_target_reaches_it_within_one_percent(target):
    sigma = solve_noise_multiplier(target, 1e-5, [(0.05, 600)], "rdp")
    eps = opacus_rdp_epsilon(sigma, 0.05, 600, 1e-5)
    assert target * 0.99 <= eps <= target


def test_sigma_solved_for_several_schedules_protects_the_worst():
    sigma = solve_noise_multiplier(4.0, 1e-4, [(0.1, 100), (0.25, 20), (0.1, 100)], "rdp")
    eps = [opacus_rdp_epsilon(sigma, 0.1, 100, 1e-4), opacus_rdp_epsilon(sigma, 0.25, 20, 1e-4)]
    assert max(eps) <= 4.0 and max(eps) >= 4.0 * 0.99


def test_sigma_solved_with_prv_reaches_the_target():
    sigma = solve_noise_multiplier(3.0, 1e-5, [(0.1, 100)], "prv")
    assert 3.0 * 0.99 <= epsilon_of([(sigma, 0.1, 100)], 1e-5, "prv") <= 3.0


def test_unreachable_target_epsilon_is_refused_naming_the_fix():
    with pytest.raises(PrivacyError, match=r"target_epsilon = 1e-06.*above 1000.*--target-epsilon"):
        solve_noise_multiplier(1e-6, 1e-5, [(1.0, 10_000)], "rdp")


def test_record_level_epsilon_per_client_equals_opacus():
    p = record_level()
    p.spend(0, 4, 0.25, round_index=1)
    p.spend(1, 10, 0.1, round_index=1)
    p.spend(0, 4, 0.25, round_index=2)
    eps = p.epsilons()
    assert eps[0] == pytest.approx(opacus_rdp_epsilon(1.1, 0.25, 8, 1e-3), rel=1e-12)
    assert eps[1] == pytest.approx(opacus_rdp_epsilon(1.1, 0.1, 10, 1e-3), rel=1e-12)
    report = p.round_report(2, _Outcome([]))
    assert report["epsilon"] == max(eps.values())
    assert report["epsilon_mean"] == pytest.approx((eps[0] + eps[1]) / 2)
    assert report["delta"] == 1e-3 and report["sigma"] == 1.1 and report["clip_norm"] == 1.0
    s = p.summary()
    assert s["unit"] == UNIT_RECORD and s["mode"] == "dp" and s["accountant"] == "rdp"
    assert s["steps"] == {"0": 8, "1": 10}


def test_record_level_target_epsilon_is_met_by_the_planned_run():
    p = record_level(noise_multiplier=None, target_epsilon=2.0)
    for r in range(1, 4):
        p.spend(0, 4, 0.25, r)
        p.spend(1, 10, 0.1, r)
    assert 2.0 * 0.99 <= p.round_report(3, _Outcome([]))["epsilon"] <= 2.0


def test_record_level_state_round_trip_gives_identical_epsilon():
    a = record_level()
    a.spend(0, 4, 0.25, 1)
    a.spend(1, 10, 0.1, 1)
    state = json.loads(json.dumps(a.state()))  # checkpoints must survive serialisation
    b = record_level()
    b.load_state(state)
    assert b.epsilons() == a.epsilons()
    a.spend(0, 4, 0.25, 2)
    b.spend(0, 4, 0.25, 2)
    assert b.epsilons() == a.epsilons()
    assert b.summary() == a.summary()


def test_resumed_target_run_with_more_rounds_resolves_sigma_and_stays_within_target():
    a = record_level(noise_multiplier=None, target_epsilon=3.0, rounds=2)
    for r in (1, 2):
        a.spend(0, 4, 0.25, r)
        a.spend(1, 10, 0.1, r)
    b = record_level(noise_multiplier=None, target_epsilon=3.0, rounds=4)
    b.load_state(a.state())
    assert b.noise_multiplier > a.noise_multiplier
    for r in (3, 4):
        b.spend(0, 4, 0.25, r)
        b.spend(1, 10, 0.1, r)
    assert 3.0 * 0.99 <= max(b.epsilons().values()) <= 3.0


def test_resumed_user_level_target_run_with_more_rounds_stays_within_target():
    """The re-solved sigma accounts for the rounds already spent at the old sigma."""
    a = user_level(noise_multiplier=None, target_epsilon=2.0, rounds=3)
    for _ in range(3):
        a.spend_round()
    b = user_level(noise_multiplier=None, target_epsilon=2.0, rounds=6)
    b.load_state(a.state())
    assert b.noise_multiplier > a.noise_multiplier
    for _ in range(3):
        b.spend_round()
    assert 2.0 * 0.99 <= b.epsilon() <= 2.0
    same = user_level(noise_multiplier=None, target_epsilon=2.0, rounds=3)
    same.load_state(a.state())
    assert same.noise_multiplier == a.noise_multiplier  # same rounds: the checkpoint's sigma, as it was


def test_resumed_run_with_the_same_rounds_keeps_sigma_exactly():
    a = record_level(noise_multiplier=None, target_epsilon=3.0)
    a.spend(0, 4, 0.25, 1)
    b = record_level(noise_multiplier=None, target_epsilon=3.0)
    b.load_state(a.state())
    assert b.noise_multiplier == a.noise_multiplier


def test_load_state_refuses_another_accountant_or_mode():
    a = record_level()
    with pytest.raises(PrivacyError, match="'rdp'.*'prv'"):
        record_level(accountant="prv").load_state(a.state())
    with pytest.raises(PrivacyError, match="mode"):
        user_level().load_state(a.state())


def test_user_level_epsilon_equals_opacus_and_round_trips():
    a = user_level()
    for _ in range(3):
        a.spend_round()
    assert a.epsilon() == pytest.approx(opacus_rdp_epsilon(1.0, 0.3, 3, 1e-2), rel=1e-12)
    b = user_level()
    b.load_state(json.loads(json.dumps(a.state())))
    assert b.epsilon() == a.epsilon()
    s = a.summary()
    assert s["unit"] == UNIT_USER and s["mode"] == "user-dp" and s["rounds_accounted"] == 3
    row = a.round_report(3, _Outcome([], {"clipped_fraction": 0.5}))
    assert "clipped_fraction" not in row  # which updates were clipped depends on the secret sample
    assert row["epsilon"] == a.epsilon() and row["noise"] == "os" and row["guarantee"] == "(eps, delta)-DP"


def test_user_level_target_epsilon_within_one_percent():
    p = user_level(noise_multiplier=None, target_epsilon=5.0, rounds=20)
    for _ in range(20):
        p.spend_round()
    assert 5.0 * 0.99 <= p.epsilon() <= 5.0


@settings(max_examples=10, deadline=None)
@given(
    sigma=st.floats(0.5, 5.0),
    q=st.floats(0.01, 1.0),
    steps=st.integers(1, 500),
)
def test_epsilon_grows_with_steps_and_shrinks_with_noise(sigma, q, steps):
    e = epsilon_of([(sigma, q, steps)], 1e-5, "rdp")
    assert epsilon_of([(sigma, q, steps + 10)], 1e-5, "rdp") >= e
    assert epsilon_of([(sigma * 1.5, q, steps)], 1e-5, "rdp") <= e


class _Outcome:
    def __init__(self, updates, stats=None):
        self.updates = updates
        self.stats = stats or {}


def opacus_accountant_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """Epsilon from an Opacus RDPAccountant stepped `steps` times (independent of privfl's cache)."""
    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    return float(acc.get_epsilon(delta=delta))


@pytest.mark.parametrize("encrypted", [False, True])
def test_user_level_observers_amplify_only_where_the_sample_is_unknown(encrypted):
    p = user_level(setting=Setting("os", encrypted, False), delta=1e-5)
    for _ in range(4):
        p.spend_round()
    amplified = opacus_accountant_epsilon(1.0, 0.3, 4, 1e-5)
    knowing = opacus_accountant_epsilon(1.0, 1.0, 4, 1e-5)
    assert knowing > amplified * 1.5  # the two figures differ, so mixing them up fails below
    obs = p.observers()
    assert obs["released_model"]["epsilon"] == pytest.approx(amplified, rel=1e-4)
    assert obs["run_directory"]["epsilon"] == pytest.approx(amplified, rel=1e-4)
    if encrypted:  # the server knows the sample; a client is told k
        assert obs["server"]["epsilon"] == pytest.approx(knowing, rel=1e-4)
        assert obs["other_client"]["epsilon"] == pytest.approx(knowing, rel=1e-4)
    else:  # the server sees each clipped update in the clear; a client learns only its own inclusion
        assert obs["server"]["epsilon"] is None and obs["server"]["bound"] == "none"
        assert obs["other_client"]["epsilon"] == pytest.approx(amplified, rel=1e-4)
    s = p.summary()
    assert s["observers"] == obs and s["epsilon_knowing_sample"] == pytest.approx(knowing, rel=1e-4)
    row = p.round_report(4, _Outcome([]))
    assert row["epsilon_server"] == obs["server"]["epsilon"]
    assert row["epsilon_other_client"] == obs["other_client"]["epsilon"]


def test_user_level_recorded_updates_void_the_run_directory_bound():
    p = user_level(setting=Setting("os", False, True))
    p.spend_round()
    assert p.observers()["run_directory"]["epsilon"] is None
    assert "raw update" in p.observers()["run_directory"]["why"]


def test_record_level_observers_all_get_the_worst_clients_amplified_epsilon():
    p = record_level(setting=Setting("os", False, True), delta=1e-4)
    p.spend(0, 4, 0.25, 1)
    p.spend(1, 10, 0.1, 1)
    worst = max(opacus_accountant_epsilon(1.1, 0.25, 4, 1e-4), opacus_accountant_epsilon(1.1, 0.1, 10, 1e-4))
    for name, o in p.observers().items():
        assert o["epsilon"] == pytest.approx(worst, rel=1e-4), name
    assert "clipped_fraction" not in p.round_report(1, _Outcome([]))


@pytest.mark.parametrize("make", [record_level, user_level])
def test_seeded_noise_voids_every_bound_but_the_released_models(make):
    p = make(setting=Setting("seeded", False, False))
    if isinstance(p, UserLevelPrivacy):
        p.spend_round()
    else:
        p.spend(0, 4, 0.25, 1)
    obs = p.observers()
    assert obs["released_model"]["epsilon"] is not None
    for name in ("run_directory", "server", "other_client"):
        assert obs[name]["epsilon"] is None and SEEDED_LABEL in obs[name]["why"], name
    assert p.summary()["guarantee"] == SEEDED_LABEL and p.summary()["noise"] == "seeded"
    row = p.round_report(1, _Outcome([]))
    assert row["guarantee"] == SEEDED_LABEL and row["noise"] == "seeded"


@pytest.mark.parametrize(
    "k,expected", [(1, 1e-5), (5, 1e-5), (1000, 1e-5), (9999, 1e-5), (10**4, 1e-5), (10**5, 1e-6)]
)
def test_user_level_default_delta_is_at_most_1e5_and_below_one_over_ten_k(k, expected):
    assert default_user_delta(k) == pytest.approx(expected)
    assert default_user_delta(k) <= 1 / (10 * k) * (1 + 1e-12)


class _Stats:
    def __init__(self, **stats):
        self.stats = stats


def test_record_level_round_report_by_hand():
    p = record_level()
    p.spend(0, 4, 0.25, 1)
    p.spend(1, 10, 0.1, 1)
    e0, e1 = opacus_rdp_epsilon(1.1, 0.25, 4, 1e-3), opacus_rdp_epsilon(1.1, 0.1, 10, 1e-3)
    updates = [_Stats(clipped=3, per_sample_grads=10), _Stats(clipped=1, per_sample_grads=30), _Stats()]
    report = p.round_report(1, _Outcome(updates))
    worst = report.pop("epsilon")
    assert worst == pytest.approx(max(e0, e1), rel=1e-9)
    assert report.pop("epsilon_mean") == pytest.approx((e0 + e1) / 2, rel=1e-9)
    # clip counts are a client's side output, never reported (docs/privacy.md, no side channels)
    assert report == {
        "epsilon_run_directory": worst,
        "epsilon_server": worst,
        "epsilon_other_client": worst,
        "delta": 1e-3,
        "sigma": 1.1,
        "clip_norm": 1.0,
        "noise": "os",
        "guarantee": "(eps, delta)-DP",
    }


def test_user_level_round_report_by_hand():
    p = user_level()
    p.spend_round()
    report = p.round_report(1, _Outcome([], {"clipped_fraction": 0.25}))
    amplified = report.pop("epsilon")
    assert amplified == pytest.approx(opacus_rdp_epsilon(1.0, 0.3, 1, 1e-2), rel=1e-9)
    # which updates were clipped depends on the secret sample: never in a metrics row
    assert report == {
        "epsilon_run_directory": amplified,
        "epsilon_server": None,  # it sees every clipped update in the clear
        "epsilon_other_client": amplified,
        "delta": 1e-2,
        "sigma": 1.0,
        "clip_norm": 0.5,
        "noise": "os",
        "guarantee": "(eps, delta)-DP",
    }
