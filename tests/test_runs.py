import json

import numpy as np
import pytest
import torch

from privfl.config import ExperimentConfig
from privfl.data.dataset import ClientData
from privfl.errors import RunError
from privfl.fl.client import Update
from privfl.runs import RunDir


def test_create_refuses_existing_unless_overwrite(tmp_path):
    cfg = ExperimentConfig()
    RunDir.create(tmp_path / "r", cfg)
    with pytest.raises(RunError, match="already exists.*--resume"):
        RunDir.create(tmp_path / "r", cfg)
    RunDir.create(tmp_path / "r", cfg, overwrite=True)


def test_overwrite_refuses_foreign_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(RunError, match="not a privfl run directory"):
        RunDir.create(tmp_path / "mine", ExperimentConfig(), overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_checkpoint_and_metrics_round_trip(tmp_path):
    run = RunDir.create(tmp_path / "r", ExperimentConfig())
    w = np.arange(5, dtype=np.float32)
    state = {
        "loop": {"x": 1, "best": 0.1 + 0.2, "cm": [[1, 2], [3, 4]]},
        "privacy": {"history": [[1.1, 0.01, 3]]},
    }
    run.save_checkpoint(3, w, state)
    ckpt = run.load_checkpoint()
    assert ckpt["round"] == 3 and ckpt["state"] == state  # floats survive JSON exactly
    np.testing.assert_array_equal(ckpt["weights"], w)
    assert ckpt["weights"].dtype == np.float32
    # the loop state is JSON beside the weights; the weights file holds only a tensor and the round
    assert json.loads((run.path / "checkpoint.json").read_text())["state"] == state
    saved = torch.load(run.path / "checkpoint-0003.pt", weights_only=True)
    assert set(saved) == {"round", "weights"} and saved["round"] == 3
    w64 = np.linspace(0, 1, 7)
    run.save_checkpoint(4, w64, state)
    np.testing.assert_array_equal(run.load_checkpoint()["weights"], w64)
    assert not (run.path / "checkpoint-0003.pt").exists()
    with pytest.raises(TypeError):  # not plain JSON data: refused before anything is written
        run.save_checkpoint(5, w, {"loop": {"x": np.float32(1)}})
    assert run.load_checkpoint()["round"] == 4 and not (run.path / "checkpoint-0005.pt").exists()
    for r in range(1, 6):
        run.append_metrics({"round": r})
    run.truncate_metrics(3)
    assert [m["round"] for m in run.metrics()] == [1, 2, 3]
    assert not run.finished


def test_recorded_updates_are_compact_and_accurate(tmp_path):
    import torch

    run = RunDir.create(tmp_path / "r", ExperimentConfig())
    rng = np.random.default_rng(0)
    clients = [
        ClientData(i, torch.zeros(1), torch.zeros(1), torch.zeros(1), (f"s{i}",), ("female",))
        for i in range(3)
    ]
    ups = [Update(i, 2, (rng.standard_normal(1000) * 1e-4).astype(np.float32), 10 + i, 0.0) for i in range(3)]
    run.record_updates(2, np.zeros(1000, dtype=np.float32), ups, clients)
    got = run.load_updates(2)
    assert got["client_ids"].tolist() == [0, 1, 2] and got["speakers"].tolist() == ["s0", "s1", "s2"]
    for u, d in zip(ups, got["deltas"], strict=True):
        assert np.abs(d - u.delta).max() <= 1e-3 * np.abs(u.delta).max()
    assert run.recorded_rounds() == [2]
    with pytest.raises(RunError, match="--record-updates"):
        run.load_updates(5)


def test_open_checks_format(tmp_path):
    RunDir.create(tmp_path / "r", ExperimentConfig())
    (tmp_path / "r" / "run.json").write_text('{"privfl_format": 99}')
    with pytest.raises(RunError, match="format 99"):
        RunDir.open(tmp_path / "r")
    (tmp_path / "r" / "run.json").write_text('{"privfl_format": 1}')
    with pytest.raises(RunError, match="older privfl .* pickle, which this privfl does not open"):
        RunDir.open(tmp_path / "r")
    with pytest.raises(RunError, match="no config.toml"):
        RunDir.open(tmp_path / "nothing")
