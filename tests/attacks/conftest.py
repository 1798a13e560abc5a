"""Fixtures for the attack tests: small SpeechSets built in memory, and one small recorded run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privfl.config import ExperimentConfig
from privfl.data.dataset import SpeechSet
from privfl.experiment import train


def make_speech_set(
    speakers: dict[str, str], per_speaker: int, frames: int = 20, n_mels: int = 8, seed: int = 0
) -> SpeechSet:
    """Random features for speakers {id: gender}; labels cycle through the four emotions."""
    g = torch.Generator().manual_seed(seed)
    n = len(speakers) * per_speaker
    spk = tuple(s for s in speakers for _ in range(per_speaker))
    return SpeechSet(
        torch.randn(n, frames, n_mels, generator=g),
        torch.full((n,), frames, dtype=torch.int64),
        torch.arange(n, dtype=torch.int64) % 4,
        spk,
        tuple(speakers[s] for s in spk),
        tuple(f"{s}-{i}" for i, s in enumerate(spk)),
    )


@pytest.fixture()
def aux_set() -> SpeechSet:
    return make_speech_set({"f1": "female", "f2": "female", "m1": "male", "m2": "male"}, per_speaker=8)


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


RECORDED = {
    "data.speakers": 12,
    "data.utterances_per_emotion": 3,
    "data.aux_speakers": 4,
    "data.max_frames": 100,
    "data.partition": "by-speaker",
    "model.conv_channels": 8,
    "model.fc_hidden": 32,
    "train.clients": 4,
    "train.rounds": 2,
    "train.batch_size": 6,
    "train.record_updates": True,
}
"""12 synthetic speakers (4 train, 2 val, 2 test, 4 aux), 4 single-speaker clients, recorded updates."""


@pytest.fixture(scope="session")
def recorded_run(tmp_path_factory):
    """12 synthetic speakers (4 train, 2 val, 2 test, 4 aux), 4 single-speaker clients, 2 recorded rounds."""
    cfg = ExperimentConfig().override(RECORDED)
    out = tmp_path_factory.mktemp("attack-run") / "run"
    train(cfg, out)
    return out
