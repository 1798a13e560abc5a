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


def confusion_matrix(counts, labels, path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix [true, predicted] as a heat map, with the counts written in."""
    import numpy as np

    counts = np.asarray(counts)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(5, 4.4))
    image = ax.imshow(share, vmin=0.0, vmax=1.0, cmap="Blues")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{share[i, j]:.2f}\n({counts[i, j]})", ha="center", va="center", color=colour)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (row = recall)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
