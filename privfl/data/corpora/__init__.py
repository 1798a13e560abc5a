"""Corpus registry and the machinery every loader shares.

`load_corpus(name, root)` picks a loader by name; each loader walks its corpus's own layout and
returns a `Corpus` of `Utterance` records. Loaders never decode audio: `audio_problem` asks
soundfile for the header only, so a corpus of ten thousand files loads in seconds.

Skip reasons are written "kind: detail" (e.g. "too short: 0.012 s ..."), so reports can group
them by kind.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import soundfile as sf

from privfl.data.records import EMOTIONS, GENDERS, Corpus, Skipped, Utterance
from privfl.errors import ConfigError, DataError

DATASETS: tuple[str, ...] = ("synthetic", "iemocap", "crema-d", "ravdess", "emodb", "manifest")

MIN_DURATION_S = 0.025
"""Shortest usable file: one 25 ms analysis window."""

# name -> (module, function); imported on first use so `synthetic` works without the real-corpus code.
_LOADERS: dict[str, tuple[str, str]] = {
    "synthetic": ("privfl.data.corpora.synthetic", "load_synthetic"),
    "iemocap": ("privfl.data.corpora.iemocap", "load_iemocap"),
    "crema-d": ("privfl.data.corpora.crema_d", "load_crema_d"),
    "ravdess": ("privfl.data.corpora.ravdess", "load_ravdess"),
    "emodb": ("privfl.data.corpora.emodb", "load_emodb"),
    "manifest": ("privfl.data.corpora.manifest", "load_manifest"),
}

# Streaming writers put these in the data-chunk size before they know the length; not truncation.
_PLACEHOLDER_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}
_DATA_SIZE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def loader_for(name: str) -> Callable[..., Corpus]:
    """The `load_<name>` function registered for a dataset name (case and '_' vs '-' ignored)."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in _LOADERS:
        raise ConfigError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}")
    module, function = _LOADERS[key]
    return getattr(importlib.import_module(module), function)


def load_corpus(name: str, root: Path, *, strict: bool = False, **options) -> Corpus:
    """Load the corpus `name` from `root`; options go to its loader (e.g. merge_excited=False)."""
    loader = loader_for(name)
    parameters = inspect.signature(loader).parameters
    accepted = [
        p.name for p in parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "strict"
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"dataset {name!r} has no option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) if accepted else 'none'}"
        )
    if "strict" in parameters:
        return loader(Path(root), strict=strict, **options)
    # A loader without a lenient mode (the synthetic corpus, which we generate) already fails on any defect.
    return loader(Path(root), **options)


def audio_problem(path: Path, min_duration_s: float = MIN_DURATION_S) -> str | None:
    """Why the audio file at `path` is unusable ("kind: detail"), or None if it looks fine.

    Reads the header only (soundfile.info): catches unreadable, empty, truncated and too-short
    files and Git LFS pointers checked out in place of audio.
    """
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        return _unreadable_reason(path, exc)
    if info.frames <= 0 or info.samplerate <= 0:
        return "empty: the file holds no audio samples"
    match = _DATA_SIZE.search(info.extra_info or "")
    if match:
        declared, actual = int(match.group(1)), int(match.group(2))
        if declared > actual and declared not in _PLACEHOLDER_SIZES:
            return f"truncated: header declares {declared} data bytes, the file holds {actual}"
    duration = info.frames / info.samplerate
    if duration < min_duration_s:
        return (
            f"too short: {duration * 1000:.1f} ms is below one {min_duration_s * 1000:.0f} ms analysis window"
        )
    return None


def _unreadable_reason(path: Path, exc: Exception) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as err:
        return f"unreadable: {err}"
    if not head:
        return "empty: the file has 0 bytes"
    if head.startswith(b"version https://git-lfs"):
        return "git-lfs pointer: the file is a Git LFS pointer, not audio; run `git lfs pull` in the corpus"
    return f"unreadable: {exc}"


