"""Attack reports: a rich table, attack.json (every figure, the config, the seed) and roc.png.

`write_report` keeps one section per attack in attack.json, so `privfl attack gender` and then
`privfl attack membership` into the same directory leave both; roc.png and rounds.png (each row's
AUC per attacked round) are redrawn from all sections. Files are written to a temporary name and
renamed, and the directory is created only here, after every check has passed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from privfl import __version__
from privfl.attacks.result import AttackResult
from privfl.privacy import dp_tpr_bound
from privfl.runs import atomic_write_json

REPORT_VERSION = 1


def report_document(
    results: list[AttackResult],
    run_path: Path,
    run_config: dict,
    privacy: dict | None,
    previous: dict | None = None,
) -> dict:
    """attack.json's content: sections of `previous` (same run) kept, those in `results` replaced."""
    doc = {
        "report_version": REPORT_VERSION,
        "privfl_version": __version__,
        "run": str(run_path),
        "run_config": run_config,
        "privacy": privacy,
        "attacks": {},
    }
    if previous and previous.get("run") == str(run_path) and previous.get("report_version") == REPORT_VERSION:
        doc["attacks"].update(previous.get("attacks", {}))
    for r in results:
        doc["attacks"][r.attack] = r.to_dict()
    return doc


def write_report(out_dir: Path, observed, results: list[AttackResult]) -> dict:
    """Write attack.json and roc.png for `results` on `observed` (an ObservedRun); returns the JSON."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "attack.json"
    previous = None
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            previous = None  # a damaged report is replaced, not merged
    privacy = observed.privacy
    doc = report_document(
        results,
        observed.run.path,
        observed.config.to_dict(),
        None
        if privacy is None
        else {"epsilon": privacy.epsilon, "delta": privacy.delta, "unit": privacy.unit, "mode": privacy.mode},
        previous,
    )
    atomic_write_json(path, doc)
    roc_figure(doc, out_dir / "roc.png")
    rounds_figure(doc, out_dir / "rounds.png")
    return doc


def roc_figure(doc: dict, path: Path) -> None:
    """One log-log ROC panel per attack, with the chance line and, where a row is DP-covered, the DP bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = list(doc["attacks"].items())
    fig, axes = plt.subplots(
        1, max(len(sections), 1), figsize=(5.2 * max(len(sections), 1), 4.8), squeeze=False
    )
    for ax, (name, section) in zip(axes[0], sections, strict=True):
        floor = 1.0
        bound = None
        for row in section["rows"]:
            if not row.get("roc"):
                continue
            fpr, tpr = np.asarray(row["roc"]["fpr"]), np.asarray(row["roc"]["tpr"])
            m = row["metrics"]
            lo = 0.5 / max(m["n_negative"], m["n_positive"])
            floor = min(floor, lo)
            label = f"{row['name'].split(': ', 1)[-1]} (AUC {m['auc']:.2f})"
            ax.plot(
                np.maximum(fpr, lo),
                np.maximum(tpr, lo),
                ls="--" if row.get("control") else "-",
                drawstyle="steps-post",
                label=label,
            )
            if row.get("dp"):
                bound = (row["dp"]["epsilon"], row["dp"]["delta"])
        if floor == 1.0:  # nothing could be scored (e.g. secure aggregation with one label per round)
            reasons = "; ".join(r["reason"] for r in section["rows"] if r.get("reason"))
            ax.text(
                0.5,
                0.5,
                "no ROC:\n" + reasons,
                ha="center",
                va="center",
                wrap=True,
                fontsize=8,
                transform=ax.transAxes,
            )
            ax.set_title(f"{name} attack\n({section['observed']})", fontsize=9)
            ax.set_axis_off()
            continue
        grid = np.logspace(np.log10(floor), 0, 200)
        ax.plot(grid, grid, color="grey", lw=0.8, ls=":", label="chance")
        if bound is not None:
            eps, delta = bound
            ax.plot(
                grid,
                np.maximum(dp_tpr_bound(grid, eps, delta), floor),
                color="black",
                lw=1.2,
                label=f"DP bound (eps={eps:.3g}, delta={delta:.2g})",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(floor, 1.0)
        ax.set_ylim(floor, 1.05)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"{name} attack\n({section['observed']})", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def rounds_figure(doc: dict, path: Path) -> None:
    """AUC of every attack row per attacked round (the per-round curves), chance at 0.5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for section in doc["attacks"].values():
        for row in section["rows"]:
            points = [(p["round"], p["auc"]) for p in row.get("per_round", []) if p.get("auc") is not None]
            if points:
                r, auc = zip(*points, strict=True)
                ax.plot(r, auc, marker="o", ls="--" if row.get("control") else "-", label=row["name"])
    ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xlabel("communication round")
    ax.set_ylabel("attack AUC")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _interval(m: dict, key: str, fmt: str = "{:.3f}") -> str:
    ci = m.get(f"{key}_ci95")
    value = fmt.format(m[key])
    return value if not ci else f"{value} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def render_table(results: list[AttackResult], console) -> None:
    """One rich table per attack: AUC, TPR at low FPR, balanced accuracy, DP check; then the notes."""
    from rich.table import Table

    for result in results:
        table = Table(
            title=f"{result.attack} attack on {result.run} - observed: {result.observed}",
            title_justify="left",
        )
        for col in (
            "attack",
            "party",
            "AUC [95% CI]",
            "TPR@1%FPR",
            "TPR@0.1%FPR",
            "bal. acc",
            "n+/n-",
            "DP check",
        ):
            table.add_column(col, overflow="fold")
        for row in result.rows:
            name = row.name.split(": ", 1)[-1]
            if row.metrics is None:
                table.add_row(name, row.party, f"[yellow]{row.reason}[/yellow]", "", "", "", "", "")
                continue
            m = row.metrics
            dp = ""
            if row.dp:
                ok = "ok" if row.dp["respects_bound"] else "[red]VIOLATED[/red]"
                lower = row.dp["empirical_epsilon"]["clopper_pearson"]
                dp = f"{ok}; eps >= {lower:.2f} (claimed {row.dp['epsilon']:.3g})"
            table.add_row(
                name,
                row.party,
                _interval(m, "auc"),
                _interval(m, "tpr_at_1pct_fpr"),
                _interval(m, "tpr_at_0.1pct_fpr"),
                f"{m['balanced_accuracy']:.3f}",
                f"{m['n_positive']}/{m['n_negative']}",
                dp,
            )
        console.print(table)
        for row in result.rows:
            for note in row.notes:
                console.print(f"  [dim]{row.name.split(': ', 1)[-1]}: {note}[/dim]")
        for note in result.notes:
            console.print(f"  [dim]{note}[/dim]")
        console.print(f"  [dim]{result.seconds:.1f} s, seed {result.seed}[/dim]")
