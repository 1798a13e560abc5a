from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from privfl.data.check import corpus_report, print_report, render_report
from privfl.data.corpora import load_corpus
from privfl.data.records import Corpus, Skipped, Utterance
from privfl.data.splits import Split, iemocap_paper_split

from .corpus_trees import write_empty, write_iemocap


def utt(i: int, speaker: str, gender: str, emotion: str) -> Utterance:
    return Utterance(
        id=f"{speaker}-{i}", path=f"/x/{speaker}-{i}.wav", speaker=speaker, gender=gender, emotion=emotion
    )


def toy() -> Corpus:
    rows = [("a", "female", "neutral")] * 9 + [
        ("a", "female", "happy"),
        ("a", "female", "sad"),
        ("a", "female", "angry"),
    ]
    rows += [("b", "male", "neutral"), ("b", "male", "happy"), ("b", "male", "angry")]  # b: no sad
    rows += [("c", "unknown", e) for e in ("neutral", "happy", "sad", "angry")]
    return Corpus(
        name="toy",
        utterances=tuple(utt(i, *r) for i, r in enumerate(rows)),
        skipped=(
            Skipped("/x/1.wav", "empty: no samples"),
            Skipped("/x/2.wav", "empty: 0 bytes"),
            Skipped("/x/l.txt:3", "bad label line: ..."),
        ),
        dropped_labels={"fru": 4},
    )


def test_counts_and_problems() -> None:
    report = corpus_report(toy())
    assert report["utterances"] == 19 and report["speakers_total"] == 3
    assert report["emotions"] == {"neutral": 11, "happy": 3, "sad": 2, "angry": 3}
    assert report["genders"]["female"] == {"speakers": 1, "utterances": 12}
    assert report["genders"]["unknown"] == {"speakers": 1, "utterances": 4}
    assert report["speakers"]["b"]["emotions"]["sad"] == 0 and report["speakers"]["b"]["role"] is None
    assert report["skipped"]["count"] == 3
    assert report["skipped"]["reasons"] == {"empty": 2, "bad label line": 1}
    assert report["dropped_labels"] == {"fru": 4}
    assert report["roles"] is None
    problems = "\n".join(report["problems"])
    assert "speaker b has no 'sad' utterances" in problems
    assert "gender unknown for 1 speaker(s)" in problems
    assert "imbalanced: 'neutral' has 11 utterances, 'sad' 2" in problems
    assert "3 file(s) or label line(s) skipped (empty: 2, bad label line: 1)" in problems
    json.dumps(report)  # JSON-ready


def test_split_roles_and_split_problems() -> None:
    split = Split(train=("a", "c"), val=("b",), test=("ghost",))
    report = corpus_report(toy(), split)
    assert report["roles"]["train"]["utterances"] == 16
    assert report["roles"]["val"]["emotions"]["sad"] == 0
    assert report["roles"]["train"]["genders"] == {"female": 1, "male": 0, "unknown": 1}
    assert report["speakers"]["b"]["role"] == "val"
    problems = "\n".join(report["problems"])
    assert "split role 'val' has no 'sad' utterances" in problems
    assert "split names 1 speaker(s) with no utterances in the corpus: ghost" in problems
    assert "'aux' has no speakers" not in problems


def test_clean_iemocap_with_paper_split_has_only_expected_problems(tmp_path: Path) -> None:
    corpus = load_corpus("iemocap", write_iemocap(tmp_path))
    report = corpus_report(corpus, iemocap_paper_split(corpus))
    assert report["problems"] == []
    assert report["roles"]["test"]["speakers"] == ["Ses05F"]
    assert report["roles"]["train"]["utterances"] == 41
    assert report["dropped_labels"] == {"fru": 10}


def test_render_report_mentions_everything(tmp_path: Path) -> None:
    release = write_iemocap(tmp_path)
    write_empty(release / "Session2" / "sentences" / "wav" / "Ses02F_impro01" / "Ses02F_impro01_M000.wav")
    corpus = load_corpus("iemocap", release)
    console = Console(record=True, width=140)
    print_report(corpus_report(corpus, iemocap_paper_split(corpus)), console)
    text = console.export_text()
    for needle in (
        "corpus iemocap",
        "Ses05F",
        "test (1 spk)",
        "fru: 10",
        "skipped",
        "empty",
        "problems:",
        "speaker Ses02M has no 'neutral' utterances",
    ):
        assert needle in text, needle
    clean = Console(record=True, width=140)
    group = render_report(corpus_report(load_corpus("iemocap", write_iemocap(tmp_path / "b"))), clean)
    assert "no problems found" in clean.export_text(clear=False)
    again = Console(record=True, width=140)
    again.print(group)
    assert again.export_text() == clean.export_text()
