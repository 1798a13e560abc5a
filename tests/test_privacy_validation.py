"""Privacy settings are refused at their boundaries, with a message that names the bad value and the fix."""

from __future__ import annotations

import json

import pytest

from privfl.errors import PrivacyError
from privfl.privacy import (
    dp_auc_bound,
    epsilon_of,
    make_accountant,
    solve_noise_multiplier,
)
from tests.privacy_settings import record_level, user_level


@pytest.mark.parametrize("make", [record_level, user_level])
def test_exactly_one_of_sigma_or_target_epsilon(make):
    with pytest.raises(PrivacyError, match="^give exactly one of noise_multiplier or target_epsilon$"):
        make(noise_multiplier=1.0, target_epsilon=2.0)
    with pytest.raises(PrivacyError, match="^give exactly one of noise_multiplier or target_epsilon$"):
        make(noise_multiplier=None, target_epsilon=None)


@pytest.mark.parametrize("make", [record_level, user_level])
def test_sigma_zero_and_fractional_sigma_are_accepted_negative_is_refused(make):
    """sigma = 0 (clipping only) is a legal setting whose epsilon is infinite; sigma < 1 is legal too."""
    assert make(noise_multiplier=0.0).noise_multiplier == 0.0
    assert make(noise_multiplier=0.5).noise_multiplier == 0.5
    with pytest.raises(PrivacyError, match=r"^noise multiplier must be >= 0, got -0\.1$"):
        make(noise_multiplier=-0.1)


def test_clip_norms_must_be_positive_and_the_message_names_the_setting():
    with pytest.raises(PrivacyError, match=r"^dp\.max_grad_norm must be > 0, got 0; e\.g\. 1\.0$"):
        record_level(max_grad_norm=0)
    with pytest.raises(PrivacyError, match=r"^dp\.clip_norm must be > 0, got 0\.0; e\.g\. 1\.0$"):
        user_level(clip_norm=0.0)
    assert record_level(max_grad_norm=1e-6).max_grad_norm == 1e-6
    assert user_level(clip_norm=1e-6).clip_norm == 1e-6


def test_user_level_sample_rate_is_in_zero_one_inclusive_of_full_participation():
    assert user_level(sample_rate=1.0).sample_rate == 1.0  # every client every round
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(PrivacyError, match=rf"^client sample rate must be in \(0, 1\], got {bad}$"):
            user_level(sample_rate=bad)


def test_unknown_accountant_is_refused_naming_the_choices():
    with pytest.raises(
        PrivacyError, match=r"^accountant 'gdp' is not one of rdp, prv; use --accountant rdp$"
    ):
        make_accountant("gdp")
    with pytest.raises(PrivacyError, match="'gdp' is not one of rdp, prv"):
        record_level(accountant="gdp")


def test_load_state_names_the_mismatch_and_the_fix():
    rec = record_level().state()
    with pytest.raises(
        PrivacyError, match=r"^checkpoint privacy state is for mode 'dp', this run is 'user-dp'$"
    ):
        user_level().load_state(rec)
    with pytest.raises(
        PrivacyError, match=r"^checkpoint privacy state is for mode 'list', this run is 'dp'$"
    ):
        record_level().load_state([rec])
    with pytest.raises(
        PrivacyError, match=r"with 'rdp', this run asks for 'prv'; resume with the run's own --accountant$"
    ):
        record_level(accountant="prv").load_state(rec)
    with pytest.raises(
        PrivacyError,
        match=r"^checkpoint was accounted at delta = 0\.001, this run at 0\.0001; "
        r"resume with the run's own --delta$",
    ):
        record_level(delta=1e-4).load_state(rec)
    no_delta = {k: v for k, v in rec.items() if k != "delta"}
    with pytest.raises(PrivacyError, match=r"accounted at delta = None, this run at 0\.001"):
        record_level().load_state(no_delta)
    with pytest.raises(
        PrivacyError,
        match=r"^checkpoint has accountants for clients \[0, 1\], this run has \[0, 1, 2\]; "
        r"resume with the run's own config$",
    ):
        record_level(sample_rates={0: 0.25, 1: 0.1, 2: 0.5}, steps_per_round={0: 4, 1: 10, 2: 2}).load_state(
            json.loads(json.dumps(rec))
        )


def test_solver_refuses_mismatched_or_empty_schedules():
    with pytest.raises(ValueError, match=r"^1 spent histories for 2 schedules$"):
        solve_noise_multiplier(2.0, 1e-5, [(0.1, 10), (0.2, 10)], spent=[[]])
    with pytest.raises(ValueError, match="^no schedules to calibrate sigma for$"):
        solve_noise_multiplier(2.0, 1e-5, [])


def test_unreachable_target_message_names_every_fix():
    with pytest.raises(
        PrivacyError,
        match=r"raise --target-epsilon, take fewer --rounds or --local-epochs, or lower the sample rate "
        r"\(smaller --batch-size, more data per client\)$",
    ):
        solve_noise_multiplier(1e-6, 1e-5, [(1.0, 10_000)], "rdp")


def test_auc_bound_refusal_names_the_values():
    with pytest.raises(ValueError, match=r"^need epsilon >= 0 and delta in \[0, 1\), got -1\.0, 0\.0$"):
        dp_auc_bound(-1.0, 0.0)


def test_a_run_without_noise_has_infinite_epsilon_under_either_accountant():
    for kind in ("rdp", "prv"):
        assert epsilon_of([(1.0, 0.1, 5), (0.0, 0.5, 3)], 1e-5, kind) == float("inf")
