"""Corpus check report: what a loader found, what it skipped or dropped, and what looks wrong.

`corpus_report` returns plain JSON-ready dicts; `render_report` turns one into rich tables.
"""

from __future__ import annotations

from collections import Counter

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from privfl.data.records import EMOTIONS, GENDERS, Corpus
from privfl.data.splits import ROLES, Split

IMBALANCE_RATIO = 3.0
"""Flag the class distribution when the largest class is this many times the smallest."""

MAX_EXAMPLES = 5
MIN_TRAIN_SPEAKERS = 4
"""Fewer training speakers than this leaves a federation of one or two voices: flagged as a problem."""


def corpus_report(corpus: Corpus, split: Split | None = None) -> dict:
    """Counts per emotion, speaker, gender and split role; skipped items; dropped labels; problems."""
    utterances = corpus.utterances
    gender_of = corpus.gender_of()
    roles = split.roles() if split is not None else {}
    per_speaker: dict[str, Counter] = {}
    for u in utterances:
        per_speaker.setdefault(u.speaker, Counter())[u.emotion] += 1

    speakers = {
        s: {
            "gender": gender_of[s],
            "role": roles.get(s),
            "utterances": sum(c.values()),
            "emotions": _by_emotion(c),
        }
        for s, c in sorted(per_speaker.items())
    }
    genders = {
        g: {
            "speakers": sum(1 for s in speakers.values() if s["gender"] == g),
            "utterances": sum(1 for u in utterances if u.gender == g),
        }
        for g in GENDERS
    }
    reasons = Counter(s.reason.split(":", 1)[0].strip() for s in corpus.skipped)
    report = {
        "corpus": corpus.name,
        "utterances": len(utterances),
        "speakers_total": len(speakers),
        "emotions": _by_emotion(Counter(u.emotion for u in utterances)),
        "genders": genders,
        "speakers": speakers,
        "roles": _roles(corpus, split) if split is not None else None,
        "skipped": {
            "count": len(corpus.skipped),
            "reasons": dict(reasons.most_common()),
            "examples": [{"path": s.path, "reason": s.reason} for s in corpus.skipped[:MAX_EXAMPLES]],
        },
        "dropped_labels": dict(sorted(corpus.dropped_labels.items())),
    }
    report["problems"] = _problems(report, corpus, split)
    return report


def _by_emotion(counts: Counter) -> dict[str, int]:
    return {e: int(counts.get(e, 0)) for e in EMOTIONS}


def _roles(corpus: Corpus, split: Split) -> dict[str, dict]:
    out = {}
    gender_of = corpus.gender_of()
    for role in ROLES:
        members = getattr(split, role)
        part = split.subset(corpus, role)
        present = [s for s in members if s in gender_of]
        out[role] = {
            "speakers": list(members),
            "utterances": len(part.utterances),
            "emotions": _by_emotion(Counter(u.emotion for u in part.utterances)),
            "genders": {g: sum(1 for s in present if gender_of[s] == g) for g in GENDERS},
        }
    return out


def _problems(report: dict, corpus: Corpus, split: Split | None) -> list[str]:
    problems: list[str] = []
    if not corpus.utterances:
        problems.append("corpus has no usable utterances")
    emotions = report["emotions"]
    for emotion, n in emotions.items():
        if n == 0:
            problems.append(f"class {emotion!r} has no utterances")
    nonzero = [n for n in emotions.values() if n]
    if len(nonzero) > 1 and max(nonzero) >= IMBALANCE_RATIO * min(nonzero):
        most, least = (
            max(emotions, key=emotions.get),
            min((e for e in emotions if emotions[e]), key=emotions.get),
        )
        problems.append(
            f"classes are imbalanced: {most!r} has {emotions[most]} utterances, {least!r} {emotions[least]} "
            f"({emotions[most] / emotions[least]:.1f}x); report UAR, not only accuracy"
        )
    for speaker, info in report["speakers"].items():
        missing = [e for e, n in info["emotions"].items() if n == 0 and emotions[e] > 0]
        for emotion in missing:
            problems.append(f"speaker {speaker} has no {emotion!r} utterances")
    unknown = report["genders"]["unknown"]["speakers"]
    if unknown:
        problems.append(
            f"gender unknown for {unknown} speaker(s); gender-balanced splits cannot balance them"
        )
    if report["skipped"]["count"]:
        reasons = ", ".join(f"{k}: {n}" for k, n in report["skipped"]["reasons"].items())
        problems.append(f"{report['skipped']['count']} file(s) or label line(s) skipped ({reasons})")
    if split is not None:
        problems.extend(_split_problems(report, corpus, split))
    return problems


