"""Real-corpus plumbing through the config: training writes skipped.csv, config fields reach loaders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from privfl.cli import main
from privfl.config import ExperimentConfig
from privfl.data.dataset import load_corpus_for, split_for
from privfl.errors import ConfigError
from privfl.experiment import train
from tests.data.corpora.corpus_trees import (
    ravdess_name,
    write_crema_d,
    write_demographics,
    write_iemocap,
    write_ravdess,
    write_truncated,
)


def _ravdess_with_defects(tmp_path: Path) -> Path:
    root = write_ravdess(tmp_path / "RAVDESS", songs=False)
    write_truncated(root / "Actor_01" / ravdess_name("03", "01", statement="02", repetition="02"))
    (root / "Actor_02" / "03-01-05-oops.wav").write_bytes(b"RIFF")  # a name that does not parse
    return root


def test_training_on_a_real_corpus_lists_what_was_skipped(tmp_path: Path) -> None:
    root = _ravdess_with_defects(tmp_path)
    sets = {
        "data.val_speakers": 1,
        "data.test_speakers": 1,
        "data.aux_speakers": 0,
        "data.max_frames": 40,
        "train.batch_size": 4,
    }
    args = ["train", "--dataset", "ravdess", "--data-dir", str(root), "--clients", "2", "--rounds", "1"]
    args += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (
        f"2 corpus file(s) or label line(s) were skipped: see {tmp_path / 'run'}/skipped.csv" in result.output
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    with open(tmp_path / "run" / "skipped.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {Path(r["path"]).name for r in rows} == {
        ravdess_name("03", "01", statement="02", repetition="02"),
        "03-01-05-oops.wav",
    }
    assert any(r["reason"].startswith("truncated") for r in rows)
    corpus = summary["corpus"]
    assert corpus["skipped"] == 2
    # 4 actors x 2 statements of calm, fearful, disgust, surprised are dropped, not skipped
    assert corpus["dropped_labels"] == {"calm": 8, "disgust": 8, "fearful": 8, "surprised": 8}
    assert corpus["utterances"] == 4 * 4 * 2
    assert sorted(s for role in summary["split"].values() for s in role) == [
        "ravdess-01",
        "ravdess-02",
        "ravdess-03",
        "ravdess-04",
    ]


def test_clean_synthetic_run_writes_a_header_only_skipped_csv(tiny_config, tmp_path: Path) -> None:
    train(tiny_config.override({"train.rounds": 1}), tmp_path / "run")
    assert (tmp_path / "run" / "skipped.csv").read_text() == "path,reason\n"


def test_iemocap_protocols_keep_every_training_speaker_by_default(tmp_path: Path) -> None:
    release = write_iemocap(tmp_path)
    base = ExperimentConfig().override({"data.dataset": "iemocap", "data.data_dir": str(release)})
    corpus = load_corpus_for(base.data)
    paper = split_for(corpus, base.data, seed=0)
    assert len(paper.train) == 8 and paper.aux == () and paper.test == ("Ses05F",)
    loso = base.override({"data.split": "loso", "data.test_session": 2, "data.test_gender": "male"})
    fold = split_for(corpus, loso.data, seed=0)
    assert fold.test == ("Ses02M",) and fold.val == ("Ses02F",) and len(fold.train) == 8
    with_aux = base.override({"data.aux_speakers": 2})
    assert len(split_for(corpus, with_aux.data, seed=0).aux) == 2


def test_crema_d_demographics_path_from_the_config(tmp_path: Path) -> None:
    base = write_crema_d(tmp_path, demographics=None)
    elsewhere = write_demographics(
        tmp_path / "meta" / "demo.csv", {"1001": "Male", "1002": "Female", "1003": "Female", "1004": "Male"}
    )
    cfg = ExperimentConfig().override({"data.dataset": "crema-d", "data.data_dir": str(base)})
    assert set(load_corpus_for(cfg.data).gender_of().values()) == {"unknown"}
    named = cfg.override({"data.demographics": str(elsewhere)})
    assert load_corpus_for(named.data).gender_of()["crema-1002"] == "female"


def test_demographics_for_another_corpus_is_refused() -> None:
    with pytest.raises(ConfigError, match="demographics.*remove the setting"):
        ExperimentConfig().override({"data.demographics": "/x/VideoDemographics.csv"}).validate()


def test_data_check_takes_config_overrides(tmp_path: Path) -> None:
    root = write_ravdess(tmp_path / "RAVDESS", songs=False)
    runner = CliRunner()
    too_many = runner.invoke(main, ["data", "check", "--dataset", "ravdess", "--data-dir", str(root)])
    assert too_many.exit_code == 2
    assert "4 speakers" in too_many.output and "data.aux_speakers=0" in too_many.output
    ok = runner.invoke(
        main,
        [
            "data",
            "check",
            "--dataset",
            "ravdess",
            "--data-dir",
            str(root),
            "--json",
            "--set",
            "data.aux_speakers=0",
            "--set",
            "data.val_speakers=1",
            "--set",
            "data.test_speakers=1",
        ],
    )
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.output)
    assert {role: len(v["speakers"]) for role, v in report["roles"].items()} == {
        "train": 2,
        "val": 1,
        "test": 1,
        "aux": 0,
    }
    assert any("only 2 training speaker" in p for p in report["problems"])
