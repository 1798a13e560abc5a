"""The synthetic corpus: determinism, layout, acoustics (gender, emotion), config errors, caching."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import privfl.data.corpora.synthetic as corpora_synthetic
import privfl.data.synthesis as synthesis
import privfl.parallel as parallel
from privfl.data.corpora.synthetic import cache_root, corpus_key, ensure_synthetic, load_synthetic
from privfl.data.records import EMOTIONS
from privfl.data.synthesis import SynthConfig, draw_speaker, generate_corpus, speaker_gender
from privfl.errors import ConfigError, DataError

TINY = SynthConfig(speakers=4, utterances_per_emotion=2, seed=7)
MINI = SynthConfig(speakers=2, utterances_per_emotion=1, seed=5)


def digests(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_metadata(root: Path) -> list[dict[str, str]]:
    with open(root / "metadata.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def estimate_f0(wave: np.ndarray, sr: int) -> float:
    """Median autocorrelation pitch (Hz) over the loudest, clearly periodic 40 ms frames."""
    frames = np.lib.stride_tricks.sliding_window_view(wave, int(0.04 * sr))[:: int(0.01 * sr)]
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = (frames**2).sum(axis=1)
    frames = frames[energy >= np.quantile(energy, 0.7)] * np.hanning(frames.shape[1])
    spec = np.fft.rfft(frames, n=2 * frames.shape[1], axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)
    lo, hi = int(sr / 500), int(sr / 60)
    lags = lo + np.argmax(ac[:, lo:hi], axis=1)
    strength = ac[np.arange(len(ac)), lags] / ac[:, 0]
    return float(np.median(sr / lags[strength > 0.4]))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_corpus(tmp_path_factory.mktemp("tiny") / "corpus", TINY)


def measure(root: Path) -> dict[str, np.ndarray]:
    """Per utterance: speaker index, emotion, RMS (dB) and F0 (Hz), read back from the wav files."""
    rows = []
    for u in load_synthetic(root).utterances:
        wave, sr = sf.read(u.path)
        rows.append((int(u.speaker[3:]), u.emotion, 10 * np.log10(np.mean(wave**2)), estimate_f0(wave, sr)))
    cols = list(zip(*rows, strict=True))
    return {
        "speaker": np.array(cols[0]),
        "emotion": np.array(cols[1]),
        "rms_db": np.array(cols[2]),
        "f0": np.array(cols[3]),
    }


@pytest.fixture(scope="module")
def tiny_measures(tiny) -> dict[str, np.ndarray]:
    return measure(tiny)


# --- determinism ---------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_into_an_empty_dir(tiny, tmp_path):
    (tmp_path / "again").mkdir()
    calls: list[tuple[int, int]] = []
    again = generate_corpus(
        tmp_path / "again", TINY, progress=lambda done, total: calls.append((done, total))
    )
    assert digests(again) == digests(tiny)
    assert calls == [(i, 32) for i in range(1, 33)]


def test_different_seed_gives_different_audio(tmp_path):
    a = digests(generate_corpus(tmp_path / "a", MINI))
    b = digests(generate_corpus(tmp_path / "b", SynthConfig(speakers=2, utterances_per_emotion=1, seed=6)))
    wavs = [k for k in a if k.endswith(".wav")]
    assert len(wavs) == 8 and all(a[k] != b[k] for k in wavs)


def test_worker_pool_gives_the_same_bytes(tmp_path, monkeypatch):
    alone = generate_corpus(tmp_path / "alone", MINI, workers=1)
    monkeypatch.setattr(parallel, "MIN_POOL_ITEMS", 0)
    pooled = generate_corpus(tmp_path / "pooled", MINI, workers=2)
    assert digests(pooled) == digests(alone)


# --- layout --------------------------------------------------------------------------------------


def test_metadata_columns_counts_and_paths(tiny):
    rows = read_metadata(tiny)
    assert list(rows[0]) == ["id", "path", "speaker", "gender", "emotion"]
    assert len(rows) == TINY.speakers * TINY.utterances_per_emotion * len(EMOTIONS)
    assert len({r["id"] for r in rows}) == len(rows)
    for emotion in EMOTIONS:
        assert sum(r["emotion"] == emotion for r in rows) == TINY.speakers * TINY.utterances_per_emotion
    assert sorted({r["speaker"] for r in rows}) == ["spk00", "spk01", "spk02", "spk03"]
    for r in rows:
        assert r["path"] == f"wav/{r['speaker']}/{r['id']}.wav"
        assert (tiny / r["path"]).is_file()


def test_wavs_are_16k_mono_pcm16_of_speech_length(tiny):
    for r in read_metadata(tiny):
        info = sf.info(str(tiny / r["path"]))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        assert 1.0 <= info.duration <= 5.0


def test_half_the_speakers_are_female(tiny):
    genders = {r["speaker"]: r["gender"] for r in read_metadata(tiny)}
    assert sorted(genders.values()) == ["female", "female", "male", "male"]
    assert [speaker_gender(i) for i in range(5)].count("female") == 3  # odd counts: the extra one is female


def test_speaker_traits_follow_the_literature_ranges():
    speakers = [draw_speaker(0, i, 200) for i in range(200)]
    female = [s for s in speakers if s.gender == "female"]
    male = [s for s in speakers if s.gender == "male"]
    assert all(165 <= s.f0_hz <= 255 for s in female) and all(85 <= s.f0_hz <= 155 for s in male)
    ratio = np.mean([s.formant_scale for s in female]) / np.mean([s.formant_scale for s in male])
    assert 1.15 <= ratio <= 1.20
    assert len({round(s.f0_hz, 6) for s in speakers}) == 200  # every speaker is drawn, not copied


def test_existing_nonempty_dir_is_refused(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="taken.*remove it or choose another path"):
        generate_corpus(tmp_path / "taken", TINY)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_interrupted_generation_leaves_nothing(tmp_path):
    def interrupt(done: int, total: int) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_corpus(tmp_path / "corpus", MINI, progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_corpus_appearing_meanwhile_is_not_overwritten(tmp_path):
    target = tmp_path / "corpus"

    def rival(done: int, total: int) -> None:
        if done == 1:
            target.mkdir()
            (target / "metadata.csv").write_text("theirs")

    with pytest.raises(DataError, match="another process"):
        generate_corpus(target, MINI, progress=rival)
    assert (target / "metadata.csv").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]


# --- signal pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize("tilt_db", [-6.0, 0.0, 3.0, 12.0])
def test_tilt_sets_the_gain_at_3khz_and_keeps_dc(tilt_db):
    t = np.arange(16000) / 16000
    tone = synthesis.apply_tilt(np.sin(2 * np.pi * 3000 * t), tilt_db, 16000)[4000:]
    gain_db = 20 * np.log10(np.sqrt(2 * np.mean(tone**2)))
    assert gain_db == pytest.approx(-tilt_db, abs=0.05)
    assert synthesis.apply_tilt(np.ones(4000), tilt_db, 16000)[-1] == pytest.approx(1.0, abs=1e-6)


def test_resonator_cascade_peaks_at_its_formants():
    impulse = np.zeros(16000)
    impulse[0] = 1.0
    freqs = np.tile([500.0, 1500.0], (200, 1))  # 200 blocks of 80 samples, constant formants
    out = synthesis.resonate(impulse, freqs, np.full_like(freqs, 80.0), 16000, 80)
    spectrum = np.abs(np.fft.rfft(out))
    hz = np.fft.rfftfreq(out.size, 1 / 16000)
    low, high = (hz > 300) & (hz < 1000), (hz > 1000) & (hz < 2500)
    assert hz[low][np.argmax(spectrum[low])] == pytest.approx(500, abs=15)
    assert hz[high][np.argmax(spectrum[high])] == pytest.approx(1500, abs=15)
    assert spectrum[0] == pytest.approx(1.0, rel=1e-3)  # unity gain at DC


# --- acoustics -----------------------------------------------------------------------------------


def test_female_voices_are_higher(tiny_measures):
    m = tiny_measures
    per_speaker = {s: np.median(m["f0"][m["speaker"] == s]) for s in np.unique(m["speaker"])}
    female = [f for s, f in per_speaker.items() if speaker_gender(s) == "female"]
    male = [f for s, f in per_speaker.items() if speaker_gender(s) == "male"]
    assert min(female) > max(male)
    assert np.mean(female) > 1.4 * np.mean(male)


def emotion_means(m: dict[str, np.ndarray], key: str) -> dict[str, float]:
    """Mean of a measure per emotion after removing each speaker's mean (within-speaker contrasts)."""
    values = m[key] if key == "rms_db" else 12 * np.log2(m[key])
    centred = values - np.array([values[m["speaker"] == s].mean() for s in m["speaker"]])
    return {e: float(centred[m["emotion"] == e].mean()) for e in EMOTIONS}


