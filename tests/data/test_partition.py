import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfl.data.partition import by_speaker, dirichlet, iid_balanced, partition
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


def test_partition_dispatches_by_name_with_its_arguments():
    labels = np.repeat(np.arange(4), 10)
    speakers = np.repeat([f"s{i}" for i in range(8)], 5)
    genders = np.repeat(["female", "male"] * 4, 5)
    rng = lambda: np.random.default_rng(3)  # noqa: E731
    cases = {
        "iid": iid_balanced(labels, 4, rng()),
        "by-speaker": by_speaker(speakers, 4, rng(), genders),
        "dirichlet": dirichlet(labels, 4, 0.5, rng()),  # 0.5 is the documented default alpha
    }
    for name, expected in cases.items():
        got = partition(name, labels, speakers, genders, 4, rng())
        assert [s.tolist() for s in got] == [s.tolist() for s in expected], name
        assert all(s.dtype == np.int64 for s in got), name
    assert [s.tolist() for s in partition("dirichlet", labels, speakers, genders, 4, rng(), alpha=5.0)] == [
        s.tolist() for s in dirichlet(labels, 4, 5.0, rng())
    ]
    with pytest.raises(DataError, match="^unknown partition 'random'; use iid, by-speaker or dirichlet$"):
        partition("random", labels, speakers, genders, 4, rng())


def test_iid_deals_remainders_round_robin_across_classes():
    """Classes of 1, 2 and 1 samples over 3 clients: class 0 to client 0, class 1 to 1 and 2, class 2 to 0."""
    shards = [s.tolist() for s in iid_balanced(np.array([0, 1, 1, 2]), 3, np.random.default_rng(0))]
    assert shards[0] == [0, 3] and sorted(shards[1] + shards[2]) == [1, 2] and len(shards[1]) == 1
    every = iid_balanced(np.arange(5) % 5, 5, np.random.default_rng(0))  # as many clients as samples
    assert [s.tolist() for s in every] == [[0], [1], [2], [3], [4]]
    with pytest.raises(DataError, match="^6 clients but only 5 training samples; use fewer clients$"):
        iid_balanced(np.arange(5), 6, np.random.default_rng(0))


def test_by_speaker_refuses_genders_that_do_not_match_the_speakers():
    speakers = np.repeat(["a", "b", "c"], 2)
    with pytest.raises(ValueError, match="zip"):
        by_speaker(speakers, 2, np.random.default_rng(0), ["female"] * 5)
