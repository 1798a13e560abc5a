"""Corpus -> speaker split -> features -> client shards: the tensors training runs on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from privfl.config import SESSION_SPLITS, DataConfig, ExperimentConfig
from privfl.data.features import FeatureConfig, apply_band_stats, band_stats, extract, normalise_groups
from privfl.data.partition import partition
from privfl.data.records import Corpus, Utterance
from privfl.data.splits import Split
from privfl.errors import DataError

Stage = Callable[[str, int, int], None]  # (stage name, done, total)


@dataclass(frozen=True)
class ClientData:
    """One client's local training set. x: [n, frames, n_mels]; lengths, y: [n]."""

    client_id: int
    x: torch.Tensor
    lengths: torch.Tensor
    y: torch.Tensor
    speakers: tuple[str, ...] = ()
    genders: tuple[str, ...] = ()  # one per speaker

    @property
    def num_samples(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class SpeechSet:
    """Features and labels of one split role. x: float32 [n, frames, n_mels]; lengths, y: int64 [n]."""

    x: torch.Tensor
    lengths: torch.Tensor
    y: torch.Tensor
    speakers: tuple[str, ...]
    genders: tuple[str, ...]
    ids: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, idx: np.ndarray) -> SpeechSet:
        idx = np.asarray(idx, dtype=np.int64)
        t = torch.from_numpy(idx)
        pick = lambda seq: tuple(seq[i] for i in idx)  # noqa: E731
        return SpeechSet(
            self.x[t], self.lengths[t], self.y[t], pick(self.speakers), pick(self.genders), pick(self.ids)
        )

    @staticmethod
    def concat(parts: list[SpeechSet]) -> SpeechSet:
        return SpeechSet(
            torch.cat([p.x for p in parts]),
            torch.cat([p.lengths for p in parts]),
            torch.cat([p.y for p in parts]),
            sum((p.speakers for p in parts), ()),
            sum((p.genders for p in parts), ()),
            sum((p.ids for p in parts), ()),
        )


@dataclass(frozen=True)
class PreparedData:
    """Everything a run needs: the corpus, its split, per-role features and the client shards."""

    corpus: Corpus
    split: Split
    train: SpeechSet
    val: SpeechSet
    test: SpeechSet
    aux: SpeechSet
    clients: list[ClientData]
    n_mels: int


def load_corpus_for(cfg: DataConfig, progress: Stage | None = None) -> Corpus:
    """The configured corpus: the cached built-in synthetic one, or a real one read from data_dir."""
    if cfg.dataset == "synthetic":
        from privfl.data.corpora.synthetic import ensure_synthetic, load_synthetic
        from privfl.data.synthesis import SynthConfig

        synth = SynthConfig(
            speakers=cfg.speakers, utterances_per_emotion=cfg.utterances_per_emotion, seed=cfg.corpus_seed
        )
        synth.validate()
        cb = (lambda done, total: progress("synthesise corpus", done, total)) if progress else None
        return load_synthetic(ensure_synthetic(synth, progress=cb))
    from privfl.data.corpora import load_corpus

    options: dict = {}
    if cfg.dataset == "iemocap":
        options["merge_excited"] = cfg.merge_excited
    if cfg.dataset == "ravdess":
        options["calm_as_neutral"] = cfg.calm_as_neutral
    if cfg.dataset == "manifest":
        options.update(label_map=cfg.label_map, emotions=cfg.emotions)
    if cfg.dataset == "crema-d" and cfg.demographics:
        options["demographics"] = cfg.demographics
    return load_corpus(cfg.dataset, Path(cfg.data_dir), strict=cfg.strict, **options)


def split_for(corpus: Corpus, cfg: DataConfig, seed: int) -> Split:
    """Speaker roles (train/val/test/aux) under the configured protocol."""
    from privfl.data import splits

    protocol = cfg.split
    if protocol == "auto":
        iemocap_default = "loso" if cfg.folds else "iemocap-paper"
        protocol = iemocap_default if corpus.name == "iemocap" else "speaker"
    if protocol in SESSION_SPLITS and corpus.name != "iemocap":
        raise DataError(
            f"split {protocol!r} is IEMOCAP's session protocol; use --split speaker for {corpus.name}"
        )
    n_aux = cfg.aux_count(protocol)
    if cfg.folds and cfg.fold == 0:
        raise DataError(
            f"data.folds={cfg.folds} with data.fold=0 names every fold; one split needs data.fold "
            f"in 1..{cfg.folds} (privfl.folds.run_folds runs them all)"
        )
    if protocol == "manifest":
        return splits.manifest_split(corpus, n_aux=n_aux, seed=seed)
    if cfg.folds and protocol == "loso":  # IEMOCAP leave-one-session-out: fold i tests session i
        return splits.iemocap_loso_split(
            corpus, test_session=cfg.fold, test_gender=cfg.test_gender, n_aux=n_aux, seed=seed
        )
    if cfg.folds:
        return splits.kfold_split(
            corpus, k=cfg.folds, fold=cfg.fold, n_val=cfg.val_speakers, n_aux=n_aux, seed=seed
        )
    if protocol == "iemocap-paper":
        return splits.iemocap_paper_split(corpus, test_speaker=cfg.test_speaker, n_aux=n_aux, seed=seed)
    if protocol == "loso":
        return splits.iemocap_loso_split(
            corpus, test_session=cfg.test_session, test_gender=cfg.test_gender, n_aux=n_aux, seed=seed
        )
    return splits.speaker_split(
        corpus, n_val=cfg.val_speakers, n_test=cfg.test_speakers, n_aux=n_aux, seed=seed
    )


