"""prepare() end to end on a toy corpus with stand-in features: no audio, milliseconds a test.

The corpus loader and the feature extractor are replaced (each utterance's "features" are drawn
from a stream named by its id and speed factor), so these tests pin what prepare() itself does:
which utterances each role and client gets, which statistics normalise what, and what reaches
the loader, the extractor and the partitioner. tests/data/test_dataset.py runs the real ones.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest
import torch

import privfl.data.dataset as dataset
from privfl.config import ExperimentConfig
from privfl.data import partition as partition_module
from privfl.data import splits
from privfl.data.dataset import ClientData, PreparedData, SpeechSet, featurise, load_corpus_for, prepare
from privfl.data.features import FeatureConfig, FeatureSet, apply_band_stats, band_stats, normalise_groups
from privfl.data.records import Corpus
from privfl.errors import ConfigError
from tests.data.test_splits import make_corpus

FRAMES, MELS = 6, 3
BASE = {
    "data.val_speakers": 1,
    "data.test_speakers": 1,
    "data.aux_speakers": 2,
    "data.max_frames": FRAMES,
    "data.n_mels": MELS,
    "train.clients": 3,
}

# 12 speakers, 6 of each gender, 4 utterances each; ids are not in speaker order
CORPUS = make_corpus({f"{'fm'[i % 2]}{(7 * i) % 12:02d}": ("female", "male")[i % 2] for i in range(12)})


def fake_rows(uid: str, speed: float) -> tuple[np.ndarray, int]:
    """The stand-in features of one utterance: its own stream, mean and spread per speed factor."""
    rng = np.random.default_rng(zlib.crc32(f"{uid}@{speed}".encode()))
    n = 2 + zlib.crc32(uid.encode()) % (FRAMES - 1)  # 2..FRAMES real frames, the same at every speed
    x = np.zeros((FRAMES, MELS), dtype=np.float32)
    x[:n] = rng.normal(3.0 * speed, 1.0 + speed, size=(n, MELS))
    return x, n


class FakeExtract:
    """Records each call of privfl.data.features.extract and answers with fake_rows."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, utts, cfg, *, speed=1.0, cache_dir=None, progress=None, workers=None):
        self.calls.append({"ids": [u.id for u in utts], "cfg": cfg, "speed": speed, "cache_dir": cache_dir})
        if progress is not None:
            progress(len(utts), len(utts))
        rows = [fake_rows(u.id, speed) for u in utts]
        x = np.stack([r[0] for r in rows]) if rows else np.zeros((0, FRAMES, MELS), dtype=np.float32)
        lengths = np.array([r[1] for r in rows], dtype=np.int64)
        return FeatureSet(x, lengths, tuple(u.id for u in utts))


@pytest.fixture()
def fake(monkeypatch):
    """prepare() on CORPUS with stand-in features; returns the extractor's record."""
    extract = FakeExtract()
    extract.loads = []  # the progress callback each corpus load was given

    def load(cfg, progress=None):
        extract.loads.append(progress)
        return CORPUS

    monkeypatch.setattr(dataset, "extract", extract)
    monkeypatch.setattr(dataset, "load_corpus_for", load)
    return extract


def run(**overrides) -> PreparedData:
    return prepare(ExperimentConfig().override({**BASE, **overrides}))


def of(ids) -> np.ndarray:
    return np.stack([fake_rows(uid.split("@sp")[0], 1.0)[0] for uid in ids])


def test_each_role_holds_every_utterance_of_its_speakers_with_its_own_features(fake):
    prepared = run(**{"data.normalize": "none"})
    assert prepared.corpus is CORPUS and prepared.n_mels == MELS
    assert prepared.split == splits.speaker_split(CORPUS, n_val=1, n_test=1, n_aux=2, seed=0)
    for role in splits.ROLES:
        speakers = set(getattr(prepared.split, role))
        got = getattr(prepared, role)
        want = [u for u in CORPUS.utterances if u.speaker in speakers]
        assert sorted(got.ids) == sorted(u.id for u in want), role
        by_id = {u.id: u for u in want}
        for i, uid in enumerate(got.ids):  # each row keeps its own utterance's fields together
            u = by_id[uid]
            assert (got.speakers[i], got.genders[i], int(got.y[i])) == (u.speaker, u.gender, u.label)
            x, n = fake_rows(uid, 1.0)
            assert torch.equal(got.x[i], torch.from_numpy(x)) and int(got.lengths[i]) == n
        assert got.y.dtype == torch.int64 and got.lengths.dtype == torch.int64


