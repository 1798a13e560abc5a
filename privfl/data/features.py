"""Waveform -> 40-dim log-Mel filterbank frames (the paper's MFB features), with a disk cache.

25 ms Hamming window, 10 ms hop at 16 kHz (n_fft = win = 400 samples, hop = 160), natural log
of the Mel power plus a floor, then (by default) per-utterance mean/variance normalisation over
that utterance's own frames, so no statistic crosses a speaker or client boundary. With
`per_utterance_norm=False` the raw log-Mel frames are kept, for normalisation over a speaker's
utterances or the training set (`normalise_groups`). `trim_db > 0` first drops the leading and
trailing frames whose Mel power is more than trim_db below the utterance's loudest frame (as
librosa.effects.trim does on the waveform), so silence neither fills the fixed crop nor enters
the normalisation statistics.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torchaudio

from privfl import npz
from privfl.data.audio import SAMPLE_RATE, read_audio
from privfl.data.records import Utterance
from privfl.errors import DataError
from privfl.parallel import process_map, torch_threads

FEATURE_VERSION = "1"
LOG_FLOOR = 1e-6


@dataclass(frozen=True)
class FeatureConfig:
    """Log-Mel analysis parameters; times in milliseconds."""

    sample_rate: int = SAMPLE_RATE
    n_mels: int = 40
    win_ms: float = 25.0
    hop_ms: float = 10.0
    max_frames: int = 300
    per_utterance_norm: bool = True  # False: raw log-Mel, normalised later over a group of utterances
    trim_db: float = 0.0  # > 0: trim leading/trailing frames this far (dB) below the loudest; 0: keep all

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.win_ms / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))


class LogMel(torch.nn.Module):
    """[n_samples] float waveform -> [frames, n_mels] normalised log-Mel features."""

    def __init__(self, cfg: FeatureConfig = FeatureConfig()) -> None:
        super().__init__()
        self.per_utterance_norm = cfg.per_utterance_norm
        self.trim_db = cfg.trim_db
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.win_length,
            win_length=cfg.win_length,
            hop_length=cfg.hop_length,
            window_fn=torch.hamming_window,
            n_mels=cfg.n_mels,
            power=2.0,
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        logmel = torch.log(self.mel(wave) + LOG_FLOOR).transpose(-1, -2)  # [frames, n_mels]
        if self.trim_db > 0:
            logmel = trim_silence(logmel, self.trim_db)
        return normalise(logmel) if self.per_utterance_norm else logmel


def trim_silence(logmel: torch.Tensor, top_db: float) -> torch.Tensor:
    """[frames, n_mels] log-Mel -> the span from the first to the last frame whose total Mel power
    is within top_db (dB) of the loudest frame's; the quiet frames inside the span stay."""
    power_db = torch.logsumexp(logmel, dim=-1) * (10.0 / math.log(10.0))  # [frames]
    if power_db.numel() == 0:
        return logmel
    loud = torch.nonzero(power_db >= power_db.max() - top_db).flatten()
    return logmel[int(loud[0]) : int(loud[-1]) + 1]


def normalise(frames: torch.Tensor) -> torch.Tensor:
    """Per-utterance, per-Mel-band mean/variance normalisation of [frames, n_mels]."""
    mean = frames.mean(dim=-2, keepdim=True)
    std = frames.std(dim=-2, keepdim=True, unbiased=False)
    return (frames - mean) / (std + 1e-5)


