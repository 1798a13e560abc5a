"""Any corpus by manifest: DIR/metadata.csv in the Hugging Face `audiofolder` convention.

One row per audio file: `file_name` (relative to DIR), `speaker`, `emotion`, and optionally
`gender` (female/male, f/m; anything else is unknown) and `split` (train, validation, test; read
by `--split manifest`). Emotions are matched case-insensitively to the four classes after
`label_map` ("source=target" pairs); `emotions` keeps a subset of the classes.

Rows the loader cannot use go to skipped.csv with the reason: a missing or unreadable file, an
empty field, an unknown label. Classes left out by `emotions` are dropped and counted instead.
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath

from privfl.data.corpora import CorpusBuilder, layout_error, require_dir
from privfl.data.records import EMOTIONS, Corpus, Utterance

NAME = "manifest"
METADATA = "metadata.csv"
REQUIRED = ("file_name", "speaker", "emotion")

LAYOUT = """\
  DIR/
    metadata.csv      file_name,speaker,gender,emotion[,split]
                      spk01/angry_001.wav,spk01,female,angry,train
    spk01/angry_001.wav
    ..."""

_GENDERS = {"female": "female", "f": "female", "w": "female", "male": "male", "m": "male"}
SPLIT_ROLES = {
    "train": "train",
    "validation": "val",
    "valid": "val",
    "val": "val",
    "dev": "val",
    "test": "test",
}
"""Values of the `split` column -> privfl split roles (case-insensitive)."""


def parse_label_map(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """("ang=angry", "exc=happy") -> {"ang": "angry", "exc": "happy"}; keys lower-cased."""
    out = {}
    for item in items:
        source, _, target = item.partition("=")
        out[source.strip().lower()] = target.strip()
    return out


def load_manifest(
    root: Path,
    *,
    strict: bool = False,
    label_map: tuple[str, ...] = (),
    emotions: tuple[str, ...] = (),
) -> Corpus:
    """Load the corpus listed in root/metadata.csv (see the module docstring)."""
    root = require_dir("manifest", Path(root), LAYOUT)
    meta = root / METADATA
    if not meta.is_file():
        raise layout_error("manifest", root, f"{meta} does not exist", LAYOUT)
    mapping = {e: e for e in EMOTIONS} | parse_label_map(label_map)
    keep = set(emotions) or set(EMOTIONS)
    builder = CorpusBuilder(NAME, strict=strict)
    with open(meta, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise layout_error(
                "manifest",
                root,
                f"{meta} has no column(s) {', '.join(missing)} (found: {', '.join(columns)})",
                LAYOUT,
            )
        for line, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            _offer(builder, root, f"{meta}:{line}", row, mapping, keep)
    return builder.build(root)


def _offer(
    builder: CorpusBuilder, root: Path, where: str, row: dict, mapping: dict[str, str], keep: set[str]
) -> None:
    name, speaker, label = row["file_name"], row["speaker"], row["emotion"]
    empty = [c for c in REQUIRED if not row[c]]
    if empty:
        builder.skip(where, f"empty field: {', '.join(empty)} is empty in this row")
        return
    relative = PurePosixPath(name.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        builder.skip(
            where, f"bad path: file_name {name!r} must be relative to the manifest folder, inside it"
        )
        return
    path = root / relative
    emotion = mapping.get(label.lower())
    if emotion is None:
        builder.skip(
            path,
            f"unknown label: {label!r} is none of {', '.join(EMOTIONS)}; map it with "
            f"--set 'data.label_map=[\"{label}=<class>\"]' or remove the row",
        )
        return
    if emotion not in keep:
        builder.drop(emotion)
        return
    if not path.is_file():
        builder.skip(path, f"missing: {name} (row {where}) does not exist under {root}")
        return
    if not builder.audio_ok(path):
        return
    split = row.get("split", "").lower()
    if split and split not in SPLIT_ROLES:
        builder.skip(where, f"bad split: {split!r} is none of {', '.join(SPLIT_ROLES)}")
        return
    builder.add(
        Utterance(
            id=str(relative.with_suffix("")),
            path=str(path),
            speaker=speaker,
            gender=_GENDERS.get(row.get("gender", "").lower(), "unknown"),
            emotion=emotion,
            split=SPLIT_ROLES.get(split, ""),
        )
    )
