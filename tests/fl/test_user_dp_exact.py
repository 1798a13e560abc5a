"""User-level DP-FedAvg checked exactly: which stream each noise comes from, what a noise share is
told and returns, how much noise the server tops up and what it logs, the released model's dtype
and the round's stats; the Poisson draw at its boundary; what the empty-round wrapper passes on."""

from __future__ import annotations

import logging
import math

import numpy as np

from privfl.fl import dp
from privfl.fl.aggregate import (
    Contribution,
    PlainSummation,
    RoundKeys,
    SumResult,
    clip_update,
    gaussian_noise,
)
from privfl.fl.client import Update
from privfl.fl.dp import SkipEmptyRounds, UserDPPolicy, poisson_clients
from privfl.randomness import PrivacyRandomness
from tests.privacy_settings import user_level

K, Q, SIGMA, CLIP, SEED = 10, 0.4, 1.5, 0.5, 3
EC = Q * K  # the expected count qK the server divides by


def policy(noise_on_clients=None, noise_share=None) -> UserDPPolicy:
    privacy = user_level(noise_multiplier=SIGMA, clip_norm=CLIP, sample_rate=Q)  # delta 1e-2, 5 rounds
    randomness = PrivacyRandomness("seeded", SEED)
    if noise_on_clients is None:  # the default
        return UserDPPolicy(K, privacy, randomness, clip_norm=CLIP, noise_share=noise_share)
    return UserDPPolicy(K, privacy, randomness, noise_on_clients, clip_norm=CLIP, noise_share=noise_share)


def streams() -> PrivacyRandomness:
    """The same seeded randomness, to read the streams the policy should have used."""
    return PrivacyRandomness("seeded", SEED)


class RecordingShare:
    """A NoiseShare that records what it is told: sensitivity 3 S, adds 1, a quarter missing."""

    def __init__(self) -> None:
        self.added: list[tuple] = []
        self.asked: list[tuple[int, int]] = []

    def sensitivity(self, clip_norm: float) -> float:
        return 3.0 * clip_norm

    def add(self, vector, sigma, clip_norm, sampled, rng):
        self.added.append((vector.copy(), sigma, clip_norm, sampled, rng.random()))
        return vector + 1.0

    def missing(self, sampled: int, survivors: int) -> float:
        self.asked.append((sampled, survivors))
        return 0.25


def update(cid: int, delta, r: int) -> Update:
    return Update(cid, r, np.asarray(delta, dtype=np.float32), 10, 0.0)


# --- the client's contribution ---------------------------------------------------------------------
def test_by_default_the_client_adds_no_noise_and_reports_its_clipping() -> None:
    p = policy()
    p.announce(2, 3)
    small = p.contribution(update(4, [0.1, -0.2, 0.0], 2))
    assert small.client_id == 4 and small.weight == 1.0 and not small.clipped
    np.testing.assert_array_equal(small.vector, np.array([0.1, -0.2, 0.0], np.float32).astype(np.float64))
    big = p.contribution(update(5, [3.0, 4.0, 0.0], 2))  # norm 5, clipped to S = 0.5
    assert big.client_id == 5 and bool(big.clipped)
    np.testing.assert_allclose(big.vector, [0.3, 0.4, 0.0], rtol=1e-12)


def test_a_client_noise_share_is_drawn_from_that_clients_own_stream() -> None:
    p = policy(noise_on_clients=True)
    p.announce(2, 4)
    got = p.contribution(update(7, [3.0, 4.0, 0.0, 0.0], 2))
    assert got.client_id == 7 and bool(got.clipped)
    noise = gaussian_noise(4, SIGMA * CLIP / math.sqrt(4), streams().client_noise_share(2, 7))
    np.testing.assert_array_equal(got.vector, clip_update(np.array([3.0, 4.0, 0.0, 0.0]), CLIP)[0] + noise)


def test_a_noise_share_is_told_sigma_the_bound_the_rounds_count_and_the_clients_stream() -> None:
    share = RecordingShare()
    p = policy(noise_on_clients=True, noise_share=share)
    p.announce(6, 3)
    got = p.contribution(update(1, [0.0, 0.25], 6))
    np.testing.assert_array_equal(got.vector, [1.0, 1.25])  # the share's own vector is the contribution
    ((vector, sigma, clip, sampled, first),) = share.added
    np.testing.assert_array_equal(vector, [0.0, 0.25])
    assert (sigma, clip, sampled) == (SIGMA, CLIP, 3)
    assert first == streams().client_noise_share(6, 1).random()


# --- the server's step ---------------------------------------------------------------------------
def server_noise(r: int, n: int, std: float) -> np.ndarray:
    return gaussian_noise(n, std, streams().server_noise(r))


def released(w: np.ndarray, total: np.ndarray) -> np.ndarray:
    return (w.astype(np.float64) + total / EC).astype(np.float32)


def test_the_server_adds_all_the_noise_from_its_own_stream_and_states_it() -> None:
    p = policy()
    p.sample(3)
    w = np.linspace(-1, 1, 5).astype(np.float32)
    total = np.array([0.5, -0.25, 0.0, 1.0, 0.125])
    new, stats = p.server_step(w, SumResult(total, 3.0, 4, clipped=1), 3)
    assert new.dtype == np.float32
    np.testing.assert_array_equal(new, released(w, total + server_noise(3, 5, SIGMA * CLIP)))
    assert stats == {"clipped_fraction": 0.25, "noise_std": SIGMA * CLIP / EC, "server_noise_share": 1.0}


