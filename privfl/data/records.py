"""The common per-utterance record every corpus loader returns."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad", "angry")
"""The four classes of the paper's protocol, in label-index order."""

GENDERS: tuple[str, ...] = ("female", "male", "unknown")


@dataclass(frozen=True)
class Utterance:
    """One labelled recording.

    `path` is absolute; `speaker` is unique across the corpus (e.g. "Ses01M", "crema-1001");
    `gender` is one of GENDERS; `emotion` one of EMOTIONS; `session` a corpus-specific group tag
    (IEMOCAP session "Ses01", empty where the corpus has none); `split` the role a corpus's own
    metadata assigns ("train", "val", "test"; manifest corpora, read by `--split manifest`).
    """

    id: str
    path: str
    speaker: str
    gender: str
    emotion: str
    session: str = ""
    split: str = ""

    @property
    def label(self) -> int:
        """Class index of `emotion` in EMOTIONS."""
        return EMOTIONS.index(self.emotion)


@dataclass(frozen=True)
class Skipped:
    """A file or label line a loader could not use, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Corpus:
    """A loaded corpus: usable utterances plus what was skipped or dropped on the way."""

    name: str
    utterances: tuple[Utterance, ...]
    skipped: tuple[Skipped, ...] = ()
    dropped_labels: dict[str, int] = field(default_factory=dict)

    def speakers(self) -> list[str]:
        """Sorted unique speaker ids."""
        return sorted({u.speaker for u in self.utterances})

    def gender_of(self) -> dict[str, str]:
        """Speaker id -> gender."""
        return {u.speaker: u.gender for u in self.utterances}

    def counts(self, key: str) -> Counter:
        """Count utterances by a record field, e.g. counts("emotion")."""
        return Counter(getattr(u, key) for u in self.utterances)

    def subset(self, keep) -> Corpus:
        """A corpus holding the utterances for which keep(u) is true."""
        return dataclasses.replace(self, utterances=tuple(u for u in self.utterances if keep(u)))
