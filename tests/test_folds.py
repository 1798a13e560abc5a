"""Speaker-independent k-fold runs: disjoint gender-balanced test folds, one run per fold, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from privfl.config import ExperimentConfig
from privfl.data.dataset import load_corpus_for, split_for
from privfl.data.records import Corpus, Utterance
from privfl.data.splits import kfold_split, speaker_folds
from privfl.errors import ConfigError, DataError
from privfl.folds import fold_dir, run_folds
from privfl.runs import RunDir
from tests.data.corpora.corpus_trees import write_iemocap


def _corpus(females: int, males: int) -> Corpus:
    utts = [
        Utterance(f"{g}{i}-u", f"/x/{g}{i}.wav", f"{g}{i:02d}", "female" if g == "f" else "male", "sad")
        for g, n in (("f", females), ("m", males))
        for i in range(n)
    ]
    return Corpus("toy", tuple(utts))


def test_folds_cover_every_speaker_once_with_two_of_each_gender() -> None:
    corpus = _corpus(12, 12)
    folds = speaker_folds(corpus, 6, seed=3)
    flat = [s for f in folds for s in f]
    assert sorted(flat) == corpus.speakers()
    for fold in folds:
        assert sorted(s[0] for s in fold) == ["f", "f", "m", "m"]
    assert folds != speaker_folds(corpus, 6, seed=4)
    assert folds == speaker_folds(corpus, 6, seed=3)


def test_uneven_folds_differ_by_at_most_one_speaker() -> None:
    sizes = sorted(len(f) for f in speaker_folds(_corpus(5, 4), 4, seed=0))
    assert sizes == [2, 2, 2, 3]


def test_kfold_split_draws_validation_from_the_training_speakers() -> None:
    corpus = _corpus(12, 12)
    folds = speaker_folds(corpus, 6, seed=0)
    for fold in range(1, 7):
        split = kfold_split(corpus, k=6, fold=fold, n_val=2, n_aux=2, seed=0)
        assert split.test == folds[fold - 1]
        assert len(split.val) == 2 and len(split.aux) == 2 and len(split.train) == 16
        assert sorted(s[0] for s in split.val) == ["f", "m"]


def test_too_many_folds_and_bad_fold_numbers_are_refused() -> None:
    with pytest.raises(DataError, match="too few for 30 folds"):
        speaker_folds(_corpus(12, 12), 30, seed=0)
    with pytest.raises(ConfigError, match="data.fold must be in 0..6"):
        ExperimentConfig().override({"data.folds": 6, "data.fold": 7}).validate()
    with pytest.raises(ConfigError, match="data.folds must be 0"):
        ExperimentConfig().override({"data.folds": 1}).validate()


def test_iemocap_folds_are_leave_one_session_out(tmp_path: Path) -> None:
    release = write_iemocap(tmp_path)
    base = ExperimentConfig().override(
        {"data.dataset": "iemocap", "data.data_dir": str(release), "data.folds": 5}
    )
    base.validate()
    corpus = load_corpus_for(base.data)
    tests = []
    for fold in range(1, 6):
        split = split_for(corpus, base.override({"data.fold": fold}).data, 0)
        assert split.test == (f"Ses0{fold}F",) and split.val == (f"Ses0{fold}M",)
        assert not any(s.startswith(f"Ses0{fold}") for s in split.train)
        tests.append(split.test)
    assert len(set(tests)) == 5
    with pytest.raises(ConfigError, match="5 folds"):
        base.override({"data.folds": 4}).validate()


FOLD_SETS = {
    "data.folds": 4,
    "data.aux_speakers": 0,
    "data.val_speakers": 1,
    "data.normalize": "speaker",
    "train.mode": "central",
}


def test_run_folds_writes_one_run_per_fold_and_a_summary(tiny_config, tmp_path) -> None:
    cfg = tiny_config.override(FOLD_SETS)
    summary = run_folds(cfg, tmp_path / "cv")
    assert len(summary["folds"]) == 4
    tests = [tuple(f["test_speakers"]) for f in summary["folds"]]
    assert sorted(s for t in tests for s in t) == sorted({s for t in tests for s in t})  # disjoint
    assert len({s for t in tests for s in t}) == 8
    uars = [f["test_uar_at_best_val"] for f in summary["folds"]]
    assert summary["test_uar_mean"] == pytest.approx(sum(uars) / 4)
    assert sum(map(sum, summary["pooled_confusion"])) == sum(f["test_utterances"] for f in summary["folds"])
    assert (tmp_path / "cv" / "confusion.png").stat().st_size > 0
    for fold in range(1, 5):
        assert RunDir.open(fold_dir(tmp_path / "cv", fold)).config().data.fold == fold
    assert json.loads((tmp_path / "cv" / "summary.json").read_text()) == summary


def test_resume_skips_finished_folds_and_finishes_the_rest(tiny_config, tmp_path) -> None:
    cfg = tiny_config.override(FOLD_SETS)
    whole = run_folds(cfg, tmp_path / "whole")
    # a parent stopped during fold 3: folds 1-2 finished, fold 3 has a checkpoint but no summary
    part = tmp_path / "part"
    run_folds(cfg, part)
    (part / "summary.json").unlink()
    (fold_dir(part, 3) / "summary.json").unlink()
    import shutil

    shutil.rmtree(fold_dir(part, 4))
    finished_1 = (fold_dir(part, 1) / "metrics.jsonl").read_text()
    resumed = run_folds(cfg, resume=part)
    assert (fold_dir(part, 1) / "metrics.jsonl").read_text() == finished_1  # not retrained
    strip = lambda s: [{k: v for k, v in f.items() if k not in ("seconds", "run_dir")} for f in s["folds"]]  # noqa: E731
    assert strip(resumed) == strip(whole)


def test_cli_runs_folds_and_prints_mean_and_sd(tmp_path) -> None:
    from click.testing import CliRunner

    from privfl.cli import main
    from tests.conftest import TINY

    sets = {**TINY, **FOLD_SETS, "train.rounds": 1}
    args = ["train", *[a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "cv")])
    assert result.exit_code == 0, result.output
    assert "4 folds: test UAR" in result.output and "+-" in result.output


def test_data_check_lists_every_folds_test_speakers(tmp_path) -> None:
    from click.testing import CliRunner

    from privfl.cli import main

    release = write_iemocap(tmp_path)
    args = ["data", "check", "--dataset", "iemocap", "--data-dir", str(release), "--folds", "5", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["folds"] == {str(i): [f"Ses0{i}F"] for i in range(1, 6)}