def test_emotions_shift_loudness_and_pitch_the_expected_way(tiny_measures):
    rms = emotion_means(tiny_measures, "rms_db")
    st = emotion_means(tiny_measures, "f0")
    assert rms["angry"] > rms["neutral"] > rms["sad"]
    assert rms["angry"] - rms["sad"] > 4.0
    assert st["happy"] - st["sad"] > 3.0 and st["angry"] - st["sad"] > 3.0
    assert st["happy"] > st["neutral"] > st["sad"]


def test_emotion_scale_zero_removes_the_emotion_shifts(tmp_path):
    m = measure(generate_corpus(tmp_path / "flat", dataclasses.replace(TINY, emotion_scale=0.0)))
    rms, st = emotion_means(m, "rms_db"), emotion_means(m, "f0")
    assert abs(rms["angry"] - rms["sad"]) < 2.0
    assert abs(st["happy"] - st["sad"]) < 1.5 and abs(st["angry"] - st["sad"]) < 1.5


# --- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"speakers": 1}, "speakers = 1"),
        ({"speakers": 2.5}, "speakers = 2.5"),
        ({"utterances_per_emotion": 0}, "utterances_per_emotion = 0"),
        ({"seed": -1}, "seed = -1"),
        ({"sample_rate": 8000}, "sample_rate = 8000"),
        ({"emotion_scale": -0.5}, "emotion_scale = -0.5"),
        ({"min_snr_db": 30.0, "max_snr_db": 10.0}, r"\[30.0, 10.0\]"),
    ],
)
def test_invalid_config_names_value_and_fix(change, pattern, tmp_path):
    cfg = dataclasses.replace(TINY, **change)
    with pytest.raises(ConfigError, match=pattern):
        cfg.validate()
    with pytest.raises(ConfigError):
        generate_corpus(tmp_path / "never", cfg)
    assert not (tmp_path / "never").exists()


