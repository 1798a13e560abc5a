import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfl.data.partition import by_speaker, dirichlet, iid_balanced
from privfl.errors import DataError


def _check_exact_cover(shards, n):
    allidx = np.concatenate(shards)
    assert len(allidx) == n
    assert np.array_equal(np.sort(allidx), np.arange(n))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=8, max_size=200), st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_iid_balanced_covers_once_and_balances_each_class(labels, k, seed):
    labels = np.array(labels)
    if k > len(labels):
        return
    shards = iid_balanced(labels, k, np.random.default_rng(seed))
    _check_exact_cover(shards, len(labels))
    for cls in np.unique(labels):
        per_client = [int((labels[s] == cls).sum()) for s in shards]
        assert max(per_client) - min(per_client) <= 1


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12), st.integers(1, 12), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_by_speaker_keeps_speakers_whole(n_speakers, k, per_speaker, seed):
    speakers = [f"s{i:02d}" for i in range(n_speakers) for _ in range(per_speaker)]
    genders = ["female" if int(s[1:]) % 2 else "male" for s in speakers]
    if k > n_speakers:
        with pytest.raises(DataError, match=f"{k} clients"):
            by_speaker(speakers, k, np.random.default_rng(seed), genders)
        return
    shards = by_speaker(speakers, k, np.random.default_rng(seed), genders)
    _check_exact_cover(shards, len(speakers))
    owner = {}
    for c, s in enumerate(shards):
        assert len(s) > 0
        for i in s:
            assert owner.setdefault(speakers[i], c) == c
    # genders sorted into contiguous runs: at most one client mixes genders
    mixed = sum(len({genders[i] for i in s}) > 1 for s in shards)
    assert mixed <= 1


@settings(max_examples=40, deadline=None)
@given(st.floats(0.05, 100.0), st.integers(2, 6), st.integers(0, 2**32 - 1))
def test_dirichlet_covers_once(alpha, k, seed):
    labels = np.random.default_rng(seed).integers(0, 4, size=120)
    shards = dirichlet(labels, k, alpha, np.random.default_rng(seed))
    _check_exact_cover(shards, len(labels))
    assert min(len(s) for s in shards) >= 2


def test_dirichlet_small_alpha_skews_labels():
    labels = np.repeat(np.arange(4), 100)
    skew = dirichlet(labels, 4, 0.05, np.random.default_rng(0))
    flat = dirichlet(labels, 4, 1000.0, np.random.default_rng(0))

    def max_share(shards):
        return np.mean([np.bincount(labels[s], minlength=4).max() / len(s) for s in shards])

    assert max_share(skew) > 0.6 > 0.35 > max_share(flat)


def test_partition_is_deterministic_per_seed():
    labels = np.arange(40) % 4
    a = iid_balanced(labels, 4, np.random.default_rng(3))
    b = iid_balanced(labels, 4, np.random.default_rng(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
