import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from privfl.config import DataConfig
from privfl.data.audio import read_audio
from privfl.data.features import FeatureConfig, LogMel, cache_key, extract, pad_or_crop, trim_silence
from privfl.data.records import Utterance
from privfl.errors import ConfigError, DataError


def _tone(seconds=1.0, sr=16000, f=220.0, seed=0):
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def test_logmel_matches_torchaudio_reference_call():
    wave = torch.from_numpy(_tone())
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000,
        n_fft=400,
        win_length=400,
        hop_length=160,
        window_fn=torch.hamming_window,
        n_mels=40,
    )(wave)
    logmel = torch.log(mel + 1e-6).T
    expected = (logmel - logmel.mean(0)) / (logmel.std(0, unbiased=False) + 1e-5)
    got = LogMel(FeatureConfig())(wave)
    assert got.shape == (101, 40)  # 1 s at a 10 ms hop, centred frames
    torch.testing.assert_close(got, expected)


def test_features_are_normalised_per_utterance():
    got = LogMel()(torch.from_numpy(_tone(f=440.0) * 5)).numpy()
    np.testing.assert_allclose(got.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(got.std(0), 1, atol=1e-2)


def test_pad_or_crop():
    a = np.ones((5, 3), dtype=np.float32)
    out, n = pad_or_crop(a, 8)
    assert n == 5 and out.shape == (8, 3) and out[5:].sum() == 0
    out, n = pad_or_crop(np.arange(10)[:, None].astype(np.float32), 4)
    assert n == 4 and out[:, 0].tolist() == [3, 4, 5, 6]


def test_resampling_and_stereo_mixdown(tmp_path):
    wave = _tone(sr=8000)
    sf.write(tmp_path / "a.wav", np.stack([wave, wave], 1), 8000)
    out = read_audio(tmp_path / "a.wav")
    assert abs(out.size - 16000) <= 1


def test_unreadable_audio_is_a_data_error(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00")
    with pytest.raises(DataError, match="bad.wav"):
        read_audio(bad)


def test_extract_caches_by_listing(tmp_path):
    utts = []
    for i in range(3):
        p = tmp_path / f"u{i}.wav"
        sf.write(p, _tone(seconds=0.5 + i, seed=i), 16000)
        utts.append(Utterance(f"u{i}", str(p), "s", "female", "neutral"))
    cfg = FeatureConfig(max_frames=120)
    a = extract(utts, cfg, cache_dir=tmp_path / "cache")
    assert a.x.shape == (3, 120, 40) and a.lengths.tolist() == [51, 120, 120]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    b = extract(utts, cfg, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(a.x, b.x)
    sf.write(utts[0].path, _tone(seconds=0.7, seed=9), 16000)  # corpus changed -> new key
    extract(utts, cfg, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_worker_processes_give_the_same_features(tmp_path, monkeypatch):
    import privfl.parallel as parallel

    utts = []
    for i in range(6):
        p = tmp_path / f"w{i}.wav"
        sf.write(p, _tone(seconds=0.4 + 0.2 * i, f=150.0 + 40 * i, seed=i), 16000)
        utts.append(Utterance(f"w{i}", str(p), "s", "male", "sad"))
    cfg = FeatureConfig(max_frames=80)
    threads = torch.get_num_threads()
    alone = extract(utts, cfg, workers=1)
    assert torch.get_num_threads() == threads  # extraction's single-threading is undone
    monkeypatch.setattr(parallel, "MIN_POOL_ITEMS", 0)
    seen = []
    pooled = extract(utts, cfg, workers=2, progress=lambda done, total: seen.append((done, total)))
    np.testing.assert_array_equal(pooled.x, alone.x)
    np.testing.assert_array_equal(pooled.lengths, alone.lengths)
    assert seen[-1] == (6, 6) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_broken_file_in_a_worker_names_the_file(tmp_path, monkeypatch):
    import privfl.parallel as parallel

    good = tmp_path / "good.wav"
    sf.write(good, _tone(), 16000)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00")
    utts = [Utterance("g", str(good), "s", "male", "sad"), Utterance("b", str(bad), "s", "male", "sad")]
    monkeypatch.setattr(parallel, "MIN_POOL_ITEMS", 0)
    with pytest.raises(DataError, match="broken.wav"):
        extract(utts, FeatureConfig(), workers=2, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # no cache entry


def test_trim_silence_keeps_the_span_between_the_first_and_last_loud_frame():
    db = torch.tensor([-60.0, -45.0, 0.0, -50.0, -5.0, -31.0, -70.0])  # total power per frame, dB
    logmel = (db * np.log(10) / 10)[:, None] - np.log(40) + torch.zeros(7, 40)  # 40 equal bands
    kept = trim_silence(logmel, 30.0)
    torch.testing.assert_close(kept, logmel[2:5])  # the quiet frame 3 inside the span stays
    torch.testing.assert_close(trim_silence(logmel, 40.0), logmel[2:6])


def test_trimmed_features_drop_the_silence_around_a_tone(tmp_path):
    silence = np.zeros(8000, dtype=np.float32)  # 0.5 s each side
    sf.write(tmp_path / "a.wav", np.concatenate([silence, _tone(), silence]), 16000)
    utt = [Utterance("a", str(tmp_path / "a.wav"), "s", "female", "neutral")]
    full = extract(utt, FeatureConfig(max_frames=300))
    trimmed = extract(utt, FeatureConfig(max_frames=300, trim_db=30.0))
    assert full.lengths.tolist() == [201] and abs(int(trimmed.lengths[0]) - 101) <= 3
    assert cache_key(utt, FeatureConfig(), 1.0) != cache_key(utt, FeatureConfig(trim_db=30.0), 1.0)
    with pytest.raises(ConfigError, match="data.trim_db must be between 0"):
        DataConfig(trim_db=-3.0).validate()
