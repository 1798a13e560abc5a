"""Shared fixtures: a private cache per test session and a tiny synthetic configuration."""

from __future__ import annotations

import os

import pytest

from privfl.config import ExperimentConfig


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Keep corpora and feature caches of the test run out of the user's ~/.cache/privfl.

    PRIVFL_TEST_CACHE names a cache shared by many test sessions instead (benchmarks/mutation.py:
    one session per mutant would otherwise synthesise the tiny corpus and its features again)."""
    mp = pytest.MonkeyPatch()
    shared = os.environ.get("PRIVFL_TEST_CACHE")
    mp.setenv("PRIVFL_CACHE", shared or str(tmp_path_factory.mktemp("privfl-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session", autouse=True)
def _one_share_of_the_cores():
    """Under pytest-xdist (`-n auto`), each worker's torch gets its share of the cores, not all of
    them: two workers with two threads each on two cores would oversubscribe every matrix product.
    OMP_NUM_THREADS passes the same count to every process a test starts (a Flower deployment's
    ClientApps, the CLI): float sums depend on the thread count, and the deployment tests require
    their runs bit-identical to the built-in engine's in this process."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        yield
        return
    import torch

    from privfl.parallel import default_workers

    share = max(1, default_workers() // workers)
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", str(share))
    before = torch.get_num_threads()
    torch.set_num_threads(share)
    yield
    torch.set_num_threads(before)
    mp.undo()


TINY = {
    "data.speakers": 8,
    "data.utterances_per_emotion": 2,
    "data.val_speakers": 1,
    "data.test_speakers": 1,
    "data.aux_speakers": 2,
    "data.max_frames": 200,
    "train.clients": 2,
    "train.rounds": 2,
    "train.batch_size": 4,
}
"""The tiny synthetic experiment every end-to-end test starts from (dotted config overrides)."""


@pytest.fixture()
def tiny_config() -> ExperimentConfig:
    """8 synthetic speakers x 2 utterances per emotion: 4 train, 1 val, 1 test, 2 aux speakers."""
    return ExperimentConfig().override(TINY)
