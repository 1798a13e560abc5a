from __future__ import annotations

import math

import numpy as np
import pytest

from privfl.config import validate_speed_factor, validate_speed_factors
from privfl.data.augment import speed_perturb
from privfl.errors import ConfigError

SR = 16_000


def tone(freq: float, seconds: float = 1.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wave: np.ndarray, sr: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.fft.rfftfreq(wave.size, 1 / sr)[np.argmax(spectrum)])


def test_factor_one_is_identity() -> None:
    wave = np.random.default_rng(0).standard_normal(4000).astype(np.float32)
    out = speed_perturb(wave, SR, 1.0)
    assert out.dtype == np.float32 and np.array_equal(out, wave) and out is not wave


@pytest.mark.parametrize("factor", [0.5, 0.9, 0.95, 1.1, 1.15, 2.0])
def test_duration_scales_by_inverse_factor_and_pitch_by_factor(factor: float) -> None:
    wave = tone(400.0)
    out = speed_perturb(wave, SR, factor)
    assert out.dtype == np.float32
    assert abs(out.shape[-1] - math.ceil(wave.size / factor)) <= 1
    assert peak_hz(out) == pytest.approx(400.0 * factor, abs=3.0)


def test_keeps_leading_dims_and_accepts_other_rates() -> None:
    stereo = np.stack([tone(300.0, 0.5, 22_050), tone(500.0, 0.5, 22_050)])
    out = speed_perturb(stereo, 22_050, 1.1)
    assert out.shape[0] == 2 and abs(out.shape[1] - math.ceil(stereo.shape[1] / 1.1)) <= 1
    assert speed_perturb(np.zeros(0, np.float32), SR, 0.9).shape == (0,)


@pytest.mark.parametrize("factor", [0, -1.0, float("nan"), float("inf"), 0.3, 2.5, "fast", True, None])
def test_bad_factors(factor) -> None:
    with pytest.raises(ConfigError, match="speed factor"):
        speed_perturb(tone(100.0, 0.1), SR, factor)


def test_fine_ratio_and_bad_rate() -> None:
    assert validate_speed_factor(1.15, SR) == (23, 20)  # int(1.15 * 16000) would be 18399
    with pytest.raises(ConfigError, match="two decimals"):
        validate_speed_factor(0.93713, SR)
    with pytest.raises(ConfigError, match="sample_rate"):
        validate_speed_factor(1.1, 0)


def test_validate_factor_lists() -> None:
    assert validate_speed_factors([0.9, 1, 1.1]) == (0.9, 1.0, 1.1)
    with pytest.raises(ConfigError, match="empty"):
        validate_speed_factors([])
    with pytest.raises(ConfigError, match="repeat"):
        validate_speed_factors([1.0, 1.0])
    with pytest.raises(ConfigError, match="list of numbers"):
        validate_speed_factors(["x"])