def test_clients_hold_exactly_the_training_utterances_once_and_no_held_out_speaker(fake):
    for partition in ("iid", "by-speaker", "dirichlet"):
        prepared = run(**{"data.partition": partition, "data.normalize": "none"})
        train, clients = prepared.train, prepared.clients
        assert [c.client_id for c in clients] == [0, 1, 2], partition
        ids = [uid for c in clients for uid in client_ids(c, train)]
        assert sorted(ids) == sorted(train.ids), partition  # every training utterance exactly once
        held_out = set(prepared.split.val) | set(prepared.split.test) | set(prepared.split.aux)
        speakers = set().union(*(c.speakers for c in clients))
        assert speakers <= set(prepared.split.train) and not speakers & held_out, partition
        gender = CORPUS.gender_of()
        for c in clients:
            assert c.speakers == tuple(sorted(set(c.speakers))), partition
            assert c.genders == tuple(gender[s] for s in c.speakers), partition
            assert set(c.speakers) == {train.speakers[train.ids.index(uid)] for uid in client_ids(c, train)}
            assert c.num_samples == len(c.y) == len(c.lengths) == len(c.x)
        if partition == "by-speaker":
            assert sum(len(c.speakers) for c in clients) == len(prepared.split.train)


def client_ids(client: ClientData, train: SpeechSet) -> list[str]:
    """Which training utterance each of a client's rows is (its features and label must match)."""
    rows = {tuple(x.flatten().tolist()): i for i, x in enumerate(train.x)}
    out = []
    for x, n, y in zip(client.x, client.lengths, client.y, strict=True):
        i = rows[tuple(x.flatten().tolist())]
        assert int(train.lengths[i]) == int(n) and int(train.y[i]) == int(y)
        out.append(train.ids[i])
    return out


def test_speakers_the_split_leaves_out_are_neither_featurised_nor_used(fake, monkeypatch):
    left_out = CORPUS.speakers()[0]
    rest = CORPUS.speakers()[1:]
    split = splits.Split(train=tuple(rest[:8]), val=(rest[8],), test=(rest[9],), aux=(rest[10],))
    monkeypatch.setattr(dataset, "split_for", lambda corpus, cfg, seed: split)
    prepared = run()
    (call,) = fake.calls
    want = sorted(u.id for u in CORPUS.utterances if u.speaker != left_out)
    assert call["ids"] == want  # one extraction, in id order, of the utterances in any role
    for role in splits.ROLES:
        assert left_out not in getattr(prepared, role).speakers


def test_an_empty_aux_role_is_allowed(fake, monkeypatch):
    rest = CORPUS.speakers()
    split = splits.Split(train=tuple(rest[:10]), val=(rest[10],), test=(rest[11],))
    monkeypatch.setattr(dataset, "split_for", lambda corpus, cfg, seed: split)
    prepared = run(**{"data.normalize": "global"})
    assert len(prepared.aux) == 0 and prepared.aux.x.shape == (0, FRAMES, MELS)


def test_the_split_and_the_shards_follow_the_seed(fake):
    one, again, other = run(seed=1), run(seed=1), run(seed=2)
    assert one.split == splits.speaker_split(CORPUS, n_val=1, n_test=1, n_aux=2, seed=1) != other.split
    assert [c.y.tolist() for c in one.clients] == [c.y.tolist() for c in again.clients]
    # the shards are the partition's draw from the run's own data stream (results stay reproducible)
    labels = one.train.y.numpy()
    want = partition_module.iid_balanced(labels, 3, np.random.default_rng([1, 0xDA7A]))
    assert [c.y.tolist() for c in one.clients] == [labels[idx].tolist() for idx in want]


def test_the_partitioner_gets_the_configured_scheme_clients_and_alpha(fake, monkeypatch):
    calls = []

    def fake_partition(name, labels, speakers, genders, n_clients, rng, alpha=0.5):
        calls.append((name, labels.tolist(), speakers, genders, n_clients, alpha))
        return [np.arange(len(labels))[i::n_clients] for i in range(n_clients)]

    monkeypatch.setattr(dataset, "partition", fake_partition)
    prepared = run(**{"data.partition": "dirichlet", "data.dirichlet_alpha": 0.3, "train.clients": 4})
    train = prepared.train
    assert calls == [("dirichlet", train.y.tolist(), train.speakers, train.genders, 4, 0.3)]
    central = run(**{"train.mode": "central", "train.clients": 4})
    assert len(calls) == 2 and calls[1][4] == 1 and len(central.clients) == 1


