from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from privfl.data.corpora.emodb import load_emodb
from privfl.errors import DataError

from .corpus_trees import write_emodb, write_empty, write_wav


def test_four_classes_speakers_and_dropped(tmp_path: Path) -> None:
    base = write_emodb(tmp_path)
    corpus = load_emodb(base)
    assert corpus.gender_of() == {
        "emodb-03": "male",
        "emodb-08": "female",
        "emodb-10": "male",
        "emodb-13": "female",
    }
    assert corpus.counts("emotion") == Counter(neutral=8, happy=8, sad=8, angry=8)
    assert corpus.dropped_labels == {"boredom": 8, "disgust": 8, "fear": 8}
    u = next(u for u in corpus.utterances if u.id == "08b02Wa")
    assert (u.speaker, u.gender, u.emotion) == ("emodb-08", "female", "angry")


def test_root_may_be_parent_base_or_wav_folder(tmp_path: Path) -> None:
    base = write_emodb(tmp_path)
    assert load_emodb(tmp_path) == load_emodb(base) == load_emodb(base / "wav")


def test_malformed_names_and_broken_files(tmp_path: Path) -> None:
    base = write_emodb(tmp_path)
    wav = base / "wav"
    write_wav(wav / "99a01Fa.wav")  # unknown speaker
    write_wav(wav / "03a01Xa.wav")  # unknown emotion letter
    write_wav(wav / "3a01Fa.wav")  # malformed
    write_empty(wav / "03a02Fa.wav")
    corpus = load_emodb(base)
    kinds = Counter(s.reason.split(":")[0] for s in corpus.skipped)
    assert kinds == Counter({"bad file name": 2, "unknown emotion code": 1, "empty": 1})
    assert len(corpus.utterances) == 32
    with pytest.raises(DataError, match="strict"):
        load_emodb(base, strict=True)


def test_wrong_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no wav folder[\s\S]*03a01Fa\.wav"):
        load_emodb(tmp_path)
