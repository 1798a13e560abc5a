"""IEMOCAP loader: five sessions, ten actors, labels from the EmoEvaluation majority-vote files.

The speaker of an utterance is its session plus the gender letter of the LAST name part:
`Ses01F_impro01_M013` is spoken by the male actor of session 1 ("Ses01M"); the `Ses01F` prefix
only says which actor led the dialog.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from privfl.data.corpora import CorpusBuilder, layout_error, require_dir, wav_files
from privfl.data.records import Corpus
from privfl.errors import ConfigError

NAME = "iemocap"
RELEASE_NAMES: tuple[str, ...] = ("IEMOCAP_full_release", "IEMOCAP")
SESSIONS: tuple[int, ...] = (1, 2, 3, 4, 5)

LAYOUT = """\
  IEMOCAP_full_release/            (this folder, or a parent holding it)
    Session1/
      sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav
      dialog/EmoEvaluation/Ses01F_impro01.txt
    Session2/ ... Session5/"""

EMOTION_OF: dict[str, str] = {"neu": "neutral", "hap": "happy", "sad": "sad", "ang": "angry"}
"""IEMOCAP codes kept by the four-class protocol (exc is merged into happy by default)."""

KNOWN_CODES: frozenset[str] = frozenset(
    {"neu", "hap", "sad", "ang", "exc", "fru", "sur", "fea", "dis", "oth", "xxx"}
)

_LABEL_LINE = re.compile(
    r"^\[\s*(?P<start>\d+(?:\.\d+)?)\s*-\s*(?P<end>\d+(?:\.\d+)?)\s*\]\s+"
    r"(?P<utt>\S+)\s+(?P<code>\S+)\s+\[(?P<vad>[^\]]*)\]\s*$"
)
_UTT = re.compile(r"^Ses(?P<session>0[1-5])[FM]_\w+_(?P<gender>[FM])\d{3}$")
_NUMBER = re.compile(r"^\s*-?\d+(?:\.\d+)?\s*$")


def find_release(root: Path) -> Path:
    """The IEMOCAP release folder: `root` itself or IEMOCAP_full_release / IEMOCAP inside it."""
    root = require_dir("IEMOCAP", root, LAYOUT)
    candidates = [root, *(root / n for n in RELEASE_NAMES), root / "IEMOCAP" / "IEMOCAP_full_release"]
    for candidate in candidates:
        if any((candidate / f"Session{s}").is_dir() for s in SESSIONS):
            return candidate
    raise layout_error("IEMOCAP", root, "no Session1..Session5 folders found", LAYOUT, candidates)


def load_iemocap(
    root: Path,
    *,
    strict: bool = False,
    merge_excited: bool = True,
    sessions: Iterable[int] = SESSIONS,
) -> Corpus:
    """Load IEMOCAP's four-class subset (neutral, happy[+excited], sad, angry) from `root`.

    merge_excited: label `exc` counts as happy (the common protocol); False drops it.
    sessions: which of sessions 1-5 to load; every one asked for must be present.
    """
    wanted = _sessions(sessions)
    release = find_release(Path(root))
    builder = CorpusBuilder(NAME, strict=strict)
    for session in wanted:
        _load_session(release, session, merge_excited, builder)
    return builder.build(release)


def _sessions(sessions: Iterable[int]) -> tuple[int, ...]:
    try:
        wanted = tuple(sorted(set(sessions)))
    except TypeError as exc:
        raise ConfigError(f"IEMOCAP sessions must be a list of numbers 1-5, got {sessions!r}") from exc
    bad = [s for s in wanted if isinstance(s, bool) or not isinstance(s, int) or s not in SESSIONS]
    if bad or not wanted:
        raise ConfigError(f"IEMOCAP sessions must be numbers among 1-5, got {list(sessions)!r}")
    return wanted


def _load_session(release: Path, session: int, merge_excited: bool, builder: CorpusBuilder) -> None:
    folder = release / f"Session{session}"
    wav_root = folder / "sentences" / "wav"
    label_root = folder / "dialog" / "EmoEvaluation"
    for path in (folder, wav_root, label_root):
        if not path.is_dir():
            raise layout_error(
                "IEMOCAP",
                release,
                f"{path} is missing (load fewer sessions with sessions=(1, 2, ...))",
                LAYOUT,
            )
    tag = f"Ses{session:02d}"
    audio: dict[str, Path] = {}
    for dialog in sorted(p for p in wav_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for wav in wav_files(dialog):
            audio[wav.stem] = wav
    labelled: set[str] = set()
    for label_file in sorted(label_root.glob("*.txt")):
        if label_file.name.startswith("."):
            continue  # macOS resource forks ("._Ses01F_impro01.txt") ship with some copies
        for lineno, line in enumerate(
            label_file.read_text(encoding="utf-8", errors="replace").splitlines(), 1
        ):
            if not line.lstrip().startswith("["):
                continue  # header, annotator and blank lines carry no consensus label
            where = f"{label_file}:{lineno}"
            parsed = _parse_label_line(line, tag)
            if isinstance(parsed, str):
                builder.skip(where, parsed)
                continue
            utt, code, gender = parsed
            if utt in labelled:
                builder.skip(where, f"duplicate label: {utt} is labelled twice")
                continue
            labelled.add(utt)
            if utt not in audio:
                expected = wav_root / utt.rsplit("_", 1)[0] / f"{utt}.wav"
                builder.skip(where, f"no audio: {expected} does not exist")
                continue
            emotion = "happy" if code == "exc" and merge_excited else EMOTION_OF.get(code, code)
            builder.add_file(
                audio[utt],
                id=utt,
                speaker=f"{tag}{gender}",
                gender="female" if gender == "F" else "male",
                emotion=emotion,
                session=tag,
            )
    for utt in sorted(set(audio) - labelled):
        builder.skip(audio[utt], f"no label: no line for {utt} in {label_root}")


def _parse_label_line(line: str, tag: str) -> tuple[str, str, str] | str:
    """(utterance, code, gender letter) from one consensus line, or the reason it cannot be used."""
    match = _LABEL_LINE.match(line.strip())
    if match is None:
        expected = "'[start - end]<TAB>utterance<TAB>code<TAB>[v, a, d]'"
        return f"bad label line: {line.strip()[:80]!r} is not {expected}"
    utt, code = match["utt"], match["code"]
    if float(match["end"]) < float(match["start"]):
        return f"bad label line: end time {match['end']} is before start time {match['start']} for {utt}"
    vad = match["vad"].split(",")
    if len(vad) != 3 or not all(_NUMBER.match(v) for v in vad):
        return (
            f"bad label line: [{match['vad']}] is not three numbers [valence, activation, dominance] ({utt})"
        )
    name = _UTT.match(utt)
    if name is None:
        return f"bad utterance name: {utt!r} is not like 'Ses01F_impro01_M013'"
    if f"Ses{name['session']}" != tag:
        return f"bad utterance name: {utt} belongs to Ses{name['session']}, found in the {tag} folder"
    if code not in KNOWN_CODES:
        return f"unknown emotion code: {code!r} for {utt}; IEMOCAP uses {', '.join(sorted(KNOWN_CODES))}"
    return utt, code, name["gender"]
