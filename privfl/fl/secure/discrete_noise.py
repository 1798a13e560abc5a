"""User-level DP inside a SecAgg+ sum: the distributed discrete Gaussian (Kairouz, Liu, Steinke 2021).

A masked sum is a sum of integers, so each client's noise share must be an integer on the masking
grid (step Delta = 2^-f, `privfl.config.FixedPoint`). Each sampled client:

  1. clips its update to L2 norm S (the policy),
  2. rounds it to the grid, to nearest: the L2 norm grows by at most sqrt(d) Delta / 2, so the
     sensitivity the noise is scaled to is S' = S + sqrt(d) Delta / 2 (rounding first, accounted),
  3. adds Delta * N_Z(0, s^2), s = sigma S' / (Delta sqrt((1 - f) k)), f = secure.max_dropout: the
     survivors of a round that lost at most f k of its k clients hold variance >= sigma^2 S'^2, so
     the server never sees a sum with less noise than accounted; with no dropout the sum holds
     sigma^2 S'^2 / (1 - f), and the server tops every released sum up to that same variance
     (`missing`), so the released model's noise does not reveal k. The accountant uses sigma: the
     released model's noise multiplier is sigma / sqrt(1 - f), the figure is conservative for it.

The sum of m discrete Gaussians of scale s is not itself a discrete Gaussian, but is within
tau = 10 sum_{j=1}^{m-1} exp(-2 pi^2 s^2 j / (j + 1)) of one (Kairouz et al., Prop. 14), and a
discrete Gaussian of scale sigma S' with sensitivity S' satisfies the continuous Gaussian's
(1 / 2 sigma^2)-zCDP (Canonne, Kamath, Steinke 2020, Thm 4). On privfl's grids s is 2^20 or more and
tau underflows to 0.0 in float64, so the accountant composes the same subsampled-Gaussian curve
with noise multiplier sigma as in plaintext runs; `DiscreteGaussianShare` refuses settings where
tau exceeds TAU_MAX. That the subsampled-Gaussian RDP curve also bounds a subsampled discrete
Gaussian is assumed here, as Kairouz et al. do in their experiments, not proved.

The sampler is CKS 2020 Algorithm 3 (discrete Laplace proposals, Bernoulli acceptance), vectorised
in float64 NumPy: like every floating-point Gaussian sampler (privfl.randomness) it is exact only
up to float rounding.
"""

from __future__ import annotations

import math

import numpy as np

from privfl.config import FixedPoint
from privfl.errors import PrivacyError

TAU_MAX = 1e-12  # the largest divergence of the summed shares from one discrete Gaussian accepted


def discrete_gaussian(n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """n samples of N_Z(0, sigma^2), P(x) proportional to exp(-x^2 / 2 sigma^2) on the integers (int64)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    t = math.floor(sigma) + 1
    p = -math.expm1(-1.0 / t)  # discrete Laplace(t) = difference of two geometrics of this rate
    out = np.empty(n, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:
        y = rng.geometric(p, todo.size).astype(np.int64) - rng.geometric(p, todo.size).astype(np.int64)
        gap = np.abs(y).astype(np.float64) - sigma * sigma / t
        keep = rng.random(todo.size) < np.exp(-(gap * gap) / (2.0 * sigma * sigma))
        out[todo[keep]] = y[keep]
        todo = todo[~keep]
    return out


def divergence(scale: float, clients: int) -> float:
    """Kairouz et al.'s tau for `clients` shares of discrete-Gaussian scale `scale`."""
    j = np.arange(1, max(clients, 1), dtype=np.float64)
    return float(10.0 * np.sum(np.exp(-2.0 * math.pi**2 * scale * scale * j / (j + 1.0))))


class DiscreteGaussianShare:
    """A client's noise share on the masking grid, and what the server must add when too few survive.

    fixed: the masking encoding (its step is the grid). n_params: d. max_dropout: the fraction of a
    round's clients the noise is provisioned to lose.
    """

    def __init__(self, fixed: FixedPoint, n_params: int, max_dropout: float) -> None:
        self.fixed = fixed
        self.n_params = n_params
        self.max_dropout = max_dropout

    def sensitivity(self, clip_norm: float) -> float:
        """S' = S + sqrt(d) Delta / 2: the clipped update's norm after rounding to the grid."""
        return clip_norm + math.sqrt(self.n_params) * self.fixed.step / 2.0

    def scale(self, sigma: float, clip_norm: float, sampled: int) -> float:
        """s, one share's discrete-Gaussian scale in grid units: variance sigma^2 S'^2 / ((1 - f) k)."""
        share = (1.0 - self.max_dropout) * max(sampled, 1)
        return sigma * self.sensitivity(clip_norm) / (self.fixed.step * math.sqrt(share))

    def add(
        self, vector: np.ndarray, sigma: float, clip_norm: float, sampled: int, rng: np.random.Generator
    ) -> np.ndarray:
        """The clipped update rounded to the grid plus this client's discrete-Gaussian share (on the grid)."""
        s = self.scale(sigma, clip_norm, sampled)
        tau = divergence(s, sampled)
        if tau > TAU_MAX:
            raise PrivacyError(
                f"a noise share of {s:.3g} grid steps leaves the summed shares tau = {tau:.2g} from a "
                f"discrete Gaussian (accepted: {TAU_MAX:g}): raise secure.modulus_bits or lower "
                "secure.value_range for a finer grid"
            )
        step = self.fixed.frac_bits
        grid = np.rint(np.ldexp(np.asarray(vector, dtype=np.float64), step))
        return np.ldexp(grid + discrete_gaussian(grid.shape[0], s, rng).astype(np.float64), -step)

    def missing(self, sampled: int, survivors: int) -> float:
        """What the server adds, in units of sigma^2 S'^2, so that every released sum carries
        1 / (1 - f) of it whatever k and the dropouts were: (k - survivors) / ((1 - f) k)."""
        k = max(sampled, 1)
        return max(k - survivors, 0) / ((1.0 - self.max_dropout) * k)
