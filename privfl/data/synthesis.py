"""The built-in emotional speech corpus: a seeded source-filter synthesiser writing 16 kHz WAV files.

Each speaker has a gender, a base F0, a vocal-tract length (formant scale), a speaking rate, a voice
quality and a loudness of their own. An utterance is a string of syllables (consonant-like noise or
voiced onsets, vowels with F1-F4 targets, pauses) voiced by a Rosenberg glottal pulse that follows an
F0 contour with declination, pitch accents, jitter and shimmer, filtered by a cascade of formant
resonators and mixed with coloured background noise at a random SNR. Emotions are prosodic and
voice-quality shifts taken from the acoustics literature (see `EMOTION_PROFILES` and
docs/synthetic-corpus.md), scaled by a random per-utterance strength so that classes overlap.

Randomness: speaker traits come from `default_rng([seed, speaker_index])`, each utterance from
`default_rng([seed, speaker_index, utterance_index])`; no global RNG, so a config gives the same
bytes whatever the worker count.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import ndimage, signal, special

from privfl.data.records import EMOTIONS
from privfl.errors import ConfigError, DataError
from privfl.parallel import process_map

GENERATOR_VERSION = "privfl-synth-7"
"""Bump whenever the synthesiser's output for a given config changes (it keys the corpus cache)."""

METADATA_COLUMNS: tuple[str, ...] = ("id", "path", "speaker", "gender", "emotion")

_BLOCK_S = 0.005
"""Control-rate step (seconds) for formant and F0 tracks."""

# Hillenbrand et al. (1995), adult male averages, Hz: F1, F2, F3; F4 after Peterson & Barney (1952);
# F5 is the fixed higher-pole correction of a cascade synthesiser (Klatt 1980).
_VOWELS = np.array(
    [
        [342, 2322, 3000, 3650, 4500],  # i  heed
        [427, 2034, 2684, 3600, 4500],  # I  hid
        [476, 2089, 2691, 3600, 4500],  # e  hayed
        [580, 1799, 2605, 3550, 4500],  # E  head
        [588, 1952, 2601, 3550, 4500],  # ae had
        [768, 1333, 2522, 3500, 4500],  # a  hod
        [652, 997, 2538, 3450, 4500],  # c  hawed
        [497, 910, 2459, 3400, 4500],  # o  hoed
        [469, 1122, 2434, 3400, 4500],  # U  hood
        [378, 997, 2343, 3350, 4500],  # u  who'd
        [623, 1200, 2550, 3500, 4500],  # ^  hud
        [474, 1379, 1710, 3300, 4500],  # 3r heard
    ],
    dtype=np.float64,
)
_NASAL = np.array([260.0, 1250.0, 2300.0, 3300.0, 4500.0])
"""Formant targets of a voiced nasal/liquid onset (male scale)."""

# Hawks & Miller (1995): typical formant bandwidths, Hz.
_BANDWIDTHS = np.array([70.0, 95.0, 140.0, 220.0, 300.0])

# Fricative noise bands (Hz) at which /s/-, /sh/- and /f/-like consonants put their energy.
_FRICATIVE_BANDS: tuple[tuple[float, float], ...] = ((3800.0, 7200.0), (2000.0, 4800.0), (900.0, 7200.0))
_FRICATIVE_LEVELS = np.array([0.38, 0.53, 0.09])
"""Fricative noise amplitudes re a vowel RMS of 1: /s/ about -12 dB, /sh/ -10 dB, /f/ -22 dB."""

_PAUSE, _VOWEL, _VOICED, _FRICATIVE, _CLOSURE, _BURST = range(6)