def test_the_extractor_gets_the_configured_analysis_and_the_shared_cache(fake, monkeypatch, tmp_path):
    monkeypatch.setenv("PRIVFL_CACHE", str(tmp_path))
    run(**{"data.normalize": "speaker", "data.trim_db": 30.0})
    run(**{"data.normalize": "utterance"})
    raw, per_utterance = fake.calls
    assert raw["cfg"] == FeatureConfig(n_mels=MELS, max_frames=FRAMES, per_utterance_norm=False, trim_db=30.0)
    assert per_utterance["cfg"] == FeatureConfig(n_mels=MELS, max_frames=FRAMES, per_utterance_norm=True)
    assert raw["cache_dir"] == tmp_path / "features" and raw["speed"] == 1.0


def test_speed_copies_are_extracted_for_training_only_and_join_the_clients_after_the_originals(fake):
    stages = []
    cfg = ExperimentConfig().override(
        {**BASE, "data.speed_perturb": (0.9, 1.0, 1.1), "data.normalize": "none"}
    )
    report = lambda stage, done, total: stages.append((stage, done, total))  # noqa: E731
    prepared = prepare(cfg, progress=report)
    assert fake.loads == [report]  # the corpus loader reports too (synthesis of a new corpus)
    train_ids = sorted(u.id for u in CORPUS.utterances if u.speaker in prepared.split.train)
    full, slow, fast = fake.calls  # 1.0 is the original, not a copy
    assert (slow["speed"], fast["speed"]) == (0.9, 1.1) and full["speed"] == 1.0
    assert sorted(slow["ids"]) == sorted(fast["ids"]) == train_ids
    n_all = len(full["ids"])
    n_train = len(train_ids)
    assert stages == [
        ("features", n_all, n_all),
        ("features (speed 0.9)", n_train, n_train),
        ("features (speed 1.1)", n_train, n_train),
    ]
    assert sorted(prepared.train.ids) == train_ids  # the copies are the clients' only
    assert sum(c.num_samples for c in prepared.clients) == 3 * n_train
    rows = {
        tuple(x.flatten().tolist()): uid for uid, x in zip(prepared.train.ids, prepared.train.x, strict=True)
    }
    for c in prepared.clients:
        n = c.num_samples // 3
        originals = [rows[tuple(x.flatten().tolist())] for x in c.x[:n]]
        for k, speed in enumerate((0.9, 1.1), start=1):
            copies = c.x[k * n : (k + 1) * n]
            want = np.stack([fake_rows(uid, speed)[0] for uid in originals])
            np.testing.assert_array_equal(copies.numpy(), want)  # each copy follows its original's row
            assert torch.equal(c.y[k * n : (k + 1) * n], c.y[:n])
            assert torch.equal(c.lengths[k * n : (k + 1) * n], c.lengths[:n])


def test_global_normalisation_uses_the_original_training_frames_for_every_role_and_copy(fake):
    prepared = run(**{"data.normalize": "global", "data.speed_perturb": (1.2,)})
    unnormalised = run(**{"data.normalize": "none", "data.speed_perturb": (1.2,)})
    raw = {role: getattr(unnormalised, role) for role in splits.ROLES}
    stats = band_stats(raw["train"].x.numpy(), raw["train"].lengths.numpy())
    for role in splits.ROLES:
        got, before = getattr(prepared, role), raw[role]
        assert got.ids == before.ids
        want = apply_band_stats(before.x.numpy(), before.lengths.numpy(), stats)
        np.testing.assert_allclose(got.x.numpy(), want, rtol=1e-6, err_msg=role)
    # the speed copies (other means and spreads) are scaled with the originals' statistics too
    for c in prepared.clients:
        n = c.num_samples // 2
        originals = client_ids(ClientData(c.client_id, c.x[:n], c.lengths[:n], c.y[:n]), prepared.train)
        copies = np.stack([fake_rows(uid, 1.2)[0] for uid in originals])
        want = apply_band_stats(copies, c.lengths[n:].numpy(), stats)
        np.testing.assert_allclose(c.x[n:].numpy(), want, rtol=1e-6)


