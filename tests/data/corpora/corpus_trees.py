"""Writers of small fake corpus trees in each corpus's exact naming (a few hundred ms of audio per file)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16_000
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:0123abcd\nsize 123456\n"


def write_wav(path: Path, seconds: float = 0.2, sample_rate: int = SR, seed: int = 0) -> Path:
    """A sine + noise PCM-16 WAV of `seconds` at `sample_rate`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = 0.3 * np.sin(2 * np.pi * (150 + 10 * (seed % 20)) * t) + 0.02 * rng.standard_normal(t.size)
    sf.write(str(path), wave.astype(np.float32), sample_rate, subtype="PCM_16")
    return path


def write_truncated(path: Path) -> Path:
    """A WAV cut in the middle of its data chunk (header says more bytes than the file has)."""
    write_wav(path, seconds=0.2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_header_only(path: Path) -> Path:
    """A 44-byte WAV: valid header, no samples."""
    write_wav(path, seconds=0.2)
    path.write_bytes(path.read_bytes()[:44])
    return path


def write_empty(path: Path) -> Path:
    """A 0-byte file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# ----------------------------------------------------------------------------------------- IEMOCAP

IEMOCAP_CODES = ("neu", "hap", "sad", "ang", "exc", "fru")
"""Per speaker and session, one utterance of each code in the main improvised dialog."""

_EMO_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def _label_line(utt: str, code: str, i: int) -> str:
    return f"[{i * 3 + 0.5:.4f} - {i * 3 + 2.25:.4f}]\t{utt}\t{code}\t[2.5000, 3.0000, 2.5000]\n"


def _annotator_lines() -> str:
    return "C-E1:\tNeutral;\t()\nC-E2:\tNeutral;\t()\nA-E1:\tval 3; act 2; dom  2;\t()\n"


def write_iemocap_dialog(
    release: Path, session: int, dialog: str, turns: list[tuple[str, str]], extra_lines: list[str] = ()
) -> None:
    """One dialog: wavs for every (utterance, code) turn and its EmoEvaluation file."""
    folder = release / f"Session{session}"
    lines = [_EMO_HEADER]
    for i, (utt, code) in enumerate(turns):
        write_wav(folder / "sentences" / "wav" / dialog / f"{utt}.wav", seed=session * 100 + i)
        lines.append(_label_line(utt, code, i))
        lines.append(_annotator_lines() + "\n")
    lines.extend(extra_lines)
    label = folder / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
    label.parent.mkdir(parents=True, exist_ok=True)
    label.write_text("".join(lines), encoding="utf-8")


def write_iemocap(
    root: Path, *, release_name: str = "IEMOCAP_full_release", sessions=(1, 2, 3, 4, 5)
) -> Path:
    """A clean IEMOCAP release under root/release_name; returns the release folder.

    Each session s: dialog Ses0sF_impro01 with, for F and M, one turn per IEMOCAP_CODES.
    Session 1 also has dialog Ses01M_impro02 whose one turn Ses01M_impro02_F000 ('ang') is
    spoken by the FEMALE actor (speaker Ses01F) although the dialog prefix says Ses01M.
    """
    release = root / release_name
    for s in sessions:
        turns = [(f"Ses0{s}F_impro01_{g}{k:03d}", code) for g in "FM" for k, code in enumerate(IEMOCAP_CODES)]
        write_iemocap_dialog(release, s, f"Ses0{s}F_impro01", turns)
        # Subfolders like Categorical/ hold per-annotator files that must not be read as labels.
        cat = release / f"Session{s}" / "dialog" / "EmoEvaluation" / "Categorical"
        cat.mkdir(parents=True, exist_ok=True)
        (cat / f"Ses0{s}F_impro01_e1_cat.txt").write_text(f"Ses0{s}F_impro01_F000 :Neutral state; ()\n")
    if 1 in sessions:
        write_iemocap_dialog(release, 1, "Ses01M_impro02", [("Ses01M_impro02_F000", "ang")])
    return release


# ----------------------------------------------------------------------------------------- CREMA-D

CREMA_ACTORS = {"1001": "Male", "1002": "Female", "1003": "Female", "1004": "Male"}
CREMA_EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")


def write_crema_d(root: Path, *, demographics: str | None = "top", actors=CREMA_ACTORS) -> Path:
    """CREMA-D under root/CREMA-D: per actor, sentences DFA and IEO x six emotions (level XX/HI).

    demographics: "top" (VideoDemographics.csv beside AudioWAV), "processed"
    (processedResults/VideoDemographics.csv) or None (no file).
    """
    base = root / "CREMA-D"
    for i, actor in enumerate(actors):
        for j, (sentence, level) in enumerate((("DFA", "XX"), ("IEO", "HI"))):
            for k, emotion in enumerate(CREMA_EMOTIONS):
                write_wav(
                    base / "AudioWAV" / f"{actor}_{sentence}_{emotion}_{level}.wav", seed=i * 31 + j * 7 + k
                )
    if demographics is not None:
        folder = {"top": base, "processed": base / "processedResults"}[demographics]
        write_demographics(folder / "VideoDemographics.csv", actors)
    return base


def write_demographics(path: Path, actors: dict[str, str], extra_rows: list[list[str]] = ()) -> Path:
    """VideoDemographics.csv with the real header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ActorID", "Age", "Sex", "Race", "Ethnicity"])
        for actor, sex in actors.items():
            writer.writerow([actor, "51", sex, "Caucasian", "Not Hispanic"])
        writer.writerows(extra_rows)
    return path


# ----------------------------------------------------------------------------------------- RAVDESS

RAVDESS_ACTORS = ("01", "02", "03", "04")


def ravdess_name(
    emotion: str,
    actor: str,
    *,
    channel: str = "01",
    intensity: str = "01",
    statement: str = "01",
    repetition: str = "01",
) -> str:
    return f"03-{channel}-{emotion}-{intensity}-{statement}-{repetition}-{actor}.wav"


def write_ravdess(root: Path, *, actors=RAVDESS_ACTORS, songs: bool = True) -> Path:
    """RAVDESS under root: Actor_NN/ with every emotion 01-08 (two statements); songs for emotions 01-06."""
    for i, actor in enumerate(actors):
        folder = root / f"Actor_{actor}"
        for e in range(1, 9):
            for statement in ("01", "02"):
                write_wav(folder / ravdess_name(f"{e:02d}", actor, statement=statement), seed=i * 17 + e)
            if songs and e <= 6:
                write_wav(folder / ravdess_name(f"{e:02d}", actor, channel="02"), seed=i * 17 + e + 100)
    return root


# ----------------------------------------------------------------------------------------- EmoDB

EMODB_SPEAKERS = ("03", "08", "10", "13")
EMODB_CODES = "WLEAFTN"


def write_emodb(root: Path, *, speakers=EMODB_SPEAKERS) -> Path:
    """EmoDB under root/emodb/wav: per speaker, texts a01 and b02 x seven emotions, version a."""
    base = root / "emodb"
    for i, speaker in enumerate(speakers):
        for j, text in enumerate(("a01", "b02")):
            for k, code in enumerate(EMODB_CODES):
                write_wav(base / "wav" / f"{speaker}{text}{code}a.wav", seed=i * 19 + j * 7 + k)
    (base / "lablaut").mkdir(parents=True, exist_ok=True)  # the release's other folders are ignored
    return base
