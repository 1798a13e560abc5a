"""How well an attack separates positives from negatives: ROC, AUC, TPR at low FPR, bootstrap, DP bound.

Every function here is pure: scores and 0/1 labels in, numbers out. "Positive" is the thing the
attack claims (member, female); a higher score means "more likely positive". Randomness (the
bootstrap) comes from a seed argument, never from global RNG state.

The (epsilon, delta)-DP region (Kairouz et al. 2015): any test between neighbouring datasets has
    TPR <= e^eps * FPR + delta    and    1 - FPR >= e^-eps * (1 - TPR - delta) ... written as
    TPR <= 1 - e^-eps * (1 - delta - FPR),
so a measured (FPR, TPR) pair above either line is evidence against the claimed guarantee, and the
largest eps that the pairs force is an empirical lower bound on the true epsilon.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from privfl.privacy import dp_tpr_bound

LOW_FPRS: tuple[float, ...] = (0.01, 0.001)
"""The false-positive rates at which TPR is reported (Carlini et al. 2022: attacks matter at low FPR)."""


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.shape[0]} scores but {labels.shape[0]} labels")
    if not np.isin(labels, (0, 1)).all():  # before the cast: a label of 0.7 is a mistake, not a 0
        raise ValueError("labels must be 0 (negative) or 1 (positive)")
    labels = labels.astype(np.int64)
    if labels.size == 0 or labels.min() == labels.max():
        raise ValueError("need both positives and negatives to score an attack")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    return scores, labels


def roc(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score (scikit-learn, no points dropped)."""
    scores, labels = _check(scores, labels)
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    return fpr, tpr, thr


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The highest TPR among ROC points whose FPR is at most `target` (no interpolation)."""
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """(TPR + TNR) / 2 of hard 0/1 predictions."""
    predicted = np.asarray(predicted).astype(bool)
    labels = np.asarray(labels).astype(bool)
    return float((predicted[labels].mean() + (~predicted[~labels]).mean()) / 2)


def best_balanced_accuracy(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """max over thresholds of (TPR + 1 - FPR) / 2: an oracle threshold, an upper bound for the attack."""
    return float(np.max((tpr + 1.0 - fpr) / 2.0))


def _point_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float | None) -> dict[str, float]:
    """The reported point estimates, computed with scikit-learn."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    out = {"auc": float(roc_auc_score(labels, scores))}
    for target in LOW_FPRS:
        out[_tpr_key(target)] = tpr_at_fpr(fpr, tpr, target)
    if threshold is None:
        out["balanced_accuracy"] = best_balanced_accuracy(fpr, tpr)
    else:
        out["balanced_accuracy"] = balanced_accuracy(scores >= threshold, labels)
    return out


def fast_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float | None) -> dict[str, float]:
    """The same numbers as `_point_metrics` in plain numpy (for the bootstrap's thousands of resamples).

    AUC from the Mann-Whitney rank sum (ties averaged); TPR at FPR <= f: the fraction of positives
    scoring strictly above the (floor(f * n_neg) + 1)-th highest negative, which is the best ROC point
    with at most floor(f * n_neg) false positives. The tests check it against scikit-learn.
    """
    from scipy.stats import rankdata

    pos, neg = scores[labels == 1], scores[labels == 0]
    n_pos, n_neg = len(pos), len(neg)
    ranks = rankdata(scores)
    out = {"auc": float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))}
    neg_desc = np.sort(neg)[::-1]
    pos_sorted = np.sort(pos)
    for target in LOW_FPRS:
        k = int(np.floor(target * n_neg + 1e-12))
        if k >= n_neg:
            out[_tpr_key(target)] = 1.0
        else:
            out[_tpr_key(target)] = (
                float(n_pos - np.searchsorted(pos_sorted, neg_desc[k], side="right")) / n_pos
            )
    if threshold is None:
        # best (TPR - FPR) over thresholds at each distinct score
        order = np.argsort(-scores, kind="mergesort")
        s, lab = scores[order], labels[order]
        tp, fp = np.cumsum(lab), np.cumsum(1 - lab)
        last = np.r_[s[1:] != s[:-1], True]  # a threshold takes all tied scores at once
        j = np.max(np.r_[0.0, tp[last] / n_pos - fp[last] / n_neg])
        out["balanced_accuracy"] = float((1.0 + j) / 2.0)
    else:
        out["balanced_accuracy"] = float(((pos >= threshold).mean() + (neg < threshold).mean()) / 2)
    return out


def _tpr_key(target: float) -> str:
    return f"tpr_at_{target * 100:g}pct_fpr"


