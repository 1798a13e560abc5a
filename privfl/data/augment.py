"""Speed perturbation (Ko et al., 2015): resample so the audio plays `factor` times faster.

Both tempo and pitch change; the result has about n / factor samples at the same sample rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from privfl.errors import ConfigError

MIN_FACTOR = 0.5
MAX_FACTOR = 2.0
DEFAULT_FACTORS: tuple[float, ...] = (0.9, 1.0, 1.1)
"""The usual three-way perturbation (Kaldi recipes)."""

_MAX_RATE_TERM = 1000  # a resampling ratio p/q with larger terms needs a huge sinc kernel


def validate_speed_factor(factor: float, sample_rate: int = 16_000) -> tuple[int, int]:
    """Check `factor` and return the reduced resampling ratio (source, target) it implies at `sample_rate`.

    The factor is rounded to a whole number of Hz (factor * sample_rate); ConfigError if it is not
    a finite number in [MIN_FACTOR, MAX_FACTOR] or needs an impractically fine ratio.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ConfigError(f"sample_rate must be a positive whole number of Hz, got {sample_rate!r}")
    if isinstance(factor, bool) or not isinstance(factor, (int, float, np.floating, np.integer)):
        raise ConfigError(f"speed factor must be a number, got {factor!r}")
    factor = float(factor)
    if not math.isfinite(factor) or factor <= 0:
        raise ConfigError(f"speed factor must be a positive finite number, got {factor!r} (1.0 = unchanged)")
    if not MIN_FACTOR <= factor <= MAX_FACTOR:
        raise ConfigError(
            f"speed factor {factor} is outside [{MIN_FACTOR}, {MAX_FACTOR}]; "
            "speed perturbation uses factors near 1, e.g. 0.9, 1.0, 1.1"
        )
    # torchaudio.functional.speed computes int(factor * rate), which truncates 1.15 * 16000 to 18399
    # and turns a 23/20 ratio into a 18399/16000 one; round instead.
    source, target = round(factor * int(sample_rate)), int(sample_rate)
    gcd = math.gcd(source, target)
    source, target = source // gcd, target // gcd
    if max(source, target) > _MAX_RATE_TERM:
        raise ConfigError(
            f"speed factor {factor} at {sample_rate} Hz needs resampling by {source}/{target}, "
            "which is too fine to compute; use a factor with at most two decimals, e.g. 0.95"
        )
    return source, target


def validate_speed_factors(factors: Iterable[float], sample_rate: int = 16_000) -> tuple[float, ...]:
    """Check a list of speed factors (e.g. from the config) and return it as a tuple without repeats."""
    try:
        values = tuple(float(f) if not isinstance(f, bool) else f for f in factors)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"speed factors must be a list of numbers like [0.9, 1.0, 1.1], got {factors!r}"
        ) from exc
    if not values:
        raise ConfigError("speed factors must not be empty; use [1.0] for no perturbation")
    for factor in values:
        validate_speed_factor(factor, sample_rate)
    if len(set(values)) != len(values):
        raise ConfigError(f"speed factors {list(values)} repeat a value; list each factor once")
    return values


def speed_perturb(wave: np.ndarray, sample_rate: int, factor: float) -> np.ndarray:
    """Play `wave` (float [..., n_samples]) `factor` times faster: float32 [..., ceil(n / factor)] samples.

    factor 1.0 returns an unchanged float32 copy.
    """
    source, target = validate_speed_factor(factor, sample_rate)
    samples = np.asarray(wave, dtype=np.float32)
    if samples.ndim == 0:
        raise ConfigError("speed_perturb needs a waveform array of shape [..., n_samples], got a scalar")
    if source == target or samples.shape[-1] == 0:
        return samples.copy()
    import torch
    import torchaudio.functional as AF

    # Resampling from source to target Hz and playing back at the original rate is a speed change.
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(samples)), source, target)
    return out.numpy()
