"""The built-in synthetic corpus: load a generated directory, or generate it once into the cache."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from privfl.data.records import EMOTIONS, Corpus, Utterance
from privfl.data.synthesis import GENERATOR_VERSION, METADATA_COLUMNS, SynthConfig, generate_corpus
from privfl.errors import DataError

_LAYOUT = "metadata.csv (columns id,path,speaker,gender,emotion) and wav/<speaker>/<id>.wav"


def cache_root() -> Path:
    """Where privfl caches generated data: $PRIVFL_CACHE, else ~/.cache/privfl."""
    env = os.environ.get("PRIVFL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "privfl"


def corpus_key(cfg: SynthConfig) -> str:
    """Short hash of the config fields and the generator version: the corpus's cache directory name."""
    # float() so that emotion_scale=1 and emotion_scale=1.0 (the same corpus) share one directory.
    fields = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        fields[f.name] = float(value) if f.type == "float" else value
    text = json.dumps({"generator": GENERATOR_VERSION, **fields}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def ensure_synthetic(cfg: SynthConfig, progress: Callable[[int, int], None] | None = None) -> Path:
    """The cached corpus directory for `cfg`, generated first if absent.

    Safe when several processes ask at once: each generates into its own temporary directory and
    the first rename wins; the others discard their copy and use the winner's.
    """
    cfg.validate()
    root = cache_root() / "synthetic" / corpus_key(cfg)
    if (root / "metadata.csv").is_file():
        return root
    try:
        return generate_corpus(root, cfg, progress)
    except DataError:
        if (root / "metadata.csv").is_file():  # another process finished first
            return root
        raise


def load_synthetic(root: Path) -> Corpus:
    """Read `root/metadata.csv` into a Corpus named "synthetic" with absolute wav paths.

    Raises DataError naming the directory and the expected layout if it is missing or malformed.
    """
    root = Path(root).resolve()
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise DataError(
            f"{root} is not a synthetic corpus: no metadata.csv; expected {_LAYOUT}. "
            "Generate one with privfl.data.corpora.synthetic.ensure_synthetic"
        )
    with open(meta, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in METADATA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{meta} lacks column(s) {', '.join(missing)}; expected {_LAYOUT}")
        utterances = tuple(_utterance(root, row, line) for line, row in enumerate(reader, start=2))
    if not utterances:
        raise DataError(f"{meta} lists no utterances; delete {root} and generate it again")
    absent = [u.path for u in utterances if not os.path.isfile(u.path)]
    if absent:
        raise DataError(
            f"{len(absent)} wav file(s) listed in {meta} are missing, e.g. {absent[0]}; "
            f"delete {root} and generate it again"
        )
    return Corpus(name="synthetic", utterances=utterances)


def _utterance(root: Path, row: dict[str, str], line: int) -> Utterance:
    """One metadata row as an Utterance; DataError naming the line if a value is unusable."""
    where = f"{root / 'metadata.csv'} line {line}"
    if row["gender"] not in ("female", "male"):
        raise DataError(f"{where}: gender {row['gender']!r} is not 'female' or 'male'; expected {_LAYOUT}")
    if row["emotion"] not in EMOTIONS:
        raise DataError(f"{where}: emotion {row['emotion']!r} is not one of {', '.join(EMOTIONS)}")
    rel = Path(row["path"])
    if rel.is_absolute() or ".." in rel.parts or not row["id"] or not row["speaker"]:
        raise DataError(f"{where}: needs a non-empty id and speaker and a path inside {root}; got {row!r}")
    return Utterance(
        id=row["id"],
        path=str(root / rel),
        speaker=row["speaker"],
        gender=row["gender"],
        emotion=row["emotion"],
    )
