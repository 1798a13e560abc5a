"""RAVDESS loader (speech): 24 actors, labels in seven two-digit file-name fields.

`Actor_01/03-01-05-01-02-01-01.wav` = modality-channel-emotion-intensity-statement-repetition-actor;
odd actors are male, even actors female. Song files (channel 02) are dropped and counted.
"""

from __future__ import annotations

import re
from pathlib import Path

from privfl.data.corpora import CorpusBuilder, layout_error, require_dir, wav_files
from privfl.data.records import Corpus

NAME = "ravdess"

LAYOUT = """\
  RAVDESS/                          (or Audio_Speech_Actors_01-24/)
    Actor_01/03-01-05-01-02-01-01.wav   (modality-channel-emotion-intensity-statement-repetition-actor)
    ...
    Actor_24/"""

EMOTION_NAMES: dict[str, str] = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}

_ACTOR_DIR = re.compile(r"^Actor_(\d{2})$")
_NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
# Allowed values of the first six fields, in order; the seventh (actor) is checked against its folder.
_FIELDS: tuple[tuple[str, frozenset[str]], ...] = (
    ("modality", frozenset({"01", "02", "03"})),
    ("vocal channel", frozenset({"01", "02"})),
    ("emotion", frozenset(EMOTION_NAMES)),
    ("intensity", frozenset({"01", "02"})),
    ("statement", frozenset({"01", "02"})),
    ("repetition", frozenset({"01", "02"})),
)


def find_actor_dirs(root: Path) -> list[Path]:
    """Actor_NN folders directly under `root`, or one level down (e.g. Audio_Speech_Actors_01-24/)."""
    root = require_dir("RAVDESS", root, LAYOUT)
    found = [p for p in root.iterdir() if p.is_dir() and _ACTOR_DIR.match(p.name)]
    if not found:
        found = [
            p
            for child in root.iterdir()
            if child.is_dir() and not child.name.startswith(".")
            for p in child.iterdir()
            if p.is_dir() and _ACTOR_DIR.match(p.name)
        ]
    if not found:
        raise layout_error("RAVDESS", root, "no Actor_NN folders found (also looked one level down)", LAYOUT)
    return sorted(found)


def load_ravdess(root: Path, *, strict: bool = False, calm_as_neutral: bool = False) -> Corpus:
    """Load RAVDESS speech, four classes (neutral, happy, sad, angry) from `root`.

    calm_as_neutral: count "calm" (02) as neutral; by default calm is dropped and counted.
    """
    builder = CorpusBuilder(NAME, strict=strict)
    dirs = find_actor_dirs(Path(root))
    for folder in dirs:
        folder_actor = _ACTOR_DIR.match(folder.name).group(1)
        for wav in wav_files(folder):
            fields = _parse(wav, folder_actor)
            if isinstance(fields, str):
                builder.skip(wav, fields)
                continue
            channel, emotion, actor = fields[1], EMOTION_NAMES[fields[2]], fields[6]
            if channel == "02":
                builder.drop("song")
                continue
            if emotion == "calm" and calm_as_neutral:
                emotion = "neutral"
            builder.add_file(
                wav,
                id=wav.stem,
                speaker=f"ravdess-{actor}",
                gender="male" if int(actor) % 2 == 1 else "female",
                emotion=emotion,
            )
    return builder.build(dirs[0].parent)


def _parse(wav: Path, folder_actor: str) -> tuple[str, ...] | str:
    """The seven fields of a RAVDESS file name, or the reason it cannot be used."""
    match = _NAME.match(wav.stem)
    if match is None:
        return f"bad file name: {wav.name!r} is not seven two-digit fields like '03-01-05-01-02-01-01.wav'"
    fields = match.groups()
    for (field, allowed), value in zip(_FIELDS, fields, strict=False):
        if value not in allowed:
            expected = ", ".join(sorted(allowed))
            return f"bad file name: {field} {value!r} in {wav.name}; expected one of {expected}"
    if fields[6] != folder_actor:
        return (
            f"bad file name: actor {fields[6]} in {wav.name} does not match its folder Actor_{folder_actor}"
        )
    return fields