def test_speaker_normalisation_uses_each_speakers_own_frames_in_every_role_and_copy(fake):
    prepared = run(**{"data.normalize": "speaker", "data.speed_perturb": (0.8,)})
    raw = run(**{"data.normalize": "none", "data.speed_perturb": (0.8,)})
    for role in splits.ROLES:
        got, before = getattr(prepared, role), getattr(raw, role)
        want = normalise_groups(before.x.numpy(), before.lengths.numpy(), before.speakers)
        np.testing.assert_allclose(got.x.numpy(), want, rtol=1e-6, err_msg=role)
    train_copies = [fake_rows(uid, 0.8)[0] for uid in raw.train.ids]
    copies = normalise_groups(np.stack(train_copies), raw.train.lengths.numpy(), raw.train.speakers)
    by_row = {uid: copies[i] for i, uid in enumerate(raw.train.ids)}
    for c in prepared.clients:
        n = c.num_samples // 2
        originals = client_ids(ClientData(c.client_id, c.x[:n], c.lengths[:n], c.y[:n]), prepared.train)
        np.testing.assert_allclose(c.x[n:].numpy(), np.stack([by_row[uid] for uid in originals]), rtol=1e-6)


def test_featurise_labels_each_row_and_names_speed_copies_apart(fake):
    utts = list(CORPUS.utterances[:3])
    cfg = ExperimentConfig().override(BASE).data
    plain = featurise(utts, cfg)
    fast = featurise(utts, cfg, speed=1.1)
    assert plain.ids == tuple(u.id for u in utts)
    assert fast.ids == tuple(f"{u.id}@sp1.1" for u in utts)
    assert plain.y.tolist() == [u.label for u in utts] and plain.y.dtype == torch.int64
    assert plain.speakers == tuple(u.speaker for u in utts) and plain.genders == tuple(u.gender for u in utts)
    np.testing.assert_array_equal(plain.x.numpy(), of(plain.ids))
    assert [c["speed"] for c in fake.calls] == [1.0, 1.1]


def test_the_synthetic_corpus_is_built_from_the_data_settings(monkeypatch, tmp_path):
    asked, progress = [], []

    def ensure(cfg, progress=None):
        asked.append(cfg)
        if progress is not None:
            progress(1, 5)
        return tmp_path

    # by import path: the module load_corpus_for imports now, whichever object sys.modules holds
    monkeypatch.setattr("privfl.data.corpora.synthetic.ensure_synthetic", ensure)
    monkeypatch.setattr("privfl.data.corpora.synthetic.load_synthetic", lambda root: Corpus(str(root), ()))
    cfg = dataclasses.replace(ExperimentConfig().data, speakers=6, utterances_per_emotion=3, corpus_seed=9)
    got = load_corpus_for(cfg, lambda stage, done, total: progress.append((stage, done, total)))
    assert got.name == str(tmp_path)
    (synth,) = asked
    assert (synth.speakers, synth.utterances_per_emotion, synth.seed) == (6, 3, 9)
    assert progress == [("synthesise corpus", 1, 5)]
    load_corpus_for(cfg)  # without a progress callback the corpus is still built, silently
    assert len(asked) == 2 and progress == [("synthesise corpus", 1, 5)]
    with pytest.raises(ConfigError, match="synthetic.speakers = 1 is too few"):
        load_corpus_for(dataclasses.replace(cfg, speakers=1))  # refused before anything is generated
    assert len(asked) == 2


def test_no_utterances_or_rows_give_an_empty_set_of_the_documented_dtypes(fake):
    cfg = ExperimentConfig().override(BASE).data
    empty = featurise([], cfg)
    assert len(empty) == 0 and empty.y.dtype == torch.int64 and empty.lengths.dtype == torch.int64
    full = featurise(list(CORPUS.utterances[:4]), cfg)
    for rows in ([], np.array([], dtype=np.int64)):  # [] is how Python spells no rows
        none = full.take(rows)
        assert len(none) == 0 and none.x.shape == (0, FRAMES, MELS) and none.ids == ()
    picked = full.take([3, 1])
    assert picked.ids == (full.ids[3], full.ids[1]) and torch.equal(picked.x[0], full.x[3])