class CorpusBuilder:
    """Collects a loader's utterances, skipped items and dropped labels; enforces strict mode."""

    def __init__(self, name: str, *, strict: bool) -> None:
        self.name = name
        self.strict = bool(strict)
        self._utterances: dict[str, Utterance] = {}
        self._skipped: list[Skipped] = []
        self._dropped: Counter[str] = Counter()

    def skip(self, path: Path | str, reason: str) -> None:
        """Record an unusable file or label line; in strict mode raise DataError instead."""
        if self.strict:
            raise DataError(
                f"{self.name}: {path}: {reason} (strict mode stops at the first bad file or label line; "
                "fix or remove it, or load with strict=False to skip and report it)"
            )
        self._skipped.append(Skipped(path=str(path), reason=reason))

    def drop(self, label: str) -> None:
        """Count one utterance whose label the four-class protocol leaves out."""
        self._dropped[label] += 1

    def audio_ok(self, path: Path) -> bool:
        """Check `path`'s header; skip it (with the reason) and return False if unusable."""
        problem = audio_problem(path)
        if problem is not None:
            self.skip(path, problem)
            return False
        return True

    def add_file(
        self, path: Path, *, id: str, speaker: str, gender: str, emotion: str, session: str = ""
    ) -> None:
        """Offer one labelled file: an emotion outside the four classes is dropped and counted,
        an unusable file is skipped with its reason, anything else is added."""
        if emotion not in EMOTIONS:
            self.drop(emotion)
            return
        if self.audio_ok(path):
            self.add(
                Utterance(
                    id=id, path=str(path), speaker=speaker, gender=gender, emotion=emotion, session=session
                )
            )

    def add(self, utterance: Utterance) -> None:
        """Add a usable utterance; a repeated id is skipped, not overwritten."""
        if utterance.emotion not in EMOTIONS or utterance.gender not in GENDERS:
            raise ValueError(f"loader bug: {utterance} has an emotion or gender outside the schema")
        if utterance.id in self._utterances:
            self.skip(
                utterance.path,
                f"duplicate: utterance id {utterance.id} already loaded from "
                f"{self._utterances[utterance.id].path}",
            )
            return
        self._utterances[utterance.id] = utterance

    def build(self, root: Path) -> Corpus:
        """The finished Corpus, utterances sorted by id; DataError if none survived."""
        if not self._utterances:
            kinds = Counter(s.reason.split(":", 1)[0] for s in self._skipped)
            detail = ", ".join(f"{k}: {n}" for k, n in kinds.most_common()) or "no files skipped"
            dropped = ", ".join(f"{k}: {n}" for k, n in sorted(self._dropped.items())) or "none"
            raise DataError(
                f"{self.name}: no usable utterances under {root} (skipped {len(self._skipped)} [{detail}]; "
                f"dropped labels [{dropped}]); check that the audio files are present and readable"
            )
        return Corpus(
            name=self.name,
            utterances=tuple(self._utterances[k] for k in sorted(self._utterances)),
            skipped=tuple(self._skipped),
            dropped_labels=dict(sorted(self._dropped.items())),
        )


def layout_error(
    corpus: str, root: Path, problem: str, layout: str, looked_in: list[Path] | None = None
) -> DataError:
    """A DataError naming the directory, what is wrong with it, and the expected layout."""
    where = ""
    if looked_in:
        where = " (looked in: " + ", ".join(str(p) for p in looked_in) + ")"
    return DataError(
        f"{corpus}: {problem}{where}. Expected layout under --data-dir {root}:\n{layout.rstrip()}\n"
        f"Point --data-dir at the folder shown at the top of this layout."
    )


def require_dir(corpus: str, root: Path, layout: str) -> Path:
    """`root` resolved to an absolute path; DataError with the layout if it is not a directory."""
    path = Path(root).expanduser()
    if not path.exists():
        raise layout_error(corpus, path, f"{path} does not exist", layout)
    if not path.is_dir():
        raise layout_error(corpus, path, f"{path} is a file, not a directory", layout)
    return path.resolve()


def wav_files(folder: Path) -> list[Path]:
    """*.wav files (any case) directly in `folder`, sorted; macOS '._' and hidden files left out."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() == ".wav" and not p.name.startswith(".") and p.is_file()
    )


__all__ = [
    "DATASETS",
    "MIN_DURATION_S",
    "CorpusBuilder",
    "audio_problem",
    "layout_error",
    "load_corpus",
    "loader_for",
    "require_dir",
    "wav_files",
]