def featurise(
    utts: list[Utterance], cfg: DataConfig, speed: float = 1.0, progress: Stage | None = None, stage: str = ""
) -> SpeechSet:
    """Log-Mel features (cached) plus labels for a list of utterances."""
    from privfl.data.corpora.synthetic import cache_root

    fcfg = FeatureConfig(
        n_mels=cfg.n_mels,
        max_frames=cfg.max_frames,
        per_utterance_norm=cfg.normalize == "utterance",
        trim_db=cfg.trim_db,
    )
    cb = (lambda done, total: progress(stage, done, total)) if progress else None
    feats = extract(utts, fcfg, speed=speed, cache_dir=cache_root() / "features", progress=cb)
    suffix = "" if speed == 1.0 else f"@sp{speed:g}"
    return SpeechSet(
        torch.from_numpy(feats.x),
        torch.from_numpy(feats.lengths),
        torch.tensor([u.label for u in utts], dtype=torch.int64),
        tuple(u.speaker for u in utts),
        tuple(u.gender for u in utts),
        tuple(u.id + suffix for u in utts),
    )


def normalised(
    sets: dict[str, SpeechSet], copies: list[SpeechSet], mode: str
) -> tuple[dict[str, SpeechSet], list[SpeechSet]]:
    """Apply data.normalize to raw log-Mel sets ("utterance" was already done at extraction).

    speaker: each speaker's bands over that speaker's own utterances (a client needs nothing but
    its own data; a test speaker is normalised over its own test utterances, unlabelled).
    global: statistics of the training set's original (unperturbed) frames, applied to every role.
    """
    if mode in ("utterance", "none"):
        return sets, copies

    def remake(s: SpeechSet, x: np.ndarray) -> SpeechSet:
        return replace(s, x=torch.from_numpy(x))

    if mode == "speaker":
        norm = lambda s: remake(s, normalise_groups(s.x.numpy(), s.lengths.numpy(), s.speakers))  # noqa: E731
    else:
        train = sets["train"]
        stats = band_stats(train.x.numpy(), train.lengths.numpy())
        norm = lambda s: remake(s, apply_band_stats(s.x.numpy(), s.lengths.numpy(), stats))  # noqa: E731
    return {role: norm(s) if len(s) else s for role, s in sets.items()}, [norm(c) for c in copies]


def prepare(cfg: ExperimentConfig, progress: Stage | None = None) -> PreparedData:
    """Load, split, featurise and partition as the config says; deterministic in cfg.seed."""
    d = cfg.data
    corpus = load_corpus_for(d, progress)
    split = split_for(corpus, d, cfg.seed)
    by_role: dict[str, list[Utterance]] = {"train": [], "val": [], "test": [], "aux": []}
    roles = split.roles()
    for u in corpus.utterances:
        role = roles.get(u.speaker)
        if role in by_role:
            by_role[role].append(u)
    for role in ("train", "val", "test"):
        if not by_role[role]:
            raise DataError(
                f"the {role} split of {corpus.name} holds no utterances; check the split settings"
            )
    # One feature file for the corpus's utterances in any role, so every fold and seed shares it.
    used = [u for role in ("train", "val", "test", "aux") for u in by_role[role]]
    every = featurise(sorted(used, key=lambda u: u.id), d, progress=progress, stage="features")
    row = {uid: i for i, uid in enumerate(every.ids)}
    sets = {
        role: every.take(np.array([row[u.id] for u in utts], dtype=np.int64))
        for role, utts in by_role.items()
    }
    copies = [
        featurise(by_role["train"], d, f, progress, f"features (speed {f:g})")
        for f in d.speed_perturb
        if f != 1.0
    ]
    sets, copies = normalised(sets, copies, d.normalize)
    train = sets["train"]

    n_clients = 1 if cfg.train.mode == "central" else cfg.train.clients
    rng = np.random.default_rng([cfg.seed, 0xDA7A])
    shards = partition(
        d.partition, train.y.numpy(), train.speakers, train.genders, n_clients, rng, alpha=d.dirichlet_alpha
    )
    clients = []
    for cid, idx in enumerate(shards):
        part = SpeechSet.concat([train.take(idx)] + [c.take(idx) for c in copies])
        speakers = tuple(sorted(set(part.speakers)))
        gender_of = dict(zip(part.speakers, part.genders, strict=True))
        clients.append(
            ClientData(cid, part.x, part.lengths, part.y, speakers, tuple(gender_of[s] for s in speakers))
        )
    return PreparedData(corpus, split, train, sets["val"], sets["test"], sets["aux"], clients, d.n_mels)
