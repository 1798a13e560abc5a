"""data.normalize: per-speaker and training-set log-Mel normalisation, on real frames only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privfl.config import DATASETS, FOUR_CLASSES, ExperimentConfig
from privfl.data import corpora
from privfl.data.dataset import SpeechSet, normalised
from privfl.data.features import FeatureConfig, apply_band_stats, band_stats, cache_key, normalise_groups
from privfl.data.records import EMOTIONS, Utterance
from privfl.errors import ConfigError


def test_config_lists_agree_with_the_data_layer() -> None:
    assert FOUR_CLASSES == EMOTIONS and DATASETS == corpora.DATASETS


def _frames(seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, size=(6, 10, 3)).astype(np.float32)
    x[:3] += np.array([5.0, -1.0, 0.5], dtype=np.float32)  # speaker a sits elsewhere
    lengths = np.array([10, 7, 4, 10, 9, 2])
    for i, n in enumerate(lengths):
        x[i, n:] = 0.0
    return x, lengths, ("a", "a", "a", "b", "b", "b")


def test_each_speaker_has_zero_mean_unit_variance_over_its_real_frames() -> None:
    x, lengths, speakers = _frames()
    out = normalise_groups(x, lengths, speakers)
    real = np.arange(10)[None, :] < lengths[:, None]
    for rows in (slice(0, 3), slice(3, 6)):
        frames = out[rows][real[rows]]
        np.testing.assert_allclose(frames.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(frames.std(axis=0), 1.0, atol=1e-3)
    assert not out[~real].any()  # padding stays zero
    # one speaker's statistics never depend on another speaker's frames
    y = x.copy()
    y[3:] *= 10
    np.testing.assert_array_equal(normalise_groups(y, lengths, speakers)[:3], out[:3])


def test_band_stats_by_hand() -> None:
    x = np.array([[[1.0], [3.0], [0.0]], [[5.0], [0.0], [0.0]]], dtype=np.float32)
    mean, std = band_stats(x, np.array([2, 1]))
    assert mean == pytest.approx([3.0]) and std == pytest.approx([np.sqrt(8 / 3)])
    out = apply_band_stats(x, np.array([2, 1]), (mean, std))
    assert out[0, 2, 0] == 0.0 and out[1, 0, 0] == pytest.approx(2 / np.sqrt(8 / 3), rel=1e-4)


def _set(x, lengths, speakers) -> SpeechSet:
    n = len(speakers)
    return SpeechSet(
        torch.from_numpy(x),
        torch.from_numpy(lengths),
        torch.zeros(n, dtype=torch.int64),
        speakers,
        ("female",) * n,
        tuple(str(i) for i in range(n)),
    )


def test_global_normalisation_uses_the_training_statistics_for_every_role() -> None:
    x, lengths, speakers = _frames()
    train, test = _set(x[:3], lengths[:3], speakers[:3]), _set(x[3:], lengths[3:], speakers[3:])
    empty = train.take(np.array([], dtype=np.int64))
    sets, _ = normalised({"train": train, "val": test, "test": test, "aux": empty}, [], "global")
    stats = band_stats(x[:3], lengths[:3])
    np.testing.assert_allclose(sets["test"].x.numpy(), apply_band_stats(x[3:], lengths[3:], stats))
    same, _ = normalised({"train": train}, [], "utterance")
    assert same["train"] is train


def test_raw_features_have_their_own_cache_key_and_the_default_keeps_its_old_one(tmp_path) -> None:
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"x")
    utts = [Utterance("a", str(wav), "s", "female", "sad")]
    assert cache_key(utts, FeatureConfig(), 1.0) != cache_key(
        utts, FeatureConfig(per_utterance_norm=False), 1.0
    )
    import hashlib
    import json
    import os
    from dataclasses import asdict

    from privfl.data.features import FEATURE_VERSION

    params = asdict(FeatureConfig())
    params.pop("per_utterance_norm")
    params.pop("trim_db")  # the keys written before these fields existed
    h = hashlib.sha256(json.dumps([FEATURE_VERSION, params, 1.0]).encode())
    st = os.stat(wav)
    h.update(f"a\0{wav}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    assert cache_key(utts, FeatureConfig(), 1.0) == h.hexdigest()[:20]


def test_unknown_normalisation_is_refused() -> None:
    with pytest.raises(ConfigError, match="data.normalize 'cmvn' is not one of"):
        ExperimentConfig().override({"data.normalize": "cmvn"}).validate()


def test_speaker_and_training_set_statistics_carry_one_record_into_the_others() -> None:
    """Why DP refuses them: a neighbouring dataset (record 0 replaced) moves record 1's features."""
    x, lengths, speakers = _frames()
    y = x.copy()
    y[0, : lengths[0]] += 4.0  # replace speaker a's first record
    grouped = normalise_groups(x, lengths, speakers), normalise_groups(y, lengths, speakers)
    assert not np.allclose(grouped[0][1], grouped[1][1])  # speaker a's second record moved
    np.testing.assert_array_equal(grouped[0][3:], grouped[1][3:])  # speaker b's did not
    pooled = (
        apply_band_stats(x, lengths, band_stats(x, lengths)),
        apply_band_stats(y, lengths, band_stats(y, lengths)),
    )
    assert not np.allclose(pooled[0][4], pooled[1][4])  # even another speaker's record moved


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        ({"train.mode": "dp", "data.normalize": "speaker"}, "its speaker"),
        ({"train.mode": "dp", "data.normalize": "global"}, "the whole training set"),
        ({"train.mode": "user-dp", "data.normalize": "global"}, "pooled across clients"),
        ({"train.mode": "user-dp", "data.normalize": "speaker", "data.partition": "iid"}, "partition 'iid'"),
        (
            {"train.mode": "user-dp", "data.normalize": "speaker", "data.partition": "dirichlet"},
            "partition 'dirichlet'",
        ),
        ({"train.mode": "dp", "data.normalize": "utterance"}, None),
        ({"train.mode": "dp", "data.normalize": "none"}, None),
        ({"train.mode": "user-dp", "data.normalize": "speaker", "data.partition": "by-speaker"}, None),
        ({"train.mode": "fedavg", "data.normalize": "global"}, None),
    ],
)
def test_dp_refuses_normalisation_that_crosses_its_unit(overrides: dict, refused: str | None) -> None:
    cfg = ExperimentConfig().override({**overrides, "dp.noise_multiplier": 1.0})
    if overrides["train.mode"] == "fedavg":
        cfg = cfg.override({"dp.noise_multiplier": None})
    if refused is None:
        cfg.validate()
        return
    with pytest.raises(ConfigError, match="accounting does not cover") as err:
        cfg.validate()
    message = str(err.value)
    assert refused in message and f"data.normalize {overrides['data.normalize']!r}" in message
    assert "data.normalize = 'utterance'" in message  # the fix is named