@dataclass(frozen=True)
class SynthConfig:
    """What to synthesise: `speakers` (half female), utterances per emotion and speaker, seed, rate (Hz).

    `emotion_scale` multiplies every emotion effect (1.0: the calibrated default; 0: no emotion);
    background noise is mixed at an SNR drawn uniformly from [min_snr_db, max_snr_db] per utterance.
    """

    speakers: int = 24
    utterances_per_emotion: int = 10
    seed: int = 0
    sample_rate: int = 16000
    emotion_scale: float = 1.0
    min_snr_db: float = 20.0
    max_snr_db: float = 40.0

    def validate(self) -> None:
        """Raise ConfigError naming the bad value and the fix."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kinds, noun = ((int,), "an integer") if f.type == "int" else ((int, float), "a number")
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise ConfigError(
                    f"synthetic.{f.name} = {value!r} must be {noun}, e.g. the default {f.default!r}"
                )
        if self.speakers < 2:
            raise ConfigError(
                f"synthetic.speakers = {self.speakers} is too few: need at least 2 (one female, one male); "
                "use the default 24"
            )
        if self.utterances_per_emotion < 1:
            raise ConfigError(
                f"synthetic.utterances_per_emotion = {self.utterances_per_emotion} must be >= 1; "
                "use the default 10"
            )
        if self.seed < 0:
            raise ConfigError(f"synthetic.seed = {self.seed} must be a non-negative integer, e.g. 0")
        if not 16000 <= self.sample_rate <= 48000:
            raise ConfigError(
                f"synthetic.sample_rate = {self.sample_rate} Hz is outside 16000..48000 (the fricatives need "
                "energy up to 7.2 kHz); use 16000"
            )
        if not 0.0 <= self.emotion_scale <= 3.0:
            raise ConfigError(
                f"synthetic.emotion_scale = {self.emotion_scale} is outside 0..3; "
                "1.0 is the calibrated default"
            )
        if not -10.0 <= self.min_snr_db <= self.max_snr_db <= 80.0:
            raise ConfigError(
                f"synthetic SNR range [{self.min_snr_db}, {self.max_snr_db}] dB must satisfy "
                "-10 <= min_snr_db <= max_snr_db <= 80; the default is [20, 40]"
            )

    @property
    def utterances_per_speaker(self) -> int:
        """Utterances each speaker records: one block of `utterances_per_emotion` per emotion."""
        return self.utterances_per_emotion * len(EMOTIONS)


# ---------------------------------------------------------------------------------------------
# Speakers


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker's fixed traits (drawn once per seed and index)."""

    index: int
    id: str
    gender: str
    f0_hz: float
    """Base F0 of neutral speech."""
    formant_scale: float
    """Formant frequencies relative to the adult-male vowel table (shorter vocal tract -> larger)."""
    syllable_rate: float
    """Neutral speaking rate, syllables per second."""
    open_quotient: float
    """Fraction of each glottal period the glottis is open (lax/breathy voices are higher)."""
    breathiness: float
    """Aspiration noise level relative to the glottal pulse, 0..1."""
    tilt_db: float
    """Extra spectral tilt of the voice source: attenuation at 3 kHz re DC, dB (Klatt & Klatt 1990 TL)."""
    loudness_db: float
    f0_range_st: float
    """Typical pitch-accent height, semitones."""
    jitter: float
    """Cycle-to-cycle F0 perturbation, fraction of the period (standard deviation)."""
    shimmer_db: float
    """Cycle-to-cycle amplitude perturbation, dB (standard deviation)."""
    expressiveness: float
    """How strongly this speaker acts emotions (multiplies each utterance's emotion strength)."""
    channel_tilt: float
    """One-pole coefficient of the speaker's microphone/room colouring (may be negative: brighter)."""
    noise_colour: float
    """One-pole coefficient colouring this speaker's background noise (0 white .. 0.98 brown)."""


def speaker_id(index: int, count: int) -> str:
    """Speaker id spk00..spk23: the index zero-padded to the width the speaker count needs."""
    return f"spk{index:0{max(2, len(str(count - 1)))}d}"


def speaker_gender(index: int) -> str:
    """Genders alternate from female: half the speakers are female (the extra one for odd counts)."""
    return "female" if index % 2 == 0 else "male"