def attack_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    threshold: float | None = None,
    groups: Sequence | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """AUC, TPR at 1 % and 0.1 % FPR, balanced accuracy, each with a 95 % bootstrap interval.

    threshold: the attack's own decision rule (score >= threshold means positive); None uses the
    best threshold on these scores (an oracle, reported as such). groups: a cluster id per score
    (e.g. the client); the bootstrap then resamples whole clusters, because scores of one client
    across rounds are not independent. Intervals come from `bootstrap` seeded resamples.
    """
    scores, labels = _check(scores, labels)
    point = _point_metrics(scores, labels, threshold)
    rng = np.random.default_rng([seed, 0xB007])
    if groups is None:
        clusters = [np.array([i]) for i in range(len(scores))]
    else:
        g = np.asarray(groups)
        clusters = [np.flatnonzero(g == u) for u in np.unique(g)]
    samples: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(bootstrap):
        pick = rng.integers(0, len(clusters), size=len(clusters))
        idx = np.concatenate([clusters[i] for i in pick])
        if labels[idx].min() == labels[idx].max():
            continue  # a resample with one class has no ROC; skipping it is the usual convention
        for k, v in fast_metrics(scores[idx], labels[idx], threshold).items():
            samples[k].append(v)
    out: dict = {
        "n_positive": int(labels.sum()),
        "n_negative": int((1 - labels).sum()),
        "fpr_resolution": 1.0 / int((1 - labels).sum()),
        "threshold_rule": "given" if threshold is not None else "oracle (best on these scores)",
        "bootstrap": {
            "resamples": bootstrap,
            "used": len(samples["auc"]),
            "seed": seed,
            "unit": "score" if groups is None else "group",
        },
    }
    for k, v in point.items():
        out[k] = v
        vals = np.asarray(samples[k])
        out[f"{k}_ci95"] = (
            [float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))] if vals.size else None
        )
    return out


# --- differential privacy ------------------------------------------------------------------------
def dp_bound_violations(fpr: np.ndarray, tpr: np.ndarray, epsilon: float, delta: float) -> int:
    """How many ROC points lie above the (epsilon, delta) region (beyond float rounding)."""
    return int(np.sum(np.asarray(tpr) > dp_tpr_bound(fpr, epsilon, delta) + 1e-9))


def _eps_from_rates(fpr: np.ndarray, tpr: np.ndarray, delta: float) -> np.ndarray:
    """eps forced by each (fpr, tpr) pair: max(ln((TPR-delta)/FPR), ln((1-FPR-delta)/(1-TPR)))."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log((tpr - delta) / fpr)
        b = np.log((1.0 - fpr - delta) / (1.0 - tpr))
    both = np.stack([a, b])
    both[~np.isfinite(both)] = -np.inf  # a zero rate gives no finite evidence
    return np.max(both, axis=0)


def clopper_pearson(k: np.ndarray, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-sided (1 - alpha) binomial confidence interval for k successes out of n."""
    from scipy.stats import beta

    k = np.asarray(k, dtype=np.float64)
    lo = np.where(k > 0, beta.ppf(alpha / 2, k, n - k + 1), 0.0)
    hi = np.where(k < n, beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    return lo, hi


def empirical_epsilon(scores: np.ndarray, labels: np.ndarray, delta: float, alpha: float = 0.05) -> dict:
    """Lower bounds on epsilon implied by an attack's ROC (Jagielski et al. 2020; Nasr et al. 2021).

    `point`: from the measured rates (an estimate, not a guarantee). `clopper_pearson`: from the
    pessimistic ends of exact (1 - alpha) intervals on FPR and TPR at each threshold; the maximum
    over thresholds picked on the same scores makes it somewhat optimistic, which the report says.
    """
    scores, labels = _check(scores, labels)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    point = float(np.max(_eps_from_rates(fpr, tpr, delta), initial=0.0))
    fp_lo, fp_hi = clopper_pearson(np.rint(fpr * n_neg), n_neg, alpha)
    tp_lo, tp_hi = clopper_pearson(np.rint(tpr * n_pos), n_pos, alpha)
    # the pessimistic corner for each inequality: low TPR, high FPR (and vice versa for the second)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log((tp_lo - delta) / fp_hi)
        b = np.log((1.0 - fp_hi - delta) / (1.0 - tp_lo))
    both = np.stack([a, b])
    both[~np.isfinite(both)] = -np.inf
    cp = float(np.max(both, initial=0.0))
    return {
        "point": max(point, 0.0),
        "clopper_pearson": max(cp, 0.0),
        "confidence": 1 - alpha,
        "delta": delta,
    }
