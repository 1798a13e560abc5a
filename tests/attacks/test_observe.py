"""What the server observed in a recorded run: per-round weights, deltas, aggregates, and checks."""

import shutil

import numpy as np
import pytest

from privfl.attacks.observe import PER_CLIENT, ObservedRun, check_data_matches
from privfl.data.dataset import prepare
from privfl.errors import AttackError
from privfl.runs import RunDir


def test_observation_is_what_the_recording_holds(recorded_run):
    observed = ObservedRun.open(recorded_run)
    assert observed.rounds == [1, 2] and not observed.secure and observed.observed == PER_CLIENT
    run = RunDir(recorded_run)
    first, second = run.load_updates(1), run.load_updates(2)
    obs, truth = observed.observe(1)
    assert obs.deltas.shape == (len(first["client_ids"]), first["weights"].shape[0])
    np.testing.assert_array_equal(obs.weights, first["weights"])
    # round 1's aggregate is w_2 - w_1; the last round's comes from the final checkpoint
    np.testing.assert_array_equal(obs.aggregate, (second["weights"] - first["weights"]).astype(np.float32))
    last, _ = observed.observe(2)
    np.testing.assert_array_equal(
        last.aggregate, (observed.final_weights() - second["weights"]).astype(np.float32)
    )
    assert all(len(g) == 1 for g in truth.genders)  # by-speaker clients: one speaker, one gender each


def test_round_selection_names_what_was_recorded(recorded_run):
    observed = ObservedRun.open(recorded_run)
    assert observed.select_rounds(max_rounds=1) == [1]
    assert observed.select_rounds(max_rounds=5) == [1, 2]
    assert observed.select_rounds((2,)) == [2]
    with pytest.raises(AttackError, match="round\\(s\\) 7 .* recorded rounds are 1-2"):
        observed.select_rounds((7,))
    assert observed.select_rounds(max_rounds=0) == [1, 2]  # 0: every recorded round
    with pytest.raises(AttackError, match="max_rounds must be >= 0"):
        observed.select_rounds(max_rounds=-1)


def test_a_run_without_recorded_updates_is_refused_with_the_fix(recorded_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(recorded_run, copy)
    shutil.rmtree(copy / "updates")
    with pytest.raises(AttackError, match="--record-updates"):
        ObservedRun.open(copy)
    assert ObservedRun.open(copy, need_updates=False).rounds == []


def test_replay_checks_the_data_against_the_recording(recorded_run):
    observed = ObservedRun.open(recorded_run)
    data = prepare(observed.config)
    check_data_matches(observed, data, 1)  # the same corpus and features: the replay reproduces it
    assert 1 in observed.verified_rounds
    shifted = observed.run.load_updates(2)
    wrong = ObservedRun.open(recorded_run)
    wrong.run.load_updates = lambda r: {**shifted, "weights": shifted["weights"] + 0.05}
    with pytest.raises(AttackError, match="does not reproduce its recorded update"):
        check_data_matches(wrong, data, 2)
