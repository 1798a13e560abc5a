"""Any corpus by manifest: metadata.csv rows -> utterances, skipped rows with reasons, end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from privfl.cli import main
from privfl.config import ExperimentConfig
from privfl.data.corpora import load_corpus
from privfl.data.dataset import load_corpus_for, split_for
from privfl.errors import ConfigError, DataError
from tests.data.corpora.corpus_trees import write_wav

SPEAKERS = {"ana": "F", "ben": "M", "cat": "female", "dan": "male", "eva": "f", "fil": "m", "gus": ""}
LABELS = ("Angry", "hap", "sad", "neutral")  # "hap" needs label_map; case does not matter
SPLITS = {"ana": "train", "ben": "train", "cat": "train", "dan": "train", "eva": "validation", "fil": "test"}


def write_manifest_corpus(root: Path, *, split_column: bool = True) -> Path:
    """7 speakers x 4 labels x 2 takes of 0.3 s, plus four rows the loader must skip."""
    rows = []
    for i, (speaker, gender) in enumerate(SPEAKERS.items()):
        for j, label in enumerate(LABELS):
            for take in range(2):
                name = f"{speaker}/{label.lower()}_{take}.wav"
                write_wav(root / name, seconds=0.3, seed=i * 10 + j * 2 + take)
                rows.append([name, speaker, gender, label, SPLITS.get(speaker, "train")])
    write_wav(root / "ana" / "fear_0.wav", seconds=0.3)
    rows.append(["ana/fear_0.wav", "ana", "F", "fear", "train"])  # unknown label
    rows.append(["ana/gone.wav", "ana", "F", "sad", "train"])  # missing file
    (root / "ben" / "broken.wav").write_bytes(b"RIFF0000WAVE")
    rows.append(["ben/broken.wav", "ben", "M", "sad", "train"])  # unreadable
    rows.append(["", "ben", "M", "sad", "train"])  # empty file_name
    with open(root / "metadata.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_name", "speaker", "gender", "emotion"] + (["split"] if split_column else []))
        writer.writerows(r if split_column else r[:4] for r in rows)
    return root


def test_rows_become_utterances_and_bad_rows_are_skipped_with_reasons(tmp_path: Path) -> None:
    root = write_manifest_corpus(tmp_path / "corpus")
    corpus = load_corpus("manifest", root, label_map=("hap=happy",))
    assert len(corpus.utterances) == 7 * 4 * 2
    assert corpus.counts("emotion") == {"angry": 14, "happy": 14, "sad": 14, "neutral": 14}
    genders = corpus.gender_of()
    assert genders["ana"] == "female" and genders["dan"] == "male" and genders["gus"] == "unknown"
    reasons = sorted(s.reason.split(":", 1)[0] for s in corpus.skipped)
    assert reasons == ["empty field", "missing", "unknown label", "unreadable"]
    assert next(u for u in corpus.utterances if u.id == "fil/sad_0").split == "test"


def test_without_the_label_map_hap_is_an_unknown_label(tmp_path: Path) -> None:
    corpus = load_corpus("manifest", write_manifest_corpus(tmp_path / "c"))
    unknown = [s for s in corpus.skipped if s.reason.startswith("unknown label")]
    assert len(unknown) == 1 + 14 and "data.label_map" in unknown[0].reason


def test_emotion_subset_drops_and_counts_the_other_classes(tmp_path: Path) -> None:
    root = write_manifest_corpus(tmp_path / "c")
    corpus = load_corpus("manifest", root, label_map=("hap=happy",), emotions=("angry", "sad"))
    assert set(corpus.counts("emotion")) == {"angry", "sad"}
    assert corpus.dropped_labels == {"happy": 14, "neutral": 14}


def test_manifest_split_column_gives_the_roles(tmp_path: Path) -> None:
    root = write_manifest_corpus(tmp_path / "c")
    cfg = (
        ExperimentConfig()
        .override(
            {
                "data.dataset": "manifest",
                "data.data_dir": str(root),
                "data.split": "manifest",
                "data.label_map": ["hap=happy"],
                "data.aux_speakers": 0,
            }
        )
        .validate()
    )
    corpus = load_corpus_for(cfg.data)
    split = split_for(corpus, cfg.data, 0)
    assert split.val == ("eva",) and split.test == ("fil",) and "gus" in split.train
    no_column = write_manifest_corpus(tmp_path / "d", split_column=False)
    with pytest.raises(DataError, match="has no split value"):
        split_for(load_corpus_for(cfg.override({"data.data_dir": str(no_column)}).data), cfg.data, 0)


def test_config_errors_name_the_bad_value(tmp_path: Path) -> None:
    base = ExperimentConfig().override({"data.dataset": "manifest", "data.data_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="'ang:angry' is not 'source=target'"):
        base.override({"data.label_map": ["ang:angry"]}).validate()
    with pytest.raises(ConfigError, match="data.emotions holds 'fear'"):
        base.override({"data.emotions": ["fear"]}).validate()
    with pytest.raises(ConfigError, match="apply to --dataset manifest"):
        ExperimentConfig().override({"data.emotions": ["sad"]}).validate()
    with pytest.raises(DataError, match="metadata.csv does not exist"):
        load_corpus_for(base.data)


def test_train_data_check_and_attack_end_to_end(tmp_path: Path) -> None:
    root = write_manifest_corpus(tmp_path / "corpus")
    common = ["--dataset", "manifest", "--data-dir", str(root), "--set", 'data.label_map=["hap=happy"]']
    check = CliRunner().invoke(main, ["data", "check", *common, "--split", "manifest", "--json"])
    assert check.exit_code == 0, check.output
    report = json.loads(check.output)
    assert report["corpus"] == "manifest" and sum(report["emotions"].values()) == 56
    assert "unknown label" in check.output and "missing" in check.output
    run = tmp_path / "run"
    sets = {
        "data.split": '"manifest"',
        "data.aux_speakers": 2,
        "data.max_frames": 30,
        "data.normalize": '"speaker"',
        "model.conv_channels": 4,
        "model.fc_hidden": 8,
        "train.batch_size": 4,
    }
    args = ["train", *common, "--partition", "by-speaker", "--clients", "3", "--rounds", "2"]
    args += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    result = CliRunner().invoke(main, [*args, "--record-updates", "--out", str(run)])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["corpus"] == {"utterances": 56, "skipped": 4, "dropped_labels": {}}
    assert summary["split"]["test"] == ["fil"] and len(summary["split"]["aux"]) == 2
    with open(run / "skipped.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 4
    fast = ["--shadow-clients", "4", "--max-rounds", "1", "--bootstrap", "20", "--candidates", "4"]
    attacked = CliRunner().invoke(main, ["attack", "all", "--run", str(run), *fast])
    assert attacked.exit_code == 0, attacked.output
    doc = json.loads((run / "attacks" / "attack.json").read_text())
    assert set(doc["attacks"]) == {"gender", "membership"}


def test_a_manifest_without_a_split_column_runs_speaker_folds(tmp_path: Path) -> None:
    """No split column: --folds gives every speaker (gender unknown included) one test fold."""
    root = write_manifest_corpus(tmp_path / "corpus", split_column=False)
    out = tmp_path / "cv"
    args = ["train", "--dataset", "manifest", "--data-dir", str(root), "--mode", "central", "--folds", "3"]
    args += ["--rounds", "1", "--set", 'data.label_map=["hap=happy"]', "--set", "data.aux_speakers=0"]
    args += ["--set", "data.val_speakers=1", "--set", "data.max_frames=30", "--set", "model.conv_channels=4"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    tested = [s for f in summary["folds"] for s in f["test_speakers"]]
    assert sorted(tested) == sorted(SPEAKERS) and len(summary["folds"]) == 3
    assert sum(f["test_utterances"] for f in summary["folds"]) == 56