def _split_problems(report: dict, corpus: Corpus, split: Split) -> list[str]:
    problems: list[str] = []
    known = set(report["speakers"])
    absent = [s for s in split.speakers() if s not in known]
    if absent:
        problems.append(
            f"split names {len(absent)} speaker(s) with no utterances in the corpus: {', '.join(absent)}"
        )
    unassigned = sorted(known - set(split.speakers()))
    if unassigned:
        problems.append(f"{len(unassigned)} speaker(s) are in no split role: {', '.join(unassigned)}")
    n_train = len(report["roles"]["train"]["speakers"])
    if 0 < n_train < MIN_TRAIN_SPEAKERS:
        problems.append(
            f"only {n_train} training speaker(s) after the held-out roles; hold out fewer, e.g. "
            "--set data.aux_speakers=0 (no attacker data) or --set data.val_speakers=1"
        )
    for role, info in report["roles"].items():
        if not info["speakers"]:
            if role != "aux":
                problems.append(f"split role {role!r} has no speakers")
            continue
        for emotion, n in info["emotions"].items():
            if n == 0 and report["emotions"][emotion] > 0:
                problems.append(f"split role {role!r} has no {emotion!r} utterances")
        g = info["genders"]
        if len(info["speakers"]) > 1 and abs(g["female"] - g["male"]) > 1:
            problems.append(
                f"split role {role!r} is gender-imbalanced: {g['female']} female, {g['male']} male"
            )
    return problems


def render_report(report: dict, console: Console | None = None) -> Group:
    """Rich renderable of a corpus_report (summary, emotions x roles, speakers, skipped, problems).

    With a `console`, also print it there.
    """
    parts: list = []
    summary = Table(title=f"corpus {report['corpus']}", box=box.SIMPLE, show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    summary.add_row("utterances", str(report["utterances"]))
    summary.add_row("speakers", str(report["speakers_total"]))
    for g, info in report["genders"].items():
        if info["speakers"] or g != "unknown":
            summary.add_row(f"{g} speakers / utterances", f"{info['speakers']} / {info['utterances']}")
    summary.add_row("skipped", str(report["skipped"]["count"]))
    dropped = ", ".join(f"{k}: {n}" for k, n in report["dropped_labels"].items()) or "none"
    summary.add_row("dropped labels", dropped)
    parts.append(summary)

    emotions = Table(title="utterances per emotion", box=box.SIMPLE)
    emotions.add_column("emotion")
    emotions.add_column("all", justify="right")
    roles = report["roles"] or {}
    shown_roles = [r for r, info in roles.items() if info["speakers"]]
    for role in shown_roles:
        emotions.add_column(f"{role} ({len(roles[role]['speakers'])} spk)", justify="right")
    for emotion in EMOTIONS:
        emotions.add_row(
            emotion,
            str(report["emotions"][emotion]),
            *(str(roles[r]["emotions"][emotion]) for r in shown_roles),
        )
    emotions.add_row(
        "total", str(report["utterances"]), *(str(roles[r]["utterances"]) for r in shown_roles), style="bold"
    )
    parts.append(emotions)

    speakers = Table(title="utterances per speaker", box=box.SIMPLE)
    for name in ("speaker", "gender", "role", *EMOTIONS, "total"):
        speakers.add_column(name, justify="right" if name in (*EMOTIONS, "total") else "left")
    for speaker, info in report["speakers"].items():
        speakers.add_row(
            speaker,
            info["gender"],
            info["role"] or "-",
            *(str(info["emotions"][e]) for e in EMOTIONS),
            str(info["utterances"]),
        )
    parts.append(speakers)

    if report["skipped"]["count"]:
        skipped = Table(title=f"skipped ({report['skipped']['count']}), first {MAX_EXAMPLES}", box=box.SIMPLE)
        skipped.add_column("path", overflow="fold")
        skipped.add_column("reason", overflow="fold")
        for item in report["skipped"]["examples"]:
            skipped.add_row(item["path"], item["reason"])
        parts.append(skipped)

    if report["problems"]:
        parts.append(Text("problems:", style="bold yellow"))
        parts.extend(Text(f"  - {p}", style="yellow") for p in report["problems"])
    else:
        parts.append(Text("no problems found", style="green"))
    group = Group(*parts)
    if console is not None:
        console.print(group)
    return group


def print_report(report: dict, console: Console | None = None) -> None:
    """Print a corpus_report with rich (to stdout unless a console is given)."""
    render_report(report, console or Console())
