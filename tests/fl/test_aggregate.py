import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from privfl.fl.aggregate import Contribution, PlainSummation, clip_update, gaussian_noise, weighted_mean
from privfl.fl.client import Update
from privfl.fl.federation import FedAvgPolicy, sample_clients


def test_weighted_mean_matches_hand_computation():
    v = [np.array([1.0, 2.0]), np.array([3.0, -4.0]), np.array([0.0, 10.0])]
    w = [1, 3, 6]
    # (1*1 + 3*3 + 6*0)/10 = 1.0 ; (1*2 + 3*-4 + 6*10)/10 = 5.0
    np.testing.assert_allclose(weighted_mean(v, w), [1.0, 5.0])


def test_weighted_mean_rejects_bad_weights():
    with pytest.raises(ValueError, match=r"^weights must sum to a positive number, got 0\.0$"):
        weighted_mean([np.zeros(2)], [0])
    with pytest.raises(ValueError, match=r"^need as many weights as vectors \(got 1 and 2\)$"):
        weighted_mean([np.zeros(2)], [1, 2])
    with pytest.raises(ValueError, match=r"^need as many weights as vectors \(got 0 and 0\)$"):
        weighted_mean([], [])


def test_weighted_mean_accepts_small_weights_and_one_vector():
    np.testing.assert_allclose(weighted_mean([np.array([2.0]), np.array([4.0])], [0.25, 0.25]), [3.0])
    np.testing.assert_array_equal(weighted_mean([np.array([1.5, -2.0])], [7]), [1.5, -2.0])


def test_weighted_mean_of_float32_updates_is_computed_in_float64():
    big = weighted_mean([np.array([1e8], np.float32), np.array([1.0], np.float32)], [1, 1])
    assert big.dtype == np.float64 and big[0] == 50000000.5  # float32 would lose the 1
    tenth = np.float32(0.1)
    np.testing.assert_allclose(weighted_mean([np.array([tenth])], [3.0]), [np.float64(tenth)], rtol=1e-12)


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


def test_plain_summation_sums_and_counts_each_round_afresh():
    s = PlainSummation()
    with pytest.raises(RuntimeError, match=r"^begin_round\(\) must be called before submit\(\)$"):
        s.add(Contribution(0, np.zeros(1), 1.0))
    with pytest.raises(RuntimeError, match=r"^begin_round\(\) must be called before finish\(\)$"):
        s.finish()
    for r in (1, 2):
        s.begin_round(r, 1)
        s.add(Contribution(0, np.array([1.5]), 2.0))
        s.add(Contribution(1, np.array([8.0]), 0.5))
        out = s.finish()
        assert out.vector.dtype == np.float64 and out.vector[0] == 9.5
        assert (out.weight, out.count, out.stats) == (2.5, 2, {})
    with pytest.raises(RuntimeError, match="begin_round"):  # a finished round takes no more contributions
        s.add(Contribution(2, np.zeros(1), 1.0))


def test_gaussian_noise_has_mean_zero_and_the_given_std():
    rng = np.random.default_rng(0)
    x = gaussian_noise(20000, 2.5, rng)
    assert x.shape == (20000,) and x.dtype == np.float64
    assert abs(x.mean()) < 0.06 and x.std() == pytest.approx(2.5, rel=0.02)
    np.testing.assert_array_equal(
        gaussian_noise(5, 1.0, np.random.default_rng(1)), np.random.default_rng(1).normal(0.0, 1.0, 5)
    )


def test_clip_flags_exactly_the_vectors_above_the_bound():
    v = np.array([0.3, 0.4])  # norm 0.5
    for bound, clipped in ((1.0, False), (0.5, False), (0.25, True)):
        out, flag = clip_update(v, bound)
        assert flag is clipped
        np.testing.assert_allclose(np.linalg.norm(out), min(0.5, bound))
    unit = np.array([0.6, 0.8])  # norm exactly 1 is clipped like any other norm above the bound
    out, flag = clip_update(unit, 0.5)
    assert flag and np.linalg.norm(out) == pytest.approx(0.5)
    same, flag = clip_update(np.zeros(3), 0.0)
    assert not flag and not same.any()


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


def test_server_lr_scales_the_averaged_update_and_one_is_fedavg_bit_for_bit():
    """FedOpt's server SGD: w_{t+1} = w_t + eta_s * sum_k n_k delta_k / sum_k n_k."""
    w_t = np.array([0.5, -1.0], dtype=np.float32)
    updates = [(np.array([0.2, 0.4], np.float32), 1), (np.array([-0.4, 0.1], np.float32), 3)]

    def step(policy):
        s = PlainSummation()
        s.begin_round(1, 2)
        for k, (delta, n) in enumerate(updates):
            s.add(policy.contribution(Update(k, 1, delta, n, 0.0)))
        return policy.server_step(w_t, s.finish(), 1)[0]

    mean = (0.2 * 1 - 0.4 * 3) / 4, (0.4 * 1 + 0.1 * 3) / 4  # = (-0.25, 0.175)
    np.testing.assert_allclose(step(FedAvgPolicy(2.5)), w_t + 2.5 * np.array(mean), rtol=1e-6)
    np.testing.assert_array_equal(step(FedAvgPolicy(1.0)), step(FedAvgPolicy()))
