"""Benchmark figures (matplotlib, headless): UAR and attack AUC against epsilon, the frontier, Figure 2.

Every function takes the aggregated points of results.json (or Figure 2's curves) and writes one
PNG atomically. Undefended and secure-aggregation-only points have epsilon = infinity: they are
drawn as horizontal lines across the epsilon axis.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DEFENCE_STYLE = {
    "none": ("black", "o"),
    "record-dp": ("tab:blue", "s"),
    "user-dp": ("tab:orange", "D"),
    "secagg": ("tab:green", "^"),
    "record-dp+secagg": ("tab:purple", "P"),
    "user-dp+secagg": ("tab:brown", "X"),
}
CHANCE_AUC = 0.5
CHANCE_UAR = 25.0  # four emotions


def _save(fig, path: Path, right: float = 1.0) -> None:
    path = Path(path)
    fig.tight_layout(rect=(0.0, 0.02, right, 1.0))
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _legend(ax, **kwargs) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, **kwargs)


def _figure_legend(fig, axes) -> None:
    """One legend right of the panels, each label once (the panels share most entries)."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), fontsize=7, loc="center right")


def _by_defence(points: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in points:
        # a seeded-noise point carries no DP guarantee against seed holders: its series says so
        key = p["defence"] + (" (seeded noise: no DP vs seed holders)" if p.get("noise") == "seeded" else "")
        out.setdefault(key, []).append(p)
    for group in out.values():
        group.sort(key=lambda p: p["epsilon"]["mean"] if p["epsilon"] else math.inf)
    return out


def _eps(p: dict) -> float:
    return p["epsilon"]["mean"] if p["epsilon"] else math.inf


def _val(p: dict, key: str, scale: float = 1.0) -> tuple[float, float] | None:
    d = p.get(key)
    return None if d is None else (scale * d["mean"], scale * d["sd"])


def _eps_axis(ax, points: list[dict]) -> tuple[float, float]:
    from matplotlib.ticker import FormatStrFormatter

    finite = [_eps(p) for p in points if math.isfinite(_eps(p))]
    lo, hi = (min(min(finite) / 2, 0.5), max(max(finite) * 2, 10.0)) if finite else (0.1, 100.0)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("ε (log scale; ∞ = no DP, drawn as a line)")
    return lo, hi


def _unobservable(p: dict) -> bool:
    """Secure aggregation hides each client's update: a per-client attack has nothing to score."""
    return "secagg" in p["defence"]


def _series(
    ax, points: list[dict], key: str, scale: float = 1.0, hollow_missing: float | None = None
) -> None:
    for defence, group in _by_defence(points).items():
        color, marker = DEFENCE_STYLE.get(group[0]["defence"], ("grey", "o"))
        finite = [p for p in group if math.isfinite(_eps(p)) and _val(p, key, scale)]
        for p in group:
            v = _val(p, key, scale)
            if math.isinf(_eps(p)):
                if v is not None:
                    ax.axhline(v[0], color=color, ls="--", lw=1.2, label=f"{p['point']} (ε = ∞)")
                    ax.axhspan(v[0] - v[1], v[0] + v[1], color=color, alpha=0.08)
                elif hollow_missing is not None and _unobservable(p):
                    ax.axhline(
                        hollow_missing,
                        color=color,
                        ls=":",
                        lw=1.2,
                        label=f"{p['point']} (ε = ∞, not observable: chance)",
                    )
        hidden = [p for p in group if math.isfinite(_eps(p)) and _unobservable(p) and not _val(p, key, scale)]
        if hidden and hollow_missing is not None:
            ax.scatter(
                [_eps(p) for p in hidden],
                [hollow_missing] * len(hidden),
                facecolors="none",
                edgecolors=color,
                marker=marker,
                s=60,
                label=f"{defence} (not observable: chance)",
            )
        if finite:
            xs = [_eps(p) for p in finite]
            ys = [_val(p, key, scale) for p in finite]
            ax.errorbar(
                xs,
                [y[0] for y in ys],
                yerr=[y[1] for y in ys],
                color=color,
                marker=marker,
                capsize=3,
                label=defence,
            )
            for x, y, p in zip(xs, ys, finite, strict=True):
                if p.get("sigma") is not None:
                    ax.annotate(
                        f"σ={p['sigma']:.3g}",
                        (x, y[0]),
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize=7,
                        color=color,
                    )


def uar_vs_epsilon(points: list[dict], path: Path) -> None:
    """Test UAR (%) against epsilon, one series per defence, spread over seeds as error bars."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    _eps_axis(ax, points)
    _series(ax, points, "test_uar_final", 100.0)
    ax.axhline(CHANCE_UAR, color="grey", lw=0.8, ls=":", label="chance (4 classes)")
    ax.set_ylabel("test UAR (%)")
    ax.set_title("Utility against privacy budget", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    _legend(ax, loc="best")
    _save(fig, path)


def attack_vs_epsilon(points: list[dict], path: Path) -> None:
    """Membership and gender attack AUC against epsilon, with the largest AUC (eps, delta)-DP allows."""
    from privfl.privacy import dp_auc_bound

    fig, axes = plt.subplots(1, 2, figsize=(13.5, 4.4), sharey=True)
    deltas = sorted({p["delta"] for p in points if p.get("delta") is not None})
    for ax, key, title in (
        (axes[0], "membership_auc", "membership inference (strongest variant)"),
        (axes[1], "gender_auc", "gender inference (per-client update)"),
    ):
        lo, hi = _eps_axis(ax, points)
        grid = np.logspace(math.log10(lo), math.log10(hi), 200)
        for delta, ls in zip(deltas, ("-", "-.", "--", ":"), strict=False):
            ax.plot(
                grid,
                [dp_auc_bound(e, delta) for e in grid],
                color="black",
                lw=1.4,
                ls=ls,
                label=f"DP bound on AUC (δ={delta:.0e})",
            )
        _series(ax, points, key, hollow_missing=CHANCE_AUC if key == "gender_auc" else None)
        ax.axhline(CHANCE_AUC, color="grey", lw=0.8, ls=":", label="chance")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0.3, 1.02)
        ax.grid(alpha=0.3, which="both")

    axes[0].set_ylabel("attack ROC AUC")
    fig.text(
        0.5,
        0.005,
        "The bound is for a test between neighbouring datasets at the protected unit (an utterance "
        "for record-level DP, a client for user-level DP); it covers the membership attacks.",
        ha="center",
        fontsize=7,
        color="dimgrey",
    )
    _figure_legend(fig, axes)
    _save(fig, path, right=0.77)


def frontier(points: list[dict], path: Path) -> None:
    """Utility against attack success: each defence a curve through its points (noise increasing)."""
    fig, axes = plt.subplots(1, 2, figsize=(13.5, 4.4), sharey=True)
    for ax, key, name in (
        (axes[0], "membership_auc", "membership AUC"),
        (axes[1], "gender_auc", "gender AUC"),
    ):
        for defence, group in _by_defence(points).items():
            color, marker = DEFENCE_STYLE.get(group[0]["defence"], ("grey", "o"))
            pts = []
            for p in group:
                u = _val(p, "test_uar_final", 100.0)
                a = _val(p, key)
                if u is None:
                    continue
                pts.append((a, u, p))
            scored = [(a, u, p) for a, u, p in pts if a is not None]
            if scored:
                ax.errorbar(
                    [a[0] for a, _, _ in scored],
                    [u[0] for _, u, _ in scored],
                    xerr=[a[1] for a, _, _ in scored],
                    yerr=[u[1] for _, u, _ in scored],
                    color=color,
                    marker=marker,
                    capsize=3,
                    label=defence,
                )
                for a, u, p in scored:
                    if p.get("sigma") is None:
                        continue  # the legend names the single undefended / secure-aggregation point
                    ax.annotate(
                        f"σ={p['sigma']:.3g}",
                        (a[0], u[0]),
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize=7,
                        color=color,
                    )
            for a, u, p in pts:
                if a is None and key == "gender_auc" and _unobservable(p):  # nothing per-client to attack
                    ax.scatter(
                        [CHANCE_AUC],
                        [u[0]],
                        facecolors="none",
                        edgecolors=color,
                        marker=marker,
                        s=60,
                        label=f"{p['point']} (not observable: chance)",
                    )
        ax.axvline(CHANCE_AUC, color="grey", lw=0.8, ls=":")
        ax.set_xlim(0.4, 1.02)
        ax.set_xlabel(f"{name} (lower is more private)")
        ax.set_title(f"Utility against {name}", fontsize=10)
        ax.grid(alpha=0.3)

    axes[0].set_ylabel("test UAR (%)")
    _figure_legend(fig, axes)
    _save(fig, path, right=0.77)


def fig2_curves(curves: list[dict], path: Path, title: str, paper_uar: float | None = None) -> None:
    """Test UAR (%) over communication rounds, one line per setting, like the paper's Figure 2.

    curves: [{"label", "model", "rounds": [...], "uar": [...], "sd": [...] or None}]; colour by model
    and K, line style by (B, E).
    """
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    colors = {}
    palette = [
        "tab:blue",
        "tab:cyan",
        "tab:red",
        "tab:orange",
        "tab:green",
        "tab:olive",
        "tab:purple",
        "tab:pink",
    ]
    styles = {}
    for c in curves:
        key = (c["model"], c["clients"])
        colors.setdefault(key, palette[len(colors) % len(palette)])
        styles.setdefault((c["batch_size"], c["local_epochs"]), ["-", "--", "-.", ":"][len(styles) % 4])
        x, y = np.asarray(c["rounds"]), 100.0 * np.asarray(c["uar"])
        ax.plot(
            x, y, color=colors[key], ls=styles[(c["batch_size"], c["local_epochs"])], lw=1.4, label=c["label"]
        )
        if c.get("sd") is not None and len(c["sd"]) == len(x):
            sd = 100.0 * np.asarray(c["sd"])
            ax.fill_between(x, y - sd, y + sd, color=colors[key], alpha=0.1)
    if paper_uar is not None:
        ax.axhline(
            paper_uar, color="black", lw=1.0, ls=(0, (5, 3)), label=f"paper: LSTM on IEMOCAP, {paper_uar:g} %"
        )
    ax.axhline(CHANCE_UAR, color="grey", lw=0.8, ls=":", label="chance (4 classes)")
    ax.set_xlabel("communication rounds")
    ax.set_ylabel("test UAR (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, path)
