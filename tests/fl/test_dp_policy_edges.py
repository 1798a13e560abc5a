"""DP mechanisms at their edges: a client told its round's size, empty Poisson batches under ghost
clipping, and what an empty-round wrapper passes through on resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from privfl.errors import PrivacyError
from privfl.fl.aggregate import PlainSummation
from privfl.fl.client import LocalConfig, Update
from privfl.fl.dp import SkipEmptyRounds
from privfl.models import get_flat
from tests.fl.test_dp import client_data, privacy_for, trainer_for, user_policy

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/fl/conftest.py


def zero_update(cid: int, n: int, r: int) -> Update:
    return Update(cid, r, np.zeros(n, dtype=np.float32), 10, 0.0)


@pytest.mark.parametrize("k", [1, 4])
def test_a_client_told_its_rounds_size_adds_a_share_of_that_size(k):
    """On a client process announce(round, k) replaces sample(): its noise share has std sigma S / sqrt(k),
    and k = 1 (the client alone in its round) carries the whole noise."""
    policy, _ = user_policy(k=10, q=0.5, sigma=2.0, clip=0.5, noise_on_clients=True)
    policy.announce(6, k)
    share = policy.contribution(zero_update(3, 20_000, 6)).vector
    assert np.std(share) == pytest.approx(2.0 * 0.5 / math.sqrt(k), rel=0.03)
    with pytest.raises(RuntimeError, match="sample\\(\\) was not called for round 7"):
        policy.contribution(zero_update(3, 10, 7))  # announced for round 6 only


def test_a_round_size_below_one_is_refused_naming_the_fix():
    policy, _ = user_policy(noise_on_clients=True)
    with pytest.raises(
        PrivacyError,
        match=r"^round 2: a sampled client was told the round has 0 clients; server and client must run "
        r"the same privfl version$",
    ):
        policy.announce(2, 0)


def test_an_empty_poisson_batch_under_ghost_clipping_is_a_noise_only_step():
    """The step still happens (and is accounted): no gradient, only N(0, sigma^2 C^2) / B noise."""
    data = [client_data(0, n=8)]
    local = LocalConfig(epochs=1, batch_size=4, lr=1.0, momentum=0.0)
    quiet = trainer_for("cnn", "ghost", privacy_for(data, 4, sigma=0.0), local)
    w0 = get_flat(quiet.model).astype(np.float32)
    empty = np.zeros(0, dtype=np.int64)
    update = quiet._run(data[0], w0, 1, [torch.from_numpy(empty)], torch.Generator().manual_seed(0))
    assert np.all(update.delta == 0.0) and update.stats == {
        "steps": 1,
        "per_sample_grads": 0,
        "clipped": 0,
        "empty_batches": 1,
    }
    noisy = trainer_for("cnn", "ghost", privacy_for(data, 4, sigma=1.0, clip=2.0), local)
    update = noisy._run(data[0], w0, 1, [torch.from_numpy(empty)], torch.Generator().manual_seed(0))
    assert np.std(update.delta) == pytest.approx(1.0 * 2.0 / 4, rel=0.25)  # lr * sigma * C / B


def test_skip_empty_rounds_hands_state_through_to_the_summation_it_wraps():
    class Remembers(PlainSummation):
        def __init__(self) -> None:
            super().__init__()
            self.loaded = None

        def state(self) -> dict:
            return {"bound_bits": [9, 4]}

        def load_state(self, state: dict) -> None:
            self.loaded = state

    inner = Remembers()
    wrapped = SkipEmptyRounds(inner)
    assert wrapped.state() == {"bound_bits": [9, 4]}
    wrapped.load_state({"bound_bits": [12, 5]})
    assert inner.loaded == {"bound_bits": [12, 5]}


def test_equal_weight_fedavg_sends_the_clients_own_update_at_weight_one():
    """Record-level DP weighs every client 1 (n_k stays private); the id routes its signing key under CKKS."""
    from privfl.fl.dp import EqualWeightFedAvg

    delta = np.array([0.25, -0.5], dtype=np.float32)
    c = EqualWeightFedAvg().contribution(Update(4, 2, delta, 37, 0.1))
    assert c.client_id == 4 and c.weight == 1.0 and not c.clipped
    assert c.vector.dtype == np.float64 and c.vector.tolist() == [0.25, -0.5]


def test_a_round_with_added_and_submitted_contributions_is_not_empty():
    """Canary clients `add` beside real clients that `submit`: both count toward a non-empty round."""
    from privfl.fl.aggregate import Contribution, Upload

    s = SkipEmptyRounds(PlainSummation())
    s.begin_round(3, 2)
    s.add(Contribution(0, np.array([1.0, 2.0]), 1.0))
    rule = lambda u: Contribution(u.client_id, u.delta.astype(np.float64), 1.0)  # noqa: E731
    s.submit(Upload(1, 3, 5, delta=np.array([0.5, -1.0], dtype=np.float32)), rule)
    result = s.finish()
    assert result.count == 2 and result.weight == 2.0 and result.vector.tolist() == [1.5, 1.0]


def test_the_empty_round_wrapper_passes_on_the_inner_summations_own_capabilities():
    """SecAgg+'s use_relay/respond, CKKS's register/close: reached through the wrapper; `inner` itself
    is never looked up on the inner one (a copy made before __init__ would recurse for ever)."""
    import copy

    class Relays(PlainSummation):
        def respond(self, stage: str) -> str:
            return f"answered {stage}"

    wrapped = SkipEmptyRounds(Relays())
    assert wrapped.respond("share-keys") == "answered share-keys"
    with pytest.raises(AttributeError):
        wrapped.use_relay  # noqa: B018  (the inner one has none)
    bare = SkipEmptyRounds.__new__(SkipEmptyRounds)  # what copy and pickle start from
    with pytest.raises(AttributeError, match=r"^inner$"):
        bare.inner  # noqa: B018
    assert copy.copy(wrapped).respond("x") == "answered x"
