"""Figures written into run directories (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def uar_curves(metrics: list[dict], path: Path, title: str = "") -> None:
    """UAR (%) over communication rounds for validation and test, like the paper's Figure 2."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for split, style in (("val", "-"), ("test", "--")):
        rows = [m for m in metrics if f"{split}_uar" in m]
        if rows:
            ax.plot([m["round"] for m in rows], [100 * m[f"{split}_uar"] for m in rows], style, label=split)
    ax.axhline(25.0, color="grey", lw=0.8, ls=":", label="chance (4 classes)")
    ax.set_xlabel("communication round")
    ax.set_ylabel("UAR (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