def test_a_round_nobody_was_summed_in_moves_the_model_by_noise_only() -> None:
    p = policy(noise_on_clients=True)
    p.sample(1)
    w = np.zeros(4, np.float32)
    new, stats = p.server_step(w, SumResult(np.full(4, 5.0), 0.0, 0), 1)  # a vector, but no client
    np.testing.assert_array_equal(new, released(w, server_noise(1, 4, SIGMA * CLIP)))
    assert stats["clipped_fraction"] == 0.0 and stats["server_noise_share"] == 1.0


def test_one_share_of_three_arriving_is_topped_up_by_two_thirds_and_logged(caplog) -> None:
    p = policy(noise_on_clients=True)
    p.announce(4, 3)  # three were sampled
    w = np.zeros(3, np.float32)
    total = np.array([0.1, 0.2, 0.3])
    caplog.set_level(logging.WARNING, logger=dp.__name__)
    new, stats = p.server_step(w, SumResult(total, 1.0, 1), 4)
    assert stats["server_noise_share"] == 2 / 3
    np.testing.assert_array_equal(
        new, released(w, total + server_noise(4, 3, SIGMA * CLIP * math.sqrt(2 / 3)))
    )
    assert [r.getMessage() for r in caplog.records] == [
        "round 4: 2 of 3 noise shares missing from the decrypted sum; the server adds them so the "
        "released model keeps its guarantee, but it saw a sum with less noise"
    ]


def test_every_share_arriving_adds_no_server_noise_and_logs_nothing(caplog) -> None:
    p = policy(noise_on_clients=True)
    p.announce(4, 3)
    w = np.ones(3, np.float32)
    total = np.array([0.1, 0.2, 0.3])
    caplog.set_level(logging.WARNING, logger=dp.__name__)
    new, stats = p.server_step(w, SumResult(total, 3.0, 3), 4)
    np.testing.assert_array_equal(new, released(w, total))
    assert stats["server_noise_share"] == 0.0 and caplog.records == []


def test_a_noise_share_sets_the_sensitivity_and_the_missing_part() -> None:
    share = RecordingShare()
    p = policy(noise_on_clients=True, noise_share=share)
    p.announce(5, 4)
    w = np.zeros(3, np.float32)
    total = np.array([1.0, 0.0, -1.0])
    new, stats = p.server_step(w, SumResult(total, 3.0, 3), 5)
    std = SIGMA * 3.0 * CLIP
    np.testing.assert_array_equal(new, released(w, total + server_noise(5, 3, std * math.sqrt(0.25))))
    assert stats["noise_std"] == std / EC and stats["server_noise_share"] == 0.25
    p.server_step(w, SumResult(np.zeros(3), 0.0, 0), 5)  # nobody summed: nobody's share arrived
    assert share.asked == [(4, 3), (0, 0)]


# --- sampling and the empty-round wrapper -----------------------------------------------------------
class Draws:
    """A generator stand-in that returns the given uniform draws."""

    def __init__(self, draws) -> None:
        self.draws = np.asarray(draws)

    def random(self, n: int) -> np.ndarray:
        assert n == self.draws.shape[0]
        return self.draws


def test_a_client_is_sampled_when_its_draw_is_below_the_rate_not_at_it() -> None:
    # P(u < q) = q for u uniform on [0, 1); a draw equal to q is the first one not taken
    assert poisson_clients(4, 0.5, Draws([0.25, 0.5, 0.75, 0.0])) == [0, 3]
    assert poisson_clients(2, 0.0, Draws([0.0, 0.5])) == []


class Recording:
    """An inner summation that records what the wrapper passes on."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def begin_round(self, round_index, n_params):
        self.calls.append(("begin_round", round_index, n_params))
        return RoundKeys(round_index, n_params)

    def encode(self, update, contribution, keys):
        self.calls.append(("encode", update, contribution, keys))
        return "upload"


def test_the_empty_round_wrapper_passes_its_arguments_on_and_an_empty_round_is_all_zero() -> None:
    inner = Recording()
    s = SkipEmptyRounds(inner)
    keys = s.begin_round(7, 3)
    assert keys == RoundKeys(7, 3)
    u = update(0, [0.0, 0.0, 0.0], 7)

    def rule(x):
        return Contribution(0, np.zeros(3), 1.0)

    assert s.encode(u, rule, keys) == "upload"
    assert inner.calls == [("begin_round", 7, 3), ("encode", u, rule, keys)]
    empty = s.finish()  # nobody submitted: the inner one is not asked
    assert (empty.weight, empty.count, empty.clipped, empty.stats) == (0.0, 0, 0, {})
    np.testing.assert_array_equal(empty.vector, np.zeros(3))
    plain = SkipEmptyRounds(PlainSummation())
    keys = plain.begin_round(8, 2)

    def weighted(up):
        return Contribution(up.client_id, up.delta.astype(np.float64), 2.0)

    plain.submit(plain.encode(update(1, [1.0, 2.0], 8), weighted, keys), weighted)
    result = plain.finish()
    assert (result.weight, result.count) == (2.0, 1) and result.vector.tolist() == [1.0, 2.0]