def band_stats(x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per Mel band [n_mels] over the real frames (`lengths`) of x [n, frames, n_mels]."""
    frames = x[np.arange(x.shape[1])[None, :] < lengths[:, None]]  # [real frames, n_mels]
    return frames.mean(axis=0), frames.std(axis=0)


def apply_band_stats(x: np.ndarray, lengths: np.ndarray, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(x - mean) / std per band on real frames; padding frames stay zero. float32 [n, frames, n_mels]."""
    mean, std = stats
    real = (np.arange(x.shape[1])[None, :] < lengths[:, None])[..., None]
    return np.where(real, (x - mean) / (std + 1e-5), 0.0).astype(np.float32)


def normalise_groups(x: np.ndarray, lengths: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    """Per-group, per-band mean/variance normalisation of x [n, frames, n_mels], e.g. one group per
    speaker: each group's statistics come from its own utterances only."""
    out = np.zeros(x.shape, dtype=np.float32)
    keys = np.asarray(groups, dtype=object)
    for g in dict.fromkeys(groups):
        rows = np.flatnonzero(keys == g)
        out[rows] = apply_band_stats(x[rows], lengths[rows], band_stats(x[rows], lengths[rows]))
    return out


def pad_or_crop(frames: np.ndarray, max_frames: int) -> tuple[np.ndarray, int]:
    """Zero-pad or centre-crop [frames, n_mels] to max_frames; returns (array, true length)."""
    n = frames.shape[0]
    if n >= max_frames:
        start = (n - max_frames) // 2
        return frames[start : start + max_frames], max_frames
    out = np.zeros((max_frames, frames.shape[1]), dtype=np.float32)
    out[:n] = frames
    return out, n


@dataclass(frozen=True)
class FeatureSet:
    """Fixed-size features of a list of utterances.

    x: float32 [n, max_frames, n_mels]; lengths: int64 [n] (true frames); ids: utterance ids.
    """

    x: np.ndarray
    lengths: np.ndarray
    ids: tuple[str, ...]


def extract(
    utterances: Sequence[Utterance],
    cfg: FeatureConfig,
    *,
    speed: float = 1.0,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> FeatureSet:
    """Features for every utterance (in order), read from the cache when present.

    speed != 1.0 applies speed perturbation first (training-set augmentation). Uncached
    extraction runs on `workers` processes (default: every core); the result does not depend
    on the number of workers.
    """
    key = cache_key(utterances, cfg, speed)
    path = cache_dir / f"features-{key}.npz" if cache_dir is not None else None
    if path is not None and path.exists():
        return FeatureSet(*read_cached(path, len(utterances), cfg), tuple(u.id for u in utterances))
    jobs = [(u.path, speed, cfg) for u in utterances]
    with torch_threads(1):  # small per-utterance ops: threads cost more than they give
        done = process_map(
            utterance_features,
            jobs,
            workers=workers,
            progress=progress,
            preload=[__name__],
            what="feature extraction",
        )
    x = np.zeros((len(utterances), cfg.max_frames, cfg.n_mels), dtype=np.float32)
    lengths = np.zeros(len(utterances), dtype=np.int64)
    for i, (frames, n) in enumerate(done):
        x[i], lengths[i] = frames, n
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, x=x, lengths=lengths)
        tmp.replace(path)
    return FeatureSet(x, lengths, tuple(u.id for u in utterances))


def read_cached(path: Path, n: int, cfg: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """(x [n, max_frames, n_mels] float32, lengths [n] int64) of a feature cache file, read without
    pickle; DataError naming the file if it is not what `extract` writes."""
    spec: npz.Spec = {"x": ("float32", (n, cfg.max_frames, cfg.n_mels)), "lengths": ("int64", (n,))}
    fix = f"delete {path} and run again to extract the features anew"
    arrays, _ = npz.read_npz(path, spec, DataError, fix)
    lengths = arrays["lengths"]
    if n and (lengths.min() < 0 or lengths.max() > cfg.max_frames):
        raise DataError(f"{path}: frame counts must lie in 0..{cfg.max_frames}; {fix}")
    return arrays["x"], lengths


def utterance_features(job: tuple[str, float, FeatureConfig]) -> tuple[np.ndarray, int]:
    """(path, speed, config) -> ([max_frames, n_mels] padded/cropped features, true frame count)."""
    path, speed, cfg = job
    wave = read_audio(path, cfg.sample_rate)
    if speed != 1.0:
        from privfl.data.augment import speed_perturb

        wave = speed_perturb(wave, cfg.sample_rate, speed)
    with torch.inference_mode():
        frames = _logmel(cfg)(torch.from_numpy(wave)).numpy()
    return pad_or_crop(frames, cfg.max_frames)


@lru_cache(maxsize=4)
def _logmel(cfg: FeatureConfig) -> LogMel:
    return LogMel(cfg)


def cache_key(utterances: Sequence[Utterance], cfg: FeatureConfig, speed: float) -> str:
    """Hash of the corpus listing (paths, sizes, mtimes) and the feature config."""
    h = hashlib.sha256()
    params = asdict(cfg)
    # the defaults keep the keys of caches written before these fields
    extra = [] if params.pop("per_utterance_norm") else ["raw"]
    trim_db = params.pop("trim_db")
    if trim_db:
        extra.append(f"trim{trim_db:g}")
    h.update(json.dumps([FEATURE_VERSION, params, speed, *extra]).encode())
    for u in utterances:
        st = os.stat(u.path)
        h.update(f"{u.id}\0{u.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]
