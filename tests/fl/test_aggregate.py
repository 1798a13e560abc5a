import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from privfl.fl.aggregate import Contribution, PlainSummation, clip_update, weighted_mean
from privfl.fl.client import Update
from privfl.fl.federation import FedAvgPolicy, sample_clients


def test_weighted_mean_matches_hand_computation():
    v = [np.array([1.0, 2.0]), np.array([3.0, -4.0]), np.array([0.0, 10.0])]
    w = [1, 3, 6]
    # (1*1 + 3*3 + 6*0)/10 = 1.0 ; (1*2 + 3*-4 + 6*10)/10 = 5.0
    np.testing.assert_allclose(weighted_mean(v, w), [1.0, 5.0])


def test_weighted_mean_rejects_bad_weights():
    with pytest.raises(ValueError):
        weighted_mean([np.zeros(2)], [0])
    with pytest.raises(ValueError):
        weighted_mean([np.zeros(2)], [1, 2])


def test_fedavg_round_is_mcmahan_average_of_client_weights():
    """w_{t+1} = sum_k n_k w_k / n, computed through policy + summation exactly."""
    w_t = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    locals_ = [np.array([1.0, 0.0, 2.0]), np.array([0.0, -2.0, 3.0]), np.array([0.5, -1.0, 1.0])]
    counts = [10, 30, 60]
    policy, summation = FedAvgPolicy(), PlainSummation()
    summation.begin_round(1, 3)
    for k, (wk, n) in enumerate(zip(locals_, counts, strict=True)):
        summation.add(policy.contribution(Update(k, 1, (wk - w_t).astype(np.float32), n, 0.0)))
    new, _ = policy.server_step(w_t, summation.finish(), 1)
    expected = (10 * locals_[0] + 30 * locals_[1] + 60 * locals_[2]) / 100
    # = [0.1+0+0.3, 0-0.6-0.6, 0.2+0.9+0.6] = [0.4, -1.2, 1.7]
    np.testing.assert_allclose(expected, [0.4, -1.2, 1.7])
    np.testing.assert_allclose(new, expected, rtol=1e-6)


def test_summation_rejects_wrong_length():
    s = PlainSummation()
    s.begin_round(1, 3)
    with pytest.raises(ValueError, match="3"):
        s.add(Contribution(0, np.zeros(4), 1.0))


def test_empty_round_keeps_weights():
    s = PlainSummation()
    s.begin_round(1, 2)
    w = np.ones(2, dtype=np.float32)
    new, stats = FedAvgPolicy().server_step(w, s.finish(), 1)
    np.testing.assert_array_equal(new, w)
    assert stats["skipped"]


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e3, 1e3)), st.floats(1e-3, 1e3))
def test_clip_bounds_norm_and_keeps_direction(v, c):
    out, clipped = clip_update(v, c)
    assert np.linalg.norm(out) <= c * (1 + 1e-9)
    if not clipped:
        np.testing.assert_array_equal(out, v)
    else:
        np.testing.assert_allclose(out / np.linalg.norm(out), v / np.linalg.norm(v), atol=1e-9)


def test_sampling_is_seeded_and_sized():
    a = sample_clients(10, 0.3, seed=1, round_index=4)
    assert a == sample_clients(10, 0.3, seed=1, round_index=4)
    assert len(a) == 3 and len(set(a)) == 3
    assert sample_clients(10, 1.0, 1, 4) == list(range(10))
    assert sample_clients(10, 0.01, 1, 4).__len__() == 1
    rounds = {tuple(sample_clients(10, 0.3, 1, r)) for r in range(1, 20)}
    assert len(rounds) > 1
