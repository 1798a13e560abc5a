from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from privfl.data.corpora import load_corpus
from privfl.data.corpora.iemocap import load_iemocap
from privfl.errors import ConfigError, DataError

from .corpus_trees import (
    write_empty,
    write_header_only,
    write_iemocap,
    write_iemocap_dialog,
    write_truncated,
    write_wav,
)

SPEAKERS = [f"Ses0{s}{g}" for s in range(1, 6) for g in "FM"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return write_iemocap(tmp_path_factory.mktemp("iemocap"))


def test_clean_release_counts_speakers_and_labels(clean: Path) -> None:
    corpus = load_iemocap(clean)
    assert corpus.name == "iemocap"
    assert corpus.speakers() == sorted(SPEAKERS)
    # Per speaker: neu, hap, sad, ang and exc (merged into happy); fru dropped. Plus the cross-dialog turn.
    assert len(corpus.utterances) == 10 * 5 + 1
    assert corpus.counts("emotion") == Counter(neutral=10, happy=20, sad=10, angry=11)
    assert corpus.dropped_labels == {"fru": 10}
    assert corpus.skipped == ()
    for u in corpus.utterances:
        assert Path(u.path).is_absolute() and Path(u.path).is_file()
        assert u.session == u.speaker[:5]
        assert u.gender == ("female" if u.speaker.endswith("F") else "male")


def test_speaker_is_last_name_part_not_dialog_prefix(clean: Path) -> None:
    corpus = load_iemocap(clean)
    by_id = {u.id: u for u in corpus.utterances}
    cross = by_id["Ses01M_impro02_F000"]
    assert (cross.speaker, cross.gender, cross.emotion, cross.session) == (
        "Ses01F",
        "female",
        "angry",
        "Ses01",
    )
    male = by_id["Ses03F_impro01_M003"]
    assert (male.speaker, male.gender, male.emotion) == ("Ses03M", "male", "angry")


def test_merge_excited_false_drops_exc(clean: Path) -> None:
    corpus = load_iemocap(clean, merge_excited=False)
    assert corpus.counts("emotion")["happy"] == 10
    assert corpus.dropped_labels == {"exc": 10, "fru": 10}


@pytest.mark.parametrize("name", ["IEMOCAP_full_release", "IEMOCAP"])
def test_release_folder_or_parent(tmp_path: Path, name: str) -> None:
    release = write_iemocap(tmp_path, release_name=name, sessions=(1,))
    by_release = load_iemocap(release, sessions=(1,))
    by_parent = load_iemocap(tmp_path, sessions=(1,))
    assert by_release == by_parent
    assert len(by_parent.utterances) == 11


def test_sessions_subset_and_missing_session(clean: Path, tmp_path: Path) -> None:
    two = load_iemocap(clean, sessions=[2, 4])
    assert two.speakers() == ["Ses02F", "Ses02M", "Ses04F", "Ses04M"]
    write_iemocap(tmp_path, sessions=(1, 2))
    with pytest.raises(DataError, match=r"Session3.*missing.*sessions="):
        load_iemocap(tmp_path)
    with pytest.raises(ConfigError, match="1-5"):
        load_iemocap(clean, sessions=[0, 6])


def test_wrong_or_missing_directory_shows_layout(tmp_path: Path) -> None:
    (tmp_path / "something").mkdir()
    with pytest.raises(DataError) as info:
        load_iemocap(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "Session1" in message and "EmoEvaluation" in message
    with pytest.raises(DataError, match="does not exist"):
        load_iemocap(tmp_path / "nope")
    with pytest.raises(DataError, match="not a directory"):
        load_iemocap(write_wav(tmp_path / "x.wav"))


def test_broken_files_and_lines_are_skipped_with_reasons(tmp_path: Path) -> None:
    release = write_iemocap(tmp_path, sessions=(1,))
    dialog = "Ses01F_impro03"
    wav = release / "Session1" / "sentences" / "wav" / dialog
    bad_lines = [
        "[1.0000 - 2.0000]\tSes01F_impro03_F090\tneu\n",  # no VAD
        "[1.0000 - 2.0000]\tSes01F_impro03_F091\tfoo\t[2.5000, 2.5000, 2.5000]\n",  # unknown code
        "[1.0000 - 2.0000]\tSes01F_impro03_F092\tneu\t[2.5000, 2.5000, 2.5000]\n",  # no audio
        "[1.0000 - 2.0000]\tSes02F_impro03_F093\tneu\t[2.5000, 2.5000, 2.5000]\n",  # wrong session
        "[1.0000 - 2.0000]\tSes01F_impro03_F000\tsad\t[2.5000, 2.5000, 2.5000]\n",  # labelled twice
    ]
    write_iemocap_dialog(
        release,
        1,
        dialog,
        [
            ("Ses01F_impro03_F000", "neu"),
            ("Ses01F_impro03_M001", "sad"),
            ("Ses01F_impro03_F002", "ang"),
            ("Ses01F_impro03_M003", "hap"),
            ("Ses01F_impro03_F004", "neu"),
        ],
        extra_lines=bad_lines,
    )
    write_truncated(wav / "Ses01F_impro03_M001.wav")
    write_empty(wav / "Ses01F_impro03_F002.wav")
    write_header_only(wav / "Ses01F_impro03_M003.wav")
    write_wav(wav / "Ses01F_impro03_F004.wav", seconds=0.01)
    write_wav(wav / "Ses01F_impro03_F099.wav")  # no label line
    write_wav(wav / "._Ses01F_impro03_F000.wav")  # macOS resource fork: ignored silently
    (release / "Session1" / "dialog" / "EmoEvaluation" / f"._{dialog}.txt").write_bytes(b"\x00\x05\x16\x07")

    corpus = load_iemocap(release, sessions=(1,))
    kinds = Counter(s.reason.split(":")[0] for s in corpus.skipped)
    assert kinds == Counter(
        {
            "truncated": 1,
            "empty": 2,
            "too short": 1,
            "no label": 1,
            "bad label line": 1,
            "unknown emotion code": 1,
            "no audio": 1,
            "bad utterance name": 1,
            "duplicate label": 1,
        }
    )
    ids = {u.id for u in corpus.utterances}
    assert "Ses01F_impro03_F000" in ids and len(ids) == 12
    assert not any("._" in s.path for s in corpus.skipped)
    line_skip = next(s for s in corpus.skipped if s.reason.startswith("bad label line"))
    assert line_skip.path.endswith(f"{dialog}.txt:{3 + 5 * 5}")  # header (2 lines) + 5 turns x 5 lines + 1

    with pytest.raises(DataError, match="strict"):
        load_iemocap(release, sessions=(1,), strict=True)


def test_registry_passes_options_and_rejects_unknown(clean: Path) -> None:
    corpus = load_corpus("IEMOCAP", clean, merge_excited=False)
    assert corpus.dropped_labels["exc"] == 10
    with pytest.raises(ConfigError, match=r"calm_as_neutral.*merge_excited"):
        load_corpus("iemocap", clean, calm_as_neutral=True)
