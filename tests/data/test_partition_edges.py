"""The Dirichlet partition at its limits: the smallest feasible shards, refusals, empty clients."""

from __future__ import annotations

import numpy as np
import pytest

from privfl.data.partition import dirichlet
from privfl.errors import DataError


def test_by_default_every_client_needs_two_samples_and_exactly_two_each_is_feasible():
    labels = np.zeros(8, dtype=np.int64)
    shards = dirichlet(labels, 4, 1e6, np.random.default_rng(0))  # near-equal proportions
    assert sorted(len(s) for s in shards) == [2, 2, 2, 2]
    assert sorted(np.concatenate(shards).tolist()) == list(range(8))
    with pytest.raises(DataError, match=r"^5 clients x 2 samples exceeds the 8 training samples$"):
        dirichlet(labels, 5, 1e6, np.random.default_rng(0))


def test_a_skew_that_keeps_starving_a_client_is_refused_after_100_draws():
    labels = np.repeat([0, 1], 6)
    with pytest.raises(
        DataError,
        match=r"^Dirichlet partition with alpha=0\.001 left a client with fewer than 2 samples after 100 "
        r"draws; raise --dirichlet-alpha or use fewer clients$",
    ):
        dirichlet(labels, 4, 0.001, np.random.default_rng(0))


def test_a_client_left_empty_still_gets_an_integer_index_array():
    """With min_size = 0 a skewed draw may leave a client nothing: its shard must still index a tensor."""
    labels = np.repeat([0, 1], 5)
    shards = dirichlet(labels, 6, 0.01, np.random.default_rng(1), min_size=0)
    assert any(len(s) == 0 for s in shards)
    assert all(s.dtype == np.int64 for s in shards)
    assert sorted(np.concatenate(shards).tolist()) == list(range(10))
