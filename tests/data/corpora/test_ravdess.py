from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from privfl.data.corpora.ravdess import load_ravdess
from privfl.errors import DataError

from .corpus_trees import ravdess_name, write_ravdess, write_truncated, write_wav


def test_speech_four_classes_genders_and_dropped(tmp_path: Path) -> None:
    corpus = load_ravdess(write_ravdess(tmp_path))
    assert corpus.speakers() == ["ravdess-01", "ravdess-02", "ravdess-03", "ravdess-04"]
    assert corpus.gender_of() == {
        "ravdess-01": "male",
        "ravdess-02": "female",
        "ravdess-03": "male",
        "ravdess-04": "female",
    }
    # 4 actors x 2 statements per emotion.
    assert corpus.counts("emotion") == Counter(neutral=8, happy=8, sad=8, angry=8)
    assert corpus.dropped_labels == {"calm": 8, "disgust": 8, "fearful": 8, "surprised": 8, "song": 24}
    assert corpus.skipped == ()
    u = next(u for u in corpus.utterances if u.id == "03-01-05-01-02-01-04")
    assert (u.speaker, u.gender, u.emotion) == ("ravdess-04", "female", "angry")


def test_calm_as_neutral(tmp_path: Path) -> None:
    corpus = load_ravdess(write_ravdess(tmp_path, songs=False), calm_as_neutral=True)
    assert corpus.counts("emotion")["neutral"] == 16
    assert "calm" not in corpus.dropped_labels and "song" not in corpus.dropped_labels


def test_actor_folders_one_level_down(tmp_path: Path) -> None:
    write_ravdess(tmp_path / "Audio_Speech_Actors_01-24", actors=("05",), songs=False)
    corpus = load_ravdess(tmp_path)
    assert corpus.speakers() == ["ravdess-05"]


def test_malformed_names_and_broken_files(tmp_path: Path) -> None:
    root = write_ravdess(tmp_path, actors=("01", "02"))
    folder = tmp_path / "Actor_01"
    write_wav(folder / "03-01-05-01-02-01.wav")  # six fields
    write_wav(folder / ravdess_name("09", "01"))  # no emotion 09
    write_wav(folder / ravdess_name("03", "02"))  # actor 02 in Actor_01
    write_wav(folder / ravdess_name("04", "01", intensity="03"))
    write_truncated(folder / ravdess_name("03", "01", repetition="02"))
    write_wav(folder / ravdess_name("04", "01", repetition="02"), seconds=0.02)
    corpus = load_ravdess(root)
    kinds = Counter(s.reason.split(":")[0] for s in corpus.skipped)
    assert kinds == Counter({"bad file name": 4, "truncated": 1, "too short": 1})
    assert any("does not match its folder" in s.reason for s in corpus.skipped)
    assert len(corpus.utterances) == 16
    with pytest.raises(DataError, match="strict"):
        load_ravdess(root, strict=True)


def test_wrong_directory(tmp_path: Path) -> None:
    (tmp_path / "Actor_x").mkdir()
    with pytest.raises(DataError, match=r"no Actor_NN folders[\s\S]*Actor_01/03-01-05-01-02-01-01\.wav"):
        load_ravdess(tmp_path)