def _truncated_normal(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    """One draw from N(mean, sd) truncated to [lo, hi] (inverse CDF, so no pile-up at the bounds)."""
    a, b = special.ndtr((lo - mean) / sd), special.ndtr((hi - mean) / sd)
    return float(mean + sd * special.ndtri(a + (b - a) * rng.random()))


def draw_speaker(seed: int, index: int, count: int) -> Speaker:
    """The traits of speaker `index`, from `default_rng([seed, index])`."""
    rng = np.random.default_rng([seed, index])
    gender = speaker_gender(index)
    female = gender == "female"
    # Base F0 (Titze 1994; Hillenbrand et al. 1995): adult male ~85-155 Hz, female ~165-255 Hz.
    f0 = (
        _truncated_normal(rng, 210.0, 22.0, 165.0, 255.0)
        if female
        else _truncated_normal(rng, 118.0, 16.0, 85.0, 155.0)
    )
    # Female formants ~15-20 % above male ones (Peterson & Barney 1952, Hillenbrand et al. 1995).
    vtl = _truncated_normal(rng, 1.0, 0.035, 0.92, 1.08)
    formant_scale = vtl * (float(rng.uniform(1.15, 1.20)) if female else 1.0)
    return Speaker(
        index=index,
        id=speaker_id(index, count),
        gender=gender,
        f0_hz=f0,
        formant_scale=formant_scale,
        syllable_rate=_truncated_normal(rng, 4.6, 0.45, 3.6, 5.8),
        # Female voices are on average breathier with a larger open quotient (Klatt & Klatt 1990).
        open_quotient=float(rng.uniform(0.58, 0.70) if female else rng.uniform(0.50, 0.62)),
        breathiness=float(rng.uniform(0.10, 0.30) if female else rng.uniform(0.04, 0.18)),
        tilt_db=float(rng.uniform(2.0, 8.0)),
        loudness_db=float(rng.normal(0.0, 2.0)),
        f0_range_st=float(rng.uniform(1.8, 3.6)),
        jitter=float(rng.uniform(0.004, 0.010)),
        shimmer_db=float(rng.uniform(0.25, 0.55)),
        expressiveness=float(rng.uniform(0.75, 1.25)),
        channel_tilt=float(rng.uniform(-0.25, 0.35)),
        noise_colour=float(rng.uniform(0.3, 0.97)),
    )


# ---------------------------------------------------------------------------------------------
# Emotions


@dataclass(frozen=True)
class EmotionProfile:
    """Shifts from a speaker's neutral voice at full strength (1.0); see docs/synthetic-corpus.md.

    Additive fields (`*_st`, `*_db`, `*_delta`) scale linearly with strength, multiplicative ones
    (`*_scale`) as a power of it, so strength 0 is neutral speech.
    """

    f0_shift_st: float = 0.0
    f0_range_scale: float = 1.0
    rate_scale: float = 1.0
    level_db: float = 0.0
    tilt_db: float = 0.0
    open_quotient_delta: float = 0.0
    breathiness_delta: float = 0.0
    jitter_scale: float = 1.0
    shimmer_scale: float = 1.0
    pause_scale: float = 1.0
    accent_delta: float = 0.0
    """Change in the probability that a syllable carries a pitch accent."""
    final_st: float = 0.0
    """Change in the phrase-final F0 movement (positive: rising), semitones."""
    formant_scale: float = 1.0
    f1_scale: float = 1.0
    attack_scale: float = 1.0
    """Onset/offset smoothing time relative to neutral (below 1: abrupt, tense articulation)."""

    def at(self, strength: float) -> EmotionProfile:
        """This profile scaled to `strength` (0 = neutral, 1 = full)."""
        values = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            values[f.name] = v**strength if f.name.endswith("_scale") else v * strength
        return EmotionProfile(**values)


EMOTION_PROFILES: dict[str, EmotionProfile] = {
    "neutral": EmotionProfile(),
    # Joy/elation: higher F0, much wider F0 range, faster, somewhat louder and brighter; smiling
    # raises formants (Scherer 2003; Juslin & Laukka 2003; Banse & Scherer 1996; Tartter 1980).
    "happy": EmotionProfile(
        f0_shift_st=5.0,
        f0_range_scale=2.2,
        rate_scale=1.12,
        level_db=4.0,
        tilt_db=-4.0,
        open_quotient_delta=-0.04,
        pause_scale=0.85,
        accent_delta=0.15,
        final_st=4.0,
        formant_scale=1.05,
        attack_scale=0.85,
    ),
    # Hot anger: high F0 and range, fast, loud, flat tilt (much high-frequency energy), pressed and
    # harsh voice (short open phase, irregular periods and amplitudes), raised F1 from wide jaw
    # opening, abrupt onsets, falling contours (Scherer 2003; Banse & Scherer 1996; Juslin &
    # Laukka 2003; Gobl & Ni Chasaide 2003).
    "angry": EmotionProfile(
        f0_shift_st=6.0,
        f0_range_scale=1.5,
        rate_scale=1.2,
        level_db=8.0,
        tilt_db=-10.0,
        open_quotient_delta=-0.15,
        breathiness_delta=-0.06,
        jitter_scale=2.5,
        shimmer_scale=2.2,
        pause_scale=0.7,
        accent_delta=0.15,
        final_st=-1.5,
        f1_scale=1.10,
        attack_scale=0.5,
    ),
    # Sadness: lower F0, narrow range (monotone), slow with more pauses, quiet, steep tilt, lax
    # breathy voice, reduced articulation (Scherer 2003; Juslin & Laukka 2003; Gobl & Ni Chasaide 2003).
    "sad": EmotionProfile(
        f0_shift_st=-2.5,
        f0_range_scale=0.4,
        rate_scale=0.72,
        level_db=-6.0,
        tilt_db=12.0,
        open_quotient_delta=0.15,
        breathiness_delta=0.30,
        jitter_scale=1.5,
        pause_scale=2.0,
        accent_delta=-0.12,
        final_st=-1.0,
        formant_scale=0.96,
        f1_scale=0.95,
        attack_scale=1.8,
    ),
}


# ---------------------------------------------------------------------------------------------
# Utterance plan: segments with their kind, duration and targets


@dataclass(frozen=True)
class Segments:
    """An utterance plan; every array has one entry per segment."""

    kind: np.ndarray  # int, one of _PAUSE.._BURST
    duration_s: np.ndarray  # float seconds
    formants: np.ndarray  # float [n_segments, 5] Hz targets F1-F5
    voice: np.ndarray  # float, glottal source amplitude (1 vowel, 1.4 stressed vowel, 0 unvoiced)
    noise: np.ndarray  # float, fricative/burst noise amplitude
    band: np.ndarray  # int, fricative band index (-1 none)
    accent: np.ndarray  # float, pitch accent height (semitones) centred on the segment, 0 if none


def plan_utterance(rng: np.random.Generator, speaker: Speaker, emo: EmotionProfile) -> Segments:
    """A random syllable string: optional onset consonant, vowel nucleus, optional coda, word pauses."""
    rate = speaker.syllable_rate * emo.rate_scale * float(np.exp(rng.normal(0.0, 0.06)))
    syllable_s = 1.0 / rate
    n_syllables = max(4, round(rng.uniform(1.1, 2.1) * speaker.syllable_rate))
    accent_p = float(np.clip(0.30 + emo.accent_delta, 0.05, 0.8))
    pause_p = 0.14 * emo.pause_scale
    fscale = speaker.formant_scale * emo.formant_scale
    vt_scale = np.array([fscale * emo.f1_scale, fscale, fscale, fscale, fscale])
    rows: list[tuple] = []

    def add(
        kind: int,
        dur: float,
        formants: np.ndarray,
        voice: float = 0.0,
        noise: float = 0.0,
        band: int = -1,
        accent: float = 0.0,
    ) -> None:
        rows.append((kind, dur, formants, voice, noise, band, accent))

    vowel = _VOWELS[rng.integers(len(_VOWELS))] * vt_scale
    for k in range(n_syllables):
        next_vowel = _VOWELS[rng.integers(len(_VOWELS))] * vt_scale * rng.normal(1.0, 0.03, 5)
        stressed = rng.random() < accent_p
        length = syllable_s * (1.3 if stressed else 0.9) * float(np.exp(rng.normal(0.0, 0.15)))
        onset = rng.random()
        cons_s = length * rng.uniform(0.25, 0.4)
        if onset < 0.30:
            add(
                _FRICATIVE,
                cons_s,
                next_vowel,
                noise=float(_FRICATIVE_LEVELS[b := int(rng.integers(3))]),
                band=b,
            )
        elif onset < 0.55:
            add(_CLOSURE, cons_s * 0.7, next_vowel)
            add(_BURST, min(0.02, cons_s * 0.3), next_vowel, noise=0.3, band=3)
        elif onset < 0.80:
            add(_VOICED, cons_s, _NASAL * vt_scale, voice=0.35)
        else:
            cons_s = 0.0
        accent = speaker.f0_range_st * emo.f0_range_scale * rng.uniform(0.6, 1.2) if stressed else 0.0
        add(_VOWEL, length - cons_s, next_vowel, voice=1.4 if stressed else 1.0, accent=accent)
        vowel = next_vowel
        if rng.random() < 0.2:
            add(
                _FRICATIVE,
                length * 0.25,
                vowel,
                noise=float(_FRICATIVE_LEVELS[b := int(rng.integers(3))]) * 0.7,
                band=b,
            )
        if k < n_syllables - 1 and rng.random() < pause_p:
            add(_PAUSE, rng.uniform(0.08, 0.28) * np.sqrt(emo.pause_scale), vowel)
    lead, trail = rng.uniform(0.08, 0.25, 2)
    rows.insert(0, (_PAUSE, lead, rows[0][2], 0.0, 0.0, -1, 0.0))
    rows.append((_PAUSE, trail, vowel, 0.0, 0.0, -1, 0.0))
    cols = list(zip(*rows, strict=True))
    return Segments(
        kind=np.array(cols[0], dtype=np.int64),
        duration_s=np.array(cols[1], dtype=np.float64),
        formants=np.stack(cols[2]).astype(np.float64),
        voice=np.array(cols[3], dtype=np.float64),
        noise=np.array(cols[4], dtype=np.float64),
        band=np.array(cols[5], dtype=np.int64),
        accent=np.array(cols[6], dtype=np.float64),
    )


# ---------------------------------------------------------------------------------------------
# Signal generation (all vectorised; the only loop runs over 5 ms control blocks)


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Triangular moving average (two box filters) of a 1-D track, edges held; `width` in samples."""
    half = max(1, width // 2)
    return ndimage.uniform_filter1d(ndimage.uniform_filter1d(x, half, mode="nearest"), half, mode="nearest")


def f0_contour(
    rng: np.random.Generator,
    speaker: Speaker,
    emo: EmotionProfile,
    seg: Segments,
    times: np.ndarray,
    f0_offset_st: float,
) -> np.ndarray:
    """F0 in Hz at `times` (seconds): declination, pitch accents, phrase-final movement, slow drift."""
    starts = np.concatenate([[0.0], np.cumsum(seg.duration_s)[:-1]])
    centres = starts + seg.duration_s / 2
    total = float(seg.duration_s.sum())
    st = np.full_like(times, emo.f0_shift_st + f0_offset_st)
    st += -1.0 * emo.f0_range_scale * times  # declination, semitones per second
    accented = seg.accent > 0
    if accented.any():
        widths = np.maximum(seg.duration_s[accented] * 0.7, 0.04)
        st += (
            seg.accent[accented, None]
            * np.exp(-0.5 * ((times[None, :] - centres[accented, None]) / widths[:, None]) ** 2)
        ).sum(0)
    final = (-2.0 + emo.final_st) * emo.f0_range_scale
    st += final * np.clip((times - (total - 0.45)) / 0.35, 0.0, 1.0)
    drift = _smooth(rng.normal(0.0, 1.0, times.size), max(3, int(0.15 / _BLOCK_S)))
    st += drift / (drift.std() + 1e-9) * 0.35 * emo.f0_range_scale
    return speaker.f0_hz * 2.0 ** (st / 12.0)


def glottal_source(
    rng: np.random.Generator,
    f0: np.ndarray,
    sr: int,
    open_quotient: float,
    jitter: float,
    shimmer_db: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Rosenberg-C glottal flow following `f0` (Hz per sample) with jitter and shimmer.

    Returns (flow [n], open-phase mask [n] in 0..1 for pulsing the aspiration noise).
    """
    phase = np.cumsum(f0 / sr)
    n_cycles = int(phase[-1]) + 2
    period_jitter = 1.0 + jitter * rng.standard_normal(n_cycles)
    phase = np.cumsum(f0 * period_jitter[phase.astype(np.int64)] / sr)
    cycle = phase.astype(np.int64)
    frac = phase - cycle
    rise = open_quotient * 0.62  # speed quotient ~1.6 (Rosenberg 1971)
    fall = open_quotient - rise
    flow = np.zeros_like(frac)
    opening, closing = frac < rise, (frac >= rise) & (frac < open_quotient)
    flow[opening] = 0.5 * (1.0 - np.cos(np.pi * frac[opening] / rise))
    flow[closing] = np.cos(0.5 * np.pi * (frac[closing] - rise) / fall)
    amp = 10.0 ** (shimmer_db * rng.standard_normal(n_cycles) / 20.0)
    # Jitter may add a cycle or two at the end; those reuse the last drawn amplitude.
    return flow * amp[np.minimum(cycle, n_cycles - 1)], (frac < open_quotient).astype(np.float64)


def resonate(x: np.ndarray, freqs: np.ndarray, bandwidths: np.ndarray, sr: int, block: int) -> np.ndarray:
    """Cascade of second-order formant resonators (Klatt 1980, unity DC gain), coefficients per block.

    x: [n] samples; freqs, bandwidths: [n_blocks, n_formants] Hz, block i covering x[i*block:(i+1)*block].
    """
    r = np.exp(-np.pi * bandwidths / sr)
    c = 2.0 * r * np.cos(2.0 * np.pi * np.minimum(freqs, 0.45 * sr) / sr)
    sos = np.zeros(freqs.shape + (6,))
    sos[..., 0] = 1.0 - c + r**2
    sos[..., 3] = 1.0
    sos[..., 4] = -c
    sos[..., 5] = r**2
    # Runs of blocks with identical coefficients (steady vowels) are filtered in one call.
    changes = np.flatnonzero(np.any(np.diff(sos, axis=0) != 0.0, axis=(1, 2))) + 1
    starts = np.concatenate([[0], changes])
    ends = np.concatenate([changes, [freqs.shape[0]]])
    zi = np.zeros((freqs.shape[1], 2))
    out = np.empty_like(x)
    for start, end in zip(starts, ends, strict=True):
        part = slice(start * block, end * block)
        out[part], zi = signal.sosfilt(sos[start], x[part], zi=zi)
    return out


@lru_cache(maxsize=8)
def _fricative_filters(sr: int) -> tuple[np.ndarray, ...]:
    """Band-pass SOS filters for the fricative bands plus a broadband burst filter."""
    bands = [*_FRICATIVE_BANDS, (500.0, 6000.0)]
    return tuple(
        signal.butter(2, (lo, min(hi, 0.45 * sr)), btype="bandpass", fs=sr, output="sos") for lo, hi in bands
    )


def tilt_coefficient(tilt_db: float, sr: int) -> float:
    """Coefficient of the one-pole low-pass that attenuates 3 kHz by `tilt_db` (>= 0) re DC."""
    g = 10.0 ** (-tilt_db / 10.0)  # power gain at 3 kHz
    if g >= 1.0:
        return 0.0
    c = np.cos(2.0 * np.pi * 3000.0 / sr)
    b = 1.0 - g * c
    return float((b - np.sqrt(b * b - (1.0 - g) ** 2)) / (1.0 - g))


def apply_tilt(x: np.ndarray, tilt_db: float, sr: int) -> np.ndarray:
    """Tilt `x` by `tilt_db` at 3 kHz re DC: > 0 darker (one pole), < 0 brighter (its inverse)."""
    a = tilt_coefficient(abs(tilt_db), sr)
    if tilt_db >= 0.0:
        return signal.lfilter([1.0 - a], [1.0, -a], x)
    return signal.lfilter([1.0 / (1.0 - a), -a / (1.0 - a)], [1.0], x)


def _one_pole(x: np.ndarray, a: float) -> np.ndarray:
    """First-order low-pass (a > 0) or high-frequency emphasis (a < 0) with unity gain at DC."""
    return signal.lfilter([1.0 - a], [1.0, -a], x)


def synthesize(
    rng: np.random.Generator,
    speaker: Speaker,
    emotion: str,
    sr: int,
    emotion_scale: float = 1.0,
    snr_db: tuple[float, float] = (20.0, 40.0),
) -> np.ndarray:
    """One utterance of `speaker` acting `emotion`: float64 samples in [-1, 1], shape [n]."""
    strength = emotion_scale * speaker.expressiveness * float(rng.uniform(0.65, 1.0))
    emo = EMOTION_PROFILES[emotion].at(strength)
    seg = plan_utterance(rng, speaker, emo)
    block = max(1, round(_BLOCK_S * sr))
    seg_len = np.maximum(1, np.round(seg.duration_s * sr).astype(np.int64))
    n = int(-(-seg_len.sum() // block) * block)
    seg_id = np.repeat(np.arange(seg_len.size), seg_len)
    seg_id = np.pad(seg_id, (0, n - seg_id.size), mode="edge")
    times = np.arange(n) / sr
    block_times = times[::block] + _BLOCK_S / 2

    # Per-utterance natural variation, independent of emotion, so that classes overlap.
    f0_offset = float(rng.normal(0.0, 1.0))
    oq = float(np.clip(speaker.open_quotient + emo.open_quotient_delta + rng.normal(0.0, 0.02), 0.35, 0.9))
    breath = float(np.clip(speaker.breathiness + emo.breathiness_delta + rng.normal(0.0, 0.02), 0.0, 0.8))
    tilt_db = float(np.clip(speaker.tilt_db + emo.tilt_db + rng.normal(0.0, 1.0), -12.0, 30.0))

    f0 = np.interp(times, block_times, f0_contour(rng, speaker, emo, seg, block_times, f0_offset))
    flow, open_phase = glottal_source(
        rng, f0, sr, oq, speaker.jitter * emo.jitter_scale, speaker.shimmer_db * emo.shimmer_scale
    )
    source = np.diff(flow, prepend=0.0) * sr / (speaker.f0_hz * 4.0)  # lip radiation, level ~1
    aspiration = rng.standard_normal(n) * (0.25 + 0.75 * open_phase) * breath * 0.3
    attack = max(3, round(0.018 * emo.attack_scale * sr))
    voicing = _smooth(seg.voice[seg_id], attack)
    excitation = apply_tilt((source + aspiration) * voicing, tilt_db, sr)

    block_seg = seg_id[::block]
    formants = _smooth_tracks(seg.formants[block_seg], max(3, round(0.04 / _BLOCK_S)))
    bandwidths = np.broadcast_to(
        _BANDWIDTHS * (1.0 + np.array([1.2, 0.5, 0.3, 0.2, 0.0]) * breath), formants.shape
    )
    voice = resonate(excitation, formants, bandwidths * np.sqrt(formants / _VOWELS.mean(0)), sr, block)
    voice /= np.sqrt(np.mean(voice[seg.kind[seg_id] == _VOWEL] ** 2)) + 1e-12
    # Consonants are given relative to a vowel RMS of 1; vocal effort raises vowels about twice as
    # much (in dB) as consonants (Traunmueller & Eriksson 2000).
    speech = voice + _consonant_noise(rng, seg, seg_id, sr, n) * 10.0 ** (-emo.level_db / 40.0)
    speech = _one_pole(speech, speaker.channel_tilt)
    speech = signal.lfilter([1.0, -1.0], [1.0, -0.995], speech)  # remove DC / sub-audio rumble

    level_db = -26.0 + speaker.loudness_db + emo.level_db + float(rng.normal(0.0, 1.0))  # vowel RMS, dBFS
    speech *= 10.0 ** (level_db / 20.0)
    noise = _one_pole(rng.standard_normal(n), speaker.noise_colour)
    snr = float(rng.uniform(*snr_db))
    noise *= 10.0 ** ((level_db - snr) / 20.0) / (np.sqrt(np.mean(noise**2)) + 1e-12)
    out = speech + noise
    peak = float(np.abs(out).max())
    return out * (0.98 / peak) if peak > 0.98 else out  # limiter: a rare loud take is scaled, not clipped


def _smooth_tracks(tracks: np.ndarray, width: int) -> np.ndarray:
    """Smooth each column of [n_blocks, k] control tracks (coarticulation between targets)."""
    half = max(1, width // 2)
    once = ndimage.uniform_filter1d(tracks, half, axis=0, mode="nearest")
    return ndimage.uniform_filter1d(once, half, axis=0, mode="nearest")


def _consonant_noise(
    rng: np.random.Generator, seg: Segments, seg_id: np.ndarray, sr: int, n: int
) -> np.ndarray:
    """Fricative and burst noise: white noise through fixed band-passes, gated by smoothed envelopes."""
    white = rng.standard_normal(n)
    out = np.zeros(n)
    gate = _smooth(seg.noise[seg_id], max(3, round(0.008 * sr)))
    band_of_sample = seg.band[seg_id]
    for b, sos in enumerate(_fricative_filters(sr)):
        in_band = _smooth((band_of_sample == b).astype(np.float64), max(3, round(0.008 * sr)))
        if in_band.any():
            out += signal.sosfilt(sos, white) * gate * in_band
    return out


# ---------------------------------------------------------------------------------------------
# Corpus generation


@dataclass(frozen=True)
class _Job:
    """One utterance to render and where to write it (picklable, for the worker processes)."""

    path: str
    cfg: SynthConfig
    speaker_index: int
    utterance_index: int


def utterance_emotion(utterance_index: int) -> str:
    """Emotion of a speaker's `utterance_index`-th utterance (emotions cycle in EMOTIONS order)."""
    return EMOTIONS[utterance_index % len(EMOTIONS)]


def render_utterance(cfg: SynthConfig, speaker_index: int, utterance_index: int) -> np.ndarray:
    """The float64 samples of one corpus utterance, exactly as `generate_corpus` writes them (before PCM)."""
    speaker = draw_speaker(cfg.seed, speaker_index, cfg.speakers)
    rng = np.random.default_rng([cfg.seed, speaker_index, utterance_index])
    return synthesize(
        rng,
        speaker,
        utterance_emotion(utterance_index),
        cfg.sample_rate,
        cfg.emotion_scale,
        (cfg.min_snr_db, cfg.max_snr_db),
    )


def _write_job(job: _Job) -> None:
    """Render one utterance and write it as 16-bit PCM WAV."""
    wave = render_utterance(job.cfg, job.speaker_index, job.utterance_index)
    # Quantise here rather than in libsndfile so rounding (and hence the bytes) is ours to fix.
    pcm = np.clip(np.round(wave * 32767.0), -32768, 32767).astype(np.int16)
    # Encode in memory: closing a real file makes libsndfile fsync it, which costs more than the synthesis.
    buffer = io.BytesIO()
    sf.write(buffer, pcm, job.cfg.sample_rate, subtype="PCM_16", format="WAV")
    Path(job.path).write_bytes(buffer.getvalue())


def generate_corpus(
    out_dir: Path,
    cfg: SynthConfig,
    progress: Callable[[int, int], None] | None = None,
    *,
    workers: int | None = None,
) -> Path:
    """Write `out_dir/wav/<speaker>/<id>.wav` (16-bit PCM) and `out_dir/metadata.csv`; return out_dir.

    Generates into a temporary sibling directory and renames it into place at the end, so an
    interrupted run never leaves a complete-looking corpus. Refuses a non-empty `out_dir`.
    `progress(done, total)` is called after each utterance; `workers` defaults to the CPU count
    and does not change the output.
    """
    cfg.validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(
            f"{out_dir} already exists and is not an empty directory; the synthetic corpus is written only "
            "into a new or empty directory: remove it or choose another path"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        rows, jobs = _plan_jobs(tmp, cfg)
        _run_jobs(jobs, progress, workers)
        _write_metadata(tmp, rows, cfg)
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _plan_jobs(root: Path, cfg: SynthConfig) -> tuple[list[dict[str, str]], list[_Job]]:
    """Metadata rows and render jobs for every utterance; creates the speaker directories."""
    rows: list[dict[str, str]] = []
    jobs: list[_Job] = []
    for s in range(cfg.speakers):
        spk = speaker_id(s, cfg.speakers)
        (root / "wav" / spk).mkdir(parents=True)
        for u in range(cfg.utterances_per_speaker):
            uid = f"{spk}-{u:03d}"
            rel = f"wav/{spk}/{uid}.wav"
            rows.append(
                {
                    "id": uid,
                    "path": rel,
                    "speaker": spk,
                    "gender": speaker_gender(s),
                    "emotion": utterance_emotion(u),
                }
            )
            jobs.append(_Job(str(root / rel), cfg, s, u))
    return rows, jobs


def _run_jobs(jobs: list[_Job], progress: Callable[[int, int], None] | None, workers: int | None) -> None:
    """Render jobs across worker processes (in-process for few jobs or one worker)."""
    process_map(
        _write_job, jobs, workers=workers, progress=progress, preload=[__name__], what="corpus generation"
    )


def _write_metadata(root: Path, rows: list[dict[str, str]], cfg: SynthConfig) -> None:
    """metadata.csv (the corpus index) and synthesis.json (the config and generator that made it)."""
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=METADATA_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    info = {"generator": GENERATOR_VERSION, "config": dataclasses.asdict(cfg)}
    (root / "synthesis.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _publish(tmp: Path, out_dir: Path) -> None:
    """Rename the finished `tmp` corpus to `out_dir` (an empty `out_dir` is replaced)."""
    try:
        if out_dir.is_dir():
            out_dir.rmdir()  # fails if another process filled it meanwhile
        os.rename(tmp, out_dir)
    except OSError as exc:
        raise DataError(
            f"cannot move the generated corpus into {out_dir}: {exc}; another process may have written it "
            "meanwhile: remove it or choose another path"
        ) from exc
