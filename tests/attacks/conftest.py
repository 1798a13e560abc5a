"""Fixtures for the attack tests: small SpeechSets built in memory (no corpus needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privfl.data.dataset import SpeechSet


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
