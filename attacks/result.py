"""Attack results as plain data: one row per attack variant, ready for a table, a plot and JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from privfl.attacks.metrics import (
    attack_metrics,
    clopper_pearson,
    dp_bound_violations,
    empirical_epsilon,
    roc,
)
from privfl.privacy import dp_tpr_bound


@dataclass
class AttackRow:
    """One attack variant's scores. metrics is None (and reason says why) when it could not be scored."""

    name: str
    observed: str
    metrics: dict | None = None
    reason: str = ""
    roc: dict | None = None  # {"fpr": [...], "tpr": [...]}
    per_round: list[dict] = field(default_factory=list)
    dp: dict | None = None
    control: bool = False
    notes: list[str] = field(default_factory=list)
    party: str = "server"  # who runs it, holding exactly what that party holds (docs/attacks.md)


PARTIES = ("server", "key holder", "reader of the released model", "another client")


@dataclass
class AttackResult:
    """Everything one attack produced on one run; `to_dict` is what attack.json stores."""

    attack: str
    run: str
    observed: str
    config: dict
    seed: int
    rows: list[AttackRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


def _jsonable(node):
    if isinstance(node, dict):
        return {str(k): _jsonable(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_jsonable(v) for v in node]
    if isinstance(node, np.generic):
        return node.item()
    if isinstance(node, np.ndarray):
        return node.tolist()
    if isinstance(node, float) and not np.isfinite(node):
        return None
    return node


def scored_row(
    name: str,
    observed: str,
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    threshold: float | None = None,
    groups=None,
    bootstrap: int = 1000,
    seed: int = 0,
    dp: tuple[float, float] | None = None,
    control: bool = False,
    notes: list[str] | None = None,
    party: str = "server",
) -> AttackRow:
    """Score an attack variant: metrics with intervals, its ROC curve, and the DP check if given."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    row = AttackRow(name, observed, control=control, notes=list(notes or []), party=party)
    if labels.size == 0 or labels.min() == labels.max():
        n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
        row.reason = f"needs both classes to score (got {n_pos} positive, {n_neg} negative)"
        return row
    row.metrics = attack_metrics(
        scores, labels, threshold=threshold, groups=groups, bootstrap=bootstrap, seed=seed
    )
    fpr, tpr, _ = roc(scores, labels)
    row.roc = {"fpr": np.round(fpr, 6).tolist(), "tpr": np.round(tpr, 6).tolist()}
    if dp is not None:
        row.dp = dp_check(scores, labels, *dp)
    return row


def dp_check(scores: np.ndarray, labels: np.ndarray, epsilon: float, delta: float) -> dict:
    """Does the measured ROC respect TPR <= e^eps FPR + delta (and its mirror)? And which eps does it imply?

    A point estimate above the bound can be sampling noise on small sets, so a violation counts as
    significant only when the whole 95 % Clopper-Pearson box of that point lies above the bound.
    """
    fpr, tpr, _ = roc(scores, labels)
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    fp_lo, fp_hi = clopper_pearson(np.rint(fpr * n_neg), n_neg, 0.05)
    tp_lo, _ = clopper_pearson(np.rint(tpr * n_pos), n_pos, 0.05)
    significant = int(np.sum(tp_lo > dp_tpr_bound(fp_hi, epsilon, delta) + 1e-9))
    return {
        "epsilon": epsilon,
        "delta": delta,
        "violations": dp_bound_violations(fpr, tpr, epsilon, delta),
        "significant_violations": significant,
        "respects_bound": significant == 0,
        "empirical_epsilon": empirical_epsilon(scores, labels, delta),
    }
