"""prepare() on the tiny synthetic corpus: each role holds exactly its speakers, clients only train ones."""

from __future__ import annotations

import pytest

from privfl.config import ExperimentConfig
from privfl.data.dataset import prepare
from privfl.data.splits import ROLES
from tests.conftest import TINY


@pytest.fixture(scope="module")
def prepared():
    """8 speakers: 4 train, 1 val, 1 test, 2 aux; by-speaker partition over 2 clients."""
    return prepare(ExperimentConfig().override({**TINY, "data.partition": "by-speaker"}))


def test_every_role_holds_exactly_its_split_speakers(prepared):
    split = {role: set(getattr(prepared.split, role)) for role in ROLES}
    assert all(split.values()), split
    for role in ROLES:
        assert set(getattr(prepared, role).speakers) == split[role], role
    for role in ("val", "test", "aux"):
        assert split["train"].isdisjoint(getattr(prepared, role).speakers), role


def test_clients_train_on_the_training_speakers_only_each_utterance_once(prepared):
    train_speakers = set(prepared.split.train)
    client_speakers = [set(c.speakers) for c in prepared.clients]
    assert set().union(*client_speakers) == train_speakers
    held_out = set(prepared.val.speakers) | set(prepared.test.speakers) | set(prepared.aux.speakers)
    assert not held_out & set().union(*client_speakers)
    # by-speaker: no speaker is shared by two clients
    assert sum(len(s) for s in client_speakers) == len(train_speakers)
    expected = sorted(u.id for u in prepared.corpus.utterances if u.speaker in train_speakers)
    assert sorted(prepared.train.ids) == expected
    assert sum(c.num_samples for c in prepared.clients) == len(prepared.train) == len(expected)


def test_held_out_roles_hold_every_utterance_of_their_speakers(prepared):
    for role in ("val", "test", "aux"):
        speakers = set(getattr(prepared.split, role))
        expected = sorted(u.id for u in prepared.corpus.utterances if u.speaker in speakers)
        assert sorted(getattr(prepared, role).ids) == expected, role
