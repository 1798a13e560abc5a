"""prepare()'s wiring: each config setting reaches the corpus loader and the split it names."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from privfl.config import DEFAULT_AUX_SPEAKERS, DataConfig, ExperimentConfig
from privfl.data import corpora, splits
from privfl.data.dataset import SpeechSet, load_corpus_for, normalised, prepare, split_for
from privfl.data.records import Corpus
from privfl.errors import DataError
from tests.conftest import TINY
from tests.data.test_splits import IEMOCAP, make_corpus, toy

TOY = toy(5, 5)


def data(**fields) -> DataConfig:
    return dataclasses.replace(DataConfig(), **fields)


def test_auto_split_is_speaker_disjoint_for_other_corpora_and_the_paper_split_for_iemocap():
    assert split_for(TOY, data(), 3) == splits.speaker_split(
        TOY, n_val=2, n_test=2, n_aux=DEFAULT_AUX_SPEAKERS, seed=3
    )
    assert split_for(TOY, data(val_speakers=1, test_speakers=3, aux_speakers=0), 4) == splits.speaker_split(
        TOY, n_val=1, n_test=3, n_aux=0, seed=4
    )
    assert split_for(IEMOCAP, data(test_speaker="Ses05M"), 1) == splits.iemocap_paper_split(
        IEMOCAP, test_speaker="Ses05M", n_aux=0, seed=1
    )
    assert split_for(IEMOCAP, data(aux_speakers=2), 1) == splits.iemocap_paper_split(IEMOCAP, n_aux=2, seed=1)


def test_iemocap_folds_and_loso_hold_out_the_configured_session():
    folded = split_for(IEMOCAP, data(folds=5, fold=2, test_gender="male"), 0)
    assert folded == splits.iemocap_loso_split(IEMOCAP, test_session=2, test_gender="male", n_aux=0, seed=0)
    loso = split_for(IEMOCAP, data(split="loso", test_session=3, aux_speakers=1), 7)
    assert loso == splits.iemocap_loso_split(IEMOCAP, test_session=3, test_gender="female", n_aux=1, seed=7)


def test_speaker_folds_pick_the_configured_fold():
    got = split_for(TOY, data(folds=3, fold=2, val_speakers=1, aux_speakers=1), 5)
    assert got == splits.kfold_split(TOY, k=3, fold=2, n_val=1, n_aux=1, seed=5)
    assert got != split_for(TOY, data(folds=3, fold=3, val_speakers=1, aux_speakers=1), 5)


def test_session_splits_and_fold_zero_are_refused_naming_the_fix():
    with pytest.raises(
        DataError, match=r"^split 'loso' is IEMOCAP's session protocol; use --split speaker for toy$"
    ):
        split_for(TOY, data(split="loso"), 0)
    with pytest.raises(DataError, match=r"^split 'iemocap-paper' is IEMOCAP's session protocol"):
        split_for(TOY, data(split="iemocap-paper"), 0)
    with pytest.raises(
        DataError,
        match=r"^data\.folds=4 with data\.fold=0 names every fold; one split needs data\.fold in 1\.\.4 "
        r"\(privfl\.folds\.run_folds runs them all\)$",
    ):
        split_for(TOY, data(folds=4, fold=0), 0)


def _manifest_corpus(roles: dict[str, str]) -> Corpus:
    base = make_corpus({s: "female" if i % 2 else "male" for i, s in enumerate(roles)}, name="manifest")
    return Corpus("manifest", tuple(dataclasses.replace(u, split=roles[u.speaker]) for u in base.utterances))


def test_manifest_split_takes_the_corpus_roles():
    corpus = _manifest_corpus({"a": "train", "b": "train", "c": "val", "d": "test"})
    got = split_for(corpus, data(split="manifest", aux_speakers=0), 0)
    assert got == splits.manifest_split(corpus, n_aux=0, seed=0)
    assert got.val == ("c",) and got.test == ("d",)


@pytest.mark.parametrize(
    "dataset,fields,options",
    [
        ("iemocap", {"merge_excited": False}, {"merge_excited": False}),
        ("ravdess", {"calm_as_neutral": True}, {"calm_as_neutral": True}),
        (
            "manifest",
            {"label_map": ("ang=angry",), "emotions": ("angry", "sad")},
            {"label_map": ("ang=angry",), "emotions": ("angry", "sad")},
        ),
        ("crema-d", {"demographics": "/x/demo.csv"}, {"demographics": "/x/demo.csv"}),
        ("crema-d", {}, {}),
        ("emodb", {"calm_as_neutral": True, "merge_excited": False}, {}),
    ],
)
def test_each_corpus_gets_its_own_options_and_no_others(monkeypatch, tmp_path, dataset, fields, options):
    calls = []

    def fake_load(name, root, *, strict=False, **kwargs):
        calls.append((name, root, strict, kwargs))
        return TOY

    monkeypatch.setattr(corpora, "load_corpus", fake_load)
    assert load_corpus_for(data(dataset=dataset, data_dir=str(tmp_path), strict=True, **fields)) is TOY
    assert calls == [(dataset, tmp_path, True, options)]


def test_a_split_that_leaves_a_role_empty_is_refused_before_featurising(monkeypatch):
    """A guard for any splitter: every role but aux must hold utterances."""
    import privfl.data.dataset as dataset

    monkeypatch.setattr(
        dataset,
        "split_for",
        lambda corpus, cfg, seed: splits.Split(
            train=tuple(corpus.speakers()[1:]), val=(), test=(corpus.speakers()[0],)
        ),
    )
    with pytest.raises(
        DataError, match=r"^the val split of synthetic holds no utterances; check the split settings$"
    ):
        prepare(ExperimentConfig().override(TINY))


def _speech_set(n: int, *, value: float = 1.0) -> SpeechSet:
    return SpeechSet(
        torch.full((n, 3, 2), value),
        torch.full((n,), 3, dtype=torch.int64),
        torch.zeros(n, dtype=torch.int64),
        tuple(f"s{i}" for i in range(n)),
        ("female",) * n,
        tuple(f"u{i}" for i in range(n)),
    )


@pytest.mark.parametrize("mode", ["utterance", "none"])
def test_utterance_and_no_normalisation_leave_the_sets_as_they_are(mode):
    sets, copies = {"train": _speech_set(3)}, [_speech_set(3)]
    got_sets, got_copies = normalised(sets, copies, mode)
    assert got_sets is sets and got_copies is copies


def test_an_empty_role_is_passed_through_normalisation_untouched():
    empty = _speech_set(0)
    sets = {"train": _speech_set(4, value=2.0), "aux": empty}
    got, _ = normalised(sets, [], "global")
    assert got["aux"] is empty
    assert len(got["train"]) == 4


def test_speed_copies_join_each_clients_shard_after_its_own_utterances():
    prepared = prepare(ExperimentConfig().override({**TINY, "data.speed_perturb": (0.9,)}))
    train_rows = {tuple(x.flatten().tolist()) for x in prepared.train.x}
    assert sum(c.num_samples for c in prepared.clients) == 2 * len(prepared.train)  # copies: clients only
    for client in prepared.clients:
        n = client.num_samples // 2
        assert all(tuple(x.flatten().tolist()) in train_rows for x in client.x[:n])
        assert not any(tuple(x.flatten().tolist()) in train_rows for x in client.x[n:])
        assert torch.equal(client.y[:n], client.y[n:])  # each copy keeps its utterance's label


def test_a_central_run_trains_one_client_on_every_training_utterance():
    prepared = prepare(ExperimentConfig().override({**TINY, "train.mode": "central", "train.clients": 1}))
    assert len(prepared.clients) == 1
    (client,) = prepared.clients
    assert client.num_samples == len(prepared.train)
    assert sorted(client.speakers) == sorted(set(prepared.train.speakers))
    gender_of = dict(zip(prepared.train.speakers, prepared.train.genders, strict=True))
    assert client.genders == tuple(gender_of[s] for s in client.speakers)
    assert np.array_equal(np.sort(client.y.numpy()), np.sort(prepared.train.y.numpy()))


def test_take_and_concat_keep_every_field_of_each_row_together():
    a = _speech_set(3, value=1.0)
    b = replace_lengths(_speech_set(2, value=2.0), [5, 6])
    both = SpeechSet.concat([a.take(np.array([2, 0])), b])
    assert len(both) == 4
    assert both.lengths.tolist() == [3, 3, 5, 6]
    assert both.ids == ("u2", "u0", "u0", "u1") and both.speakers == ("s2", "s0", "s0", "s1")
    assert both.genders == ("female",) * 4 and both.y.tolist() == [0, 0, 0, 0]
    assert both.x[:2].eq(1.0).all() and both.x[2:].eq(2.0).all()


def replace_lengths(s: SpeechSet, lengths: list[int]) -> SpeechSet:
    return dataclasses.replace(s, lengths=torch.tensor(lengths, dtype=torch.int64))


def test_each_client_keeps_the_frame_count_of_each_of_its_utterances():
    prepared = prepare(ExperimentConfig().override(TINY))
    by_row = {
        tuple(x.flatten().tolist()): int(n)
        for x, n in zip(prepared.train.x, prepared.train.lengths, strict=True)
    }
    for client in prepared.clients:
        assert client.lengths.dtype == torch.int64 and client.lengths.shape == (client.num_samples,)
        assert [by_row[tuple(x.flatten().tolist())] for x in client.x] == client.lengths.tolist()


def test_aux_count_seed_and_test_gender_reach_the_manifest_and_session_splitters():
    roles = {s: "train" for s in "abcdefgh"} | {"i": "val", "j": "test"}
    corpus = _manifest_corpus(roles)
    manifest = [split_for(corpus, data(split="manifest", aux_speakers=2), seed) for seed in range(6)]
    assert manifest == [splits.manifest_split(corpus, n_aux=2, seed=seed) for seed in range(6)]
    assert all(len(s.aux) == 2 for s in manifest) and len({s.aux for s in manifest}) > 1
    folded = [split_for(IEMOCAP, data(folds=5, fold=2, aux_speakers=2), seed) for seed in range(6)]
    assert folded == [
        splits.iemocap_loso_split(IEMOCAP, test_session=2, n_aux=2, seed=seed) for seed in range(6)
    ]
    assert all(len(s.aux) == 2 for s in folded) and len({s.aux for s in folded}) > 1
    male = split_for(IEMOCAP, data(split="loso", test_session=3, test_gender="male"), 0)
    assert male.test == ("Ses03M",) and male.val == ("Ses03F",)
