"""EmoDB (Berlin Database of Emotional Speech) loader: ten actors, labels in the file name.

`wav/03a01Fa.wav` = speaker 03, text a01, emotion F (German initial: Freude), version a.
"""

from __future__ import annotations

import re
from pathlib import Path

from privfl.data.corpora import CorpusBuilder, layout_error, require_dir, wav_files
from privfl.data.records import Corpus

NAME = "emodb"

LAYOUT = """\
  emodb/
    wav/03a01Fa.wav     (speaker 03, text a01, emotion F, version a)"""

GENDER_OF: dict[str, str] = {
    "03": "male",
    "10": "male",
    "11": "male",
    "12": "male",
    "15": "male",
    "08": "female",
    "09": "female",
    "13": "female",
    "14": "female",
    "16": "female",
}
EMOTION_NAMES: dict[str, str] = {
    "W": "angry",
    "L": "boredom",
    "E": "disgust",
    "A": "fear",
    "F": "happy",
    "T": "sad",
    "N": "neutral",
}

_NAME = re.compile(r"^(?P<speaker>\d{2})(?P<text>[ab]\d{2})(?P<emotion>[A-Z])(?P<version>[a-z])$")


def find_wav_dir(root: Path) -> Path:
    """The wav/ folder: root/wav, root/emodb/wav, or `root` itself when it is named wav."""
    root = require_dir("EmoDB", root, LAYOUT)
    candidates = [root / "wav", root / "emodb" / "wav"]
    if root.name == "wav":
        candidates.insert(0, root)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise layout_error("EmoDB", root, "no wav folder found", LAYOUT, candidates)


def load_emodb(root: Path, *, strict: bool = False) -> Corpus:
    """Load EmoDB's four-class subset (W anger, F happiness, T sadness, N neutral) from `root`."""
    folder = find_wav_dir(Path(root))
    builder = CorpusBuilder(NAME, strict=strict)
    for wav in wav_files(folder):
        match = _NAME.match(wav.stem)
        if match is None:
            builder.skip(wav, f"bad file name: {wav.name!r} is not like '03a01Fa.wav'")
            continue
        speaker, code = match["speaker"], match["emotion"]
        if speaker not in GENDER_OF:
            builder.skip(
                wav,
                f"bad file name: unknown speaker {speaker!r} in {wav.name}; "
                f"EmoDB speakers are {', '.join(sorted(GENDER_OF))}",
            )
            continue
        if code not in EMOTION_NAMES:
            builder.skip(wav, f"unknown emotion code: {code!r} in {wav.name}; expected one of W L E A F T N")
            continue
        builder.add_file(
            wav,
            id=wav.stem,
            speaker=f"emodb-{speaker}",
            gender=GENDER_OF[speaker],
            emotion=EMOTION_NAMES[code],
        )
    return builder.build(folder.parent)
