"""End-to-end runs on a tiny synthetic corpus: run directory, resume, determinism."""

import json

import numpy as np
import pytest

from privfl.errors import DataError, RunError
from privfl.experiment import train
from privfl.runs import RunDir


def test_two_round_run_writes_a_complete_run_directory(tiny_config, tmp_path):
    summary = train(tiny_config, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.toml", "metrics.jsonl", "summary.json", "model.pt", "curves.png", "checkpoint.json"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for key in ("train_loss", "val_uar", "test_uar", "val_acc", "test_acc", "seconds", "bytes_up"):
        assert key in rows[0]
    assert summary["test_uar_at_best_val"] == rows[summary["best_round"] - 1]["test_uar"]
    assert summary["clients"] == 2 and summary["rounds"] == 2
    assert RunDir.open(run).config() == tiny_config


def test_same_config_and_seed_give_the_same_numbers(tiny_config, tmp_path):
    a = train(tiny_config, tmp_path / "a")
    b = train(tiny_config, tmp_path / "b")
    assert a["final_test_uar"] == b["final_test_uar"]
    np.testing.assert_array_equal(
        RunDir(tmp_path / "a").load_checkpoint()["weights"],
        RunDir(tmp_path / "b").load_checkpoint()["weights"],
    )
    train(tiny_config.override({"seed": 1}), tmp_path / "c")
    assert not np.array_equal(
        RunDir(tmp_path / "a").load_checkpoint()["weights"],
        RunDir(tmp_path / "c").load_checkpoint()["weights"],
    )


def test_resume_ends_with_the_same_model(tiny_config, tmp_path):
    cfg = tiny_config.override({"train.rounds": 3, "train.fraction": 0.5})
    train(cfg, tmp_path / "full")
    train(cfg.override({"train.rounds": 1}), tmp_path / "part")  # a run stopped after round 1
    train(cfg, resume=tmp_path / "part")
    full, part = RunDir(tmp_path / "full"), RunDir(tmp_path / "part")
    np.testing.assert_array_equal(full.load_checkpoint()["weights"], part.load_checkpoint()["weights"])
    assert [m["round"] for m in part.metrics()] == [1, 2, 3]
    assert full.summary()["final_test_uar"] == part.summary()["final_test_uar"]


def test_resume_refuses_a_changed_config(tiny_config, tmp_path):
    train(tiny_config, tmp_path / "r")
    with pytest.raises(Exception, match="train.lr"):
        train(tiny_config.override({"train.lr": 0.5}), resume=tmp_path / "r")


def test_existing_run_directory_is_refused_and_untouched(tiny_config, tmp_path):
    train(tiny_config, tmp_path / "r")
    before = (tmp_path / "r" / "summary.json").read_bytes()
    with pytest.raises(RunError, match="already exists"):
        train(tiny_config, tmp_path / "r")
    assert (tmp_path / "r" / "summary.json").read_bytes() == before


def test_too_many_clients_for_by_speaker_leaves_no_run_directory(tiny_config, tmp_path):
    cfg = tiny_config.override({"data.partition": "by-speaker", "train.clients": 9})
    with pytest.raises(DataError, match="9 clients"):
        train(cfg, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_central_mode_uses_one_client(tiny_config, tmp_path):
    summary = train(tiny_config.override({"train.mode": "central"}), tmp_path / "c")
    assert summary["clients"] == 1


def test_best_round_is_chosen_on_validation_and_cannot_see_the_test_set(tiny_config, tmp_path, monkeypatch):
    """Runs that differ only in their test labels pick the same best round: the first argmax of val UAR."""
    import dataclasses

    from privfl import experiment

    cfg = tiny_config.override({"train.rounds": 6, "train.lr": 0.05})
    real_prepare = experiment.prepare

    def relabelled_test(c, progress=None):
        data = real_prepare(c, progress)
        test = dataclasses.replace(data.test, y=(data.test.y + 1) % 4)  # a test set no model can learn
        return dataclasses.replace(data, test=test)

    runs = {"plain": train(cfg, tmp_path / "plain")}
    monkeypatch.setattr(experiment, "prepare", relabelled_test)
    runs["relabelled"] = train(cfg, tmp_path / "relabelled")
    for name, summary in runs.items():
        rows = RunDir(tmp_path / name).metrics()
        val = [r["val_uar"] for r in rows]
        best = int(np.argmax(val))  # the first round with the highest validation UAR
        assert summary["best_round"] == rows[best]["round"], (name, val, [r["test_uar"] for r in rows])
        assert summary["best_val_uar"] == val[best]
        assert summary["test_uar_at_best_val"] == rows[best]["test_uar"]
    assert runs["plain"]["best_round"] == runs["relabelled"]["best_round"]
    assert runs["plain"]["test_uar_at_best_val"] != runs["relabelled"]["test_uar_at_best_val"]
