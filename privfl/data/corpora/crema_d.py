"""CREMA-D loader: 91 actors, 12 sentences, six intended emotions encoded in the file name.

`AudioWAV/1001_DFA_ANG_XX.wav` is actor 1001 saying sentence DFA with intended emotion ANG at
level XX. Actor sex comes from VideoDemographics.csv (top level or processedResults/).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from privfl.data.corpora import CorpusBuilder, layout_error, require_dir, wav_files
from privfl.data.records import Corpus
from privfl.errors import DataError

NAME = "crema-d"
DEMOGRAPHICS = "VideoDemographics.csv"

LAYOUT = """\
  CREMA-D/
    AudioWAV/1001_DFA_ANG_XX.wav          (actor_sentence_emotion_level.wav)
    VideoDemographics.csv                  (or processedResults/VideoDemographics.csv; optional)"""

EMOTION_OF: dict[str, str] = {"NEU": "neutral", "HAP": "happy", "SAD": "sad", "ANG": "angry"}
DROPPED: frozenset[str] = frozenset({"DIS", "FEA"})
SENTENCES: frozenset[str] = frozenset(
    {"IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI"}
)
LEVELS: frozenset[str] = frozenset({"LO", "MD", "HI", "XX"})

_NAME = re.compile(r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_(?P<level>[A-Z]{2})$")


def find_base(root: Path) -> Path:
    """The folder holding AudioWAV/: `root`, its CREMA-D/ child, or root's parent if root is AudioWAV."""
    root = require_dir("CREMA-D", root, LAYOUT)
    candidates = [root, root / "CREMA-D"]
    if root.name == "AudioWAV":
        candidates.insert(0, root.parent)
    for candidate in candidates:
        if (candidate / "AudioWAV").is_dir():
            return candidate
    raise layout_error("CREMA-D", root, "no AudioWAV folder found", LAYOUT, candidates)


def load_crema_d(root: Path, *, strict: bool = False, demographics: Path | str | None = None) -> Corpus:
    """Load CREMA-D's four-class subset (NEU, HAP, SAD, ANG; DIS and FEA dropped) from `root`.

    demographics: path to VideoDemographics.csv; by default looked for at the top level and
    under processedResults/. Without it every speaker's gender is "unknown".
    """
    base = find_base(Path(root))
    builder = CorpusBuilder(NAME, strict=strict)
    sexes = _read_demographics(_demographics_path(base, demographics), builder)
    for wav in wav_files(base / "AudioWAV"):
        match = _NAME.match(wav.stem)
        if match is None:
            builder.skip(wav, f"bad file name: {wav.name!r} is not like '1001_DFA_ANG_XX.wav'")
            continue
        actor, sentence, code, level = match["actor"], match["sentence"], match["emotion"], match["level"]
        if sentence not in SENTENCES:
            builder.skip(wav, f"bad file name: unknown sentence code {sentence!r} in {wav.name}")
            continue
        if level not in LEVELS:
            builder.skip(
                wav, f"bad file name: unknown level {level!r} in {wav.name}; expected LO, MD, HI or XX"
            )
            continue
        if code in DROPPED:
            builder.drop(code)
            continue
        if code not in EMOTION_OF:
            builder.skip(
                wav, f"unknown emotion code: {code!r} in {wav.name}; expected ANG DIS FEA HAP NEU SAD"
            )
            continue
        builder.add_file(
            wav,
            id=wav.stem,
            speaker=f"crema-{actor}",
            gender=sexes.get(actor, "unknown"),
            emotion=EMOTION_OF[code],
        )
    return builder.build(base)


def _demographics_path(base: Path, given: Path | str | None) -> Path | None:
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_file():
            raise DataError(
                f"CREMA-D demographics file {path} does not exist; pass the path to {DEMOGRAPHICS} "
                "or leave demographics unset to search the corpus folder"
            )
        return path
    for path in (base / DEMOGRAPHICS, base / "processedResults" / DEMOGRAPHICS):
        if path.is_file():
            return path
    return None


def _read_demographics(path: Path | None, builder: CorpusBuilder) -> dict[str, str]:
    """Actor id ("1001") -> "female"/"male"/"unknown"; unusable rows are skipped and recorded."""
    if path is None:
        return {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        if "ActorID" not in header or "Sex" not in header:
            builder.skip(
                path,
                f"bad demographics file: header {header} lacks ActorID and Sex columns; "
                "every gender will be 'unknown'",
            )
            return {}
        sexes: dict[str, str] = {}
        for lineno, row in enumerate(reader, 2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
            actor, sex = row.get("ActorID", ""), row.get("Sex", "").lower()
            if not re.fullmatch(r"\d{4}", actor) or sex not in ("female", "male"):
                builder.skip(
                    f"{path}:{lineno}",
                    f"bad demographics row: ActorID {actor!r}, Sex {row.get('Sex')!r}; "
                    "expected a 4-digit id and Male or Female",
                )
                continue
            sexes[actor] = sex
    return sexes
