"""Reading audio: soundfile decoding, stereo mix-down, resampling to the feature rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from privfl.errors import DataError

SAMPLE_RATE = 16_000


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a file to mono float32 samples at `sample_rate` Hz, shape [n_samples].

    Raises DataError for unreadable, empty or truncated files.
    """
    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, OSError) as exc:
        raise DataError(f"cannot decode audio file {path}: {exc}") from exc
    if wave.shape[0] == 0:
        raise DataError(f"audio file {path} holds no samples")
    mono = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    if sr != sample_rate:
        mono = resample(mono, sr, sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def resample(wave: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling with torchaudio (sinc interpolation)."""
    import torch
    import torchaudio.functional as AF

    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), orig_rate, new_rate)
    return out.numpy()
