"""The distributed discrete Gaussian's calibration on a coarse grid, where the rounding term and
the scale are large enough to see: sensitivity, share scale, tau, the server's top-up, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privfl.errors import PrivacyError
from privfl.fl.secure.discrete_noise import DiscreteGaussianShare, discrete_gaussian, divergence
from privfl.fl.secure.masking import FixedPoint

COARSE = FixedPoint(16, 64.0, 10)  # 5 fraction bits: a grid step of 1/32


def test_the_sensitivity_covers_the_worst_rounding_to_the_grid_and_no_more():
    d, step = 64, COARSE.step
    share = DiscreteGaussianShare(COARSE, d, max_dropout=0.0)
    x = np.full(d, (3 + 0.5 + 1e-6) * step)  # every coordinate just past half a step: rounds up
    rounded = np.rint(x / step) * step
    bound = share.sensitivity(float(np.linalg.norm(x)))
    assert 0 <= bound - np.linalg.norm(rounded) < 1e-4  # S' is reached, up to the 1e-6 steps


def test_one_share_has_the_stated_scale_and_a_lone_client_carries_the_whole_noise():
    rng = np.random.default_rng(11)
    share = DiscreteGaussianShare(COARSE, 4000, max_dropout=0.2)
    sigma, clip = 2.0, 3.0
    for sampled in (10, 1, 0):  # 0 and 1: one share holds sigma^2 S'^2 / (1 - f)
        noise = share.add(np.zeros(4000), sigma, clip, sampled, rng)
        want = sigma * share.sensitivity(clip) / math.sqrt(0.8 * max(sampled, 1))
        assert abs(noise.std() / want - 1) < 0.05, sampled
    assert share.missing(1, 1) == 0.0 and share.missing(1, 0) == pytest.approx(1.25)


def test_tau_is_kairouz_liu_steinkes_sum_and_one_share_is_exact():
    s = 0.3
    assert divergence(s, 1) == 0.0 and divergence(s, 0) == 0.0  # one share is a discrete Gaussian
    terms = [math.exp(-2 * math.pi**2 * s * s * j / (j + 1)) for j in (1, 2)]
    assert divergence(s, 2) == pytest.approx(10 * terms[0], rel=1e-12)
    assert divergence(s, 3) == pytest.approx(10 * sum(terms), rel=1e-12)


def test_a_grid_too_coarse_for_the_noise_and_a_non_positive_sigma_are_refused():
    share = DiscreteGaussianShare(COARSE, 4, max_dropout=0.0)  # a share of 0.1 grid steps
    with pytest.raises(
        PrivacyError,
        match=r"^a noise share of \S+ grid steps leaves the summed shares tau = \S+ from a discrete "
        r"Gaussian \(accepted: 1e-12\): raise secure\.modulus_bits or lower secure\.value_range for "
        r"a finer grid$",
    ):
        share.add(np.zeros(4), 0.01, 1.0, 10, np.random.default_rng(0))
    for sigma in (0.0, -1.0):
        with pytest.raises(ValueError, match=rf"^sigma must be > 0, got {sigma}$"):
            discrete_gaussian(3, sigma, np.random.default_rng(0))
