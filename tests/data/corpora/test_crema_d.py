from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from privfl.data.corpora import load_corpus
from privfl.data.corpora.crema_d import load_crema_d
from privfl.errors import DataError

from .corpus_trees import (
    CREMA_ACTORS,
    LFS_POINTER,
    write_crema_d,
    write_demographics,
    write_empty,
    write_truncated,
    write_wav,
)

EXPECTED_GENDER = {f"crema-{a}": s.lower() for a, s in CREMA_ACTORS.items()}


@pytest.mark.parametrize("where", ["top", "processed"])
def test_demographics_at_either_location(tmp_path: Path, where: str) -> None:
    base = write_crema_d(tmp_path, demographics=where)
    corpus = load_crema_d(base)
    assert corpus.gender_of() == EXPECTED_GENDER
    # 4 actors x 2 sentences x {ANG, HAP, NEU, SAD}; DIS and FEA dropped.
    assert len(corpus.utterances) == 32
    assert corpus.counts("emotion") == Counter(neutral=8, happy=8, sad=8, angry=8)
    assert corpus.dropped_labels == {"DIS": 8, "FEA": 8}
    assert corpus.skipped == ()
    u = next(u for u in corpus.utterances if u.id == "1002_IEO_SAD_HI")
    assert (u.speaker, u.gender, u.emotion, u.session) == ("crema-1002", "female", "sad", "")
    assert Path(u.path).is_absolute()


def test_without_demographics_gender_is_unknown(tmp_path: Path) -> None:
    base = write_crema_d(tmp_path, demographics=None)
    corpus = load_crema_d(base)
    assert set(corpus.gender_of().values()) == {"unknown"}
    assert len(corpus.speakers()) == 4


def test_explicit_demographics_path_and_partial_csv(tmp_path: Path) -> None:
    base = write_crema_d(tmp_path, demographics=None)
    csv_path = write_demographics(
        tmp_path / "elsewhere.csv", {"1001": "Male"}, extra_rows=[["10x2", "30", "Male"]]
    )
    corpus = load_corpus("crema-d", tmp_path, demographics=csv_path)
    assert corpus.gender_of()["crema-1001"] == "male"
    assert corpus.gender_of()["crema-1002"] == "unknown"
    assert [s.reason.split(":")[0] for s in corpus.skipped] == ["bad demographics row"]
    with pytest.raises(DataError, match="does not exist"):
        load_crema_d(base, demographics=tmp_path / "missing.csv")


def test_root_may_be_parent_base_or_audio_folder(tmp_path: Path) -> None:
    base = write_crema_d(tmp_path)
    a, b, c = load_crema_d(tmp_path), load_crema_d(base), load_crema_d(base / "AudioWAV")
    assert a == b == c


def test_malformed_and_broken_files_are_skipped(tmp_path: Path) -> None:
    base = write_crema_d(tmp_path)
    audio = base / "AudioWAV"
    write_wav(audio / "1001_DFA_ANG.wav")  # three fields
    write_wav(audio / "1001_DFA_XYZ_XX.wav")  # unknown emotion
    write_wav(audio / "1001_ABC_ANG_XX.wav")  # unknown sentence
    write_wav(audio / "1001_DFA_ANG_ZZ.wav")  # unknown level
    write_empty(audio / "1001_ITS_SAD_XX.wav")
    write_truncated(audio / "1002_ITS_NEU_XX.wav")
    (audio / "1003_ITS_HAP_XX.wav").write_bytes(LFS_POINTER)
    write_empty(audio / "1004_ITS_DIS_XX.wav")  # dropped label: not even checked
    (audio / "notes.txt").write_text("not audio")
    corpus = load_crema_d(base)
    kinds = Counter(s.reason.split(":")[0] for s in corpus.skipped)
    assert kinds == Counter(
        {"bad file name": 3, "unknown emotion code": 1, "empty": 1, "truncated": 1, "git-lfs pointer": 1}
    )
    assert len(corpus.utterances) == 32 and corpus.dropped_labels == {"DIS": 9, "FEA": 8}
    with pytest.raises(DataError, match="strict"):
        load_crema_d(base, strict=True)


def test_missing_audio_folder_shows_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"AudioWAV[\s\S]*1001_DFA_ANG_XX\.wav"):
        load_crema_d(tmp_path)


def test_all_files_broken_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "AudioWAV").mkdir()
    (tmp_path / "AudioWAV" / "1001_DFA_ANG_XX.wav").write_bytes(LFS_POINTER)
    with pytest.raises(DataError, match=r"no usable utterances.*git-lfs pointer: 1"):
        load_crema_d(tmp_path)