# --- loading and caching -------------------------------------------------------------------------


def test_load_synthetic_gives_absolute_paths(tiny):
    corpus = load_synthetic(tiny)
    assert corpus.name == "synthetic"
    assert len(corpus.utterances) == 32 and corpus.speakers() == ["spk00", "spk01", "spk02", "spk03"]
    assert all(Path(u.path).is_absolute() and Path(u.path).is_file() for u in corpus.utterances)
    assert corpus.counts("emotion") == {e: 8 for e in EMOTIONS}


def test_load_synthetic_missing_dir(tmp_path):
    with pytest.raises(DataError, match="nowhere.*metadata.csv"):
        load_synthetic(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("id,path,speaker,emotion\n", "lacks column.*gender"),
        ("id,path,speaker,gender,emotion\n", "no utterances"),
        ("id,path,speaker,gender,emotion\na,wav/a.wav,s,female,bored\n", "line 2.*'bored'"),
        ("id,path,speaker,gender,emotion\na,wav/a.wav,s,other,sad\n", "line 2.*'other'"),
        ("id,path,speaker,gender,emotion\na,../a.wav,s,male,sad\n", "path inside"),
        ("id,path,speaker,gender,emotion\na,wav/a.wav,s,male,sad\n", "missing, e.g.*a.wav"),
    ],
)
def test_load_synthetic_malformed(tmp_path, text, pattern):
    (tmp_path / "metadata.csv").write_text(text)
    with pytest.raises(DataError, match=pattern):
        load_synthetic(tmp_path)


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PRIVFL_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("PRIVFL_CACHE")
    assert cache_root() == Path.home() / ".cache" / "privfl"


def test_ensure_synthetic_generates_once(monkeypatch, tmp_path):
    monkeypatch.setenv("PRIVFL_CACHE", str(tmp_path))
    calls: list[int] = []
    first = ensure_synthetic(MINI, progress=lambda d, t: calls.append(d))
    assert first == tmp_path / "synthetic" / corpus_key(MINI)
    assert len(calls) == 8 and len(load_synthetic(first).utterances) == 8

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached corpus")

    monkeypatch.setattr(corpora_synthetic, "generate_corpus", fail)
    assert ensure_synthetic(MINI) == first
    assert corpus_key(SynthConfig(speakers=2, utterances_per_emotion=1, seed=6)) != corpus_key(MINI)
    assert corpus_key(dataclasses.replace(MINI, emotion_scale=1)) == corpus_key(
        MINI
    )  # 1 and 1.0: same corpus


def test_ensure_synthetic_tolerates_a_faster_rival(monkeypatch, tmp_path):
    monkeypatch.setenv("PRIVFL_CACHE", str(tmp_path))
    target = tmp_path / "synthetic" / corpus_key(MINI)

    def rival(done: int, total: int) -> None:
        if done == 1:  # another process publishes the same corpus while we are generating
            target.mkdir()
            (target / "metadata.csv").write_text("id,path,speaker,gender,emotion\n")

    assert ensure_synthetic(MINI, progress=rival) == target
    assert [p.name for p in (tmp_path / "synthetic").iterdir()] == [target.name]
