"""Speed perturbation (Ko et al., 2015): resample so the audio plays `factor` times faster.

Both tempo and pitch change; the result has about n / factor samples at the same sample rate.
"""

from __future__ import annotations

import numpy as np

from privfl.config import validate_speed_factor
from privfl.errors import ConfigError

DEFAULT_FACTORS: tuple[float, ...] = (0.9, 1.0, 1.1)
"""The usual three-way perturbation (Kaldi recipes)."""


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
