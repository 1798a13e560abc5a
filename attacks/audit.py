"""`privfl attack audit`: DP auditing in one training run, from the canaries a run inserted.

The run was trained with `--canaries m` (privfl.canaries): each canary was inserted with
probability 1/2 from OS entropy and the draw kept in `canaries.secret.npz`, which only this auditor
reads. The auditor scores every canary from what the threat model's observer holds, then:

* **lower bound** (Steinke, Nasr and Jagielski 2023, "Privacy auditing with one (1) training
  run", Theorem 3.1 with the delta term of their Algorithm 2 / Proposition 5.7): the auditor guesses
  "in" for the k+ highest scores and "out" for the k- lowest and abstains on the rest; if the run
  is (eps, delta)-DP towards every canary, W correct guesses out of r exceed v with probability at
  most P[Binomial(r, e^eps / (1 + e^eps)) >= v] + 2 m delta alpha. The bound is the largest eps
  this rejects at the stated confidence. A fixed grid of (k+, k-) choices is tried, each at
  significance (1 - confidence) / (grid size) (Bonferroni), so the reported bound holds at the
  stated confidence although the best guess count was chosen after looking.
* **estimate** (Andrew et al. 2024, "One-shot empirical privacy estimation for federated
  learning"): Gaussians fitted to the scores of inserted and of held-out canaries (one pooled
  variance), and the eps at which that pair of Gaussians is (eps, delta)-indistinguishable. An
  estimate, not a bound: it comes with a bootstrap interval, not a guarantee.

Scores. Gradient canaries (record level, white box): canary i is a Dirac of value s_i C on flat
coordinate j_i, so SGD moves that weight by -s_i C lr / B whenever it is sampled; the score is
-s_i times the observed change of weight j_i, summed over rounds of its owner's recorded updates
(view "updates": the server, which sees each client's DP-SGD output) or read off the final model
minus w_0 (view "model": a reader of the released model). Client canaries (user level): the score
is the cosine between the final model minus w_0 and the canary's direction (view "model"; Andrew
et al.'s final-model statistic).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import optimize, special, stats

from privfl.attacks.result import AttackResult, AttackRow
from privfl.canaries import SECRET_FILE, CanarySecrets, direction
from privfl.errors import ConfigError, RunError
from privfl.models import initial_weights
from privfl.runs import RunDir, atomic_write_json

VIEWS = ("auto", "model", "updates")
GUESS_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0)
"""Fractions of m the auditor may guess on (both tails, and the top tail alone): a fixed grid."""


# --- the one-run bound --------------------------------------------------------------------------
def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least v of r guesses correct] under (epsilon, delta)-DP with m canaries (Steinke et al.).

    m canaries, each in with probability 1/2; r guesses (abstentions excluded), v correct.
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = float(special.expit(epsilon))  # accuracy of eps-DP randomised response
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0 or v == 0:
        return min(beta, 1.0)
    i = np.arange(1, v + 1)
    below = stats.binom.sf(v - i - 1, r, q) - beta  # P[v - i <= Binomial(r, q) < v]
    alpha = float(np.max(below / i))
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, significance: float) -> float:
    """Largest eps whose (eps, delta)-DP claim v correct of r guesses rejects at `significance`; 0 if none."""
    if not 0 < significance < 1:
        raise ValueError(f"significance must be in (0, 1), got {significance}")
    if r == 0 or p_value(m, r, v, 0.0, delta) >= significance:
        return 0.0
    hi = 1.0
    while p_value(m, r, v, hi, delta) < significance:
        hi *= 2.0
        if hi > 1e3:
            return math.inf
    return float(optimize.brentq(lambda e: p_value(m, r, v, e, delta) - significance, 0.0, hi, xtol=1e-6))


def guess_grid(m: int) -> list[tuple[int, int]]:
    """(k+, k-) the auditor may use: for each fraction f of m, k = max(1, round(f m)) guesses split
    evenly between both tails, and k guesses on the top tail alone. Fixed before the scores are seen."""
    grid: list[tuple[int, int]] = []
    for f in GUESS_FRACTIONS:
        k = max(1, int(round(f * m)))
        for pair in ((k - k // 2, k // 2), (k, 0)):
            if pair not in grid and sum(pair) <= m:
                grid.append(pair)
    return grid


def one_run_bound(scores: np.ndarray, included: np.ndarray, delta: float, confidence: float) -> dict:
    """Steinke et al.'s eps lower bound from canary scores (higher: more likely inserted).

    Tries every (k+, k-) of `guess_grid` at significance (1 - confidence) / len(grid) and reports
    the largest bound with its guesses.
    """
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    m = int(scores.shape[0])
    grid = guess_grid(m)
    significance = (1.0 - confidence) / len(grid)
    order = np.argsort(-scores, kind="stable")  # highest first
    best = {"epsilon_lower_bound": 0.0, "guesses": 0, "correct": 0, "k_plus": 0, "k_minus": 0}
    for k_plus, k_minus in grid:
        top, bottom = order[:k_plus], order[m - k_minus :] if k_minus else order[:0]
        v = int(included[top].sum() + (~included[bottom]).sum())
        r = k_plus + k_minus
        eps = epsilon_lower_bound(m, r, v, delta, significance)
        if eps > best["epsilon_lower_bound"]:
            best = {
                "epsilon_lower_bound": eps,
                "guesses": r,
                "correct": v,
                "k_plus": k_plus,
                "k_minus": k_minus,
            }
    best.update(canaries=m, inserted=int(included.sum()), hypotheses=len(grid), confidence=confidence)
    return best


# --- the Gaussian estimate ----------------------------------------------------------------------
def _delta_of(eps: float, mu1: float, s1: float, mu0: float, s0: float) -> float:
    """delta(eps) = P[A] - e^eps Q[A], A = {x : log p(x)/q(x) > eps}, P = N(mu1, s1^2), Q = N(mu0, s0^2)."""
    # log p - log q - eps = a x^2 + b x + c
    a = 1 / (2 * s0**2) - 1 / (2 * s1**2)
    b = mu1 / s1**2 - mu0 / s0**2
    c = mu0**2 / (2 * s0**2) - mu1**2 / (2 * s1**2) + math.log(s0 / s1) - eps
    ndtr = special.ndtr

    def mass(lo: float, hi: float) -> float:
        p = ndtr((hi - mu1) / s1) - ndtr((lo - mu1) / s1)
        q = ndtr((hi - mu0) / s0) - ndtr((lo - mu0) / s0)
        return float(p - math.exp(eps) * q) if q > 0 else float(p)

    if abs(a) < 1e-12 * max(abs(b), 1e-300):
        if b == 0:
            return max(0.0, 1.0 - math.exp(eps)) if c > 0 else 0.0
        x = -c / b
        return max(0.0, mass(x, math.inf) if b > 0 else mass(-math.inf, x))
    disc = b * b - 4 * a * c
    if disc <= 0:  # the quadratic never changes sign: A is everything (a > 0) or nothing
        return max(0.0, 1.0 - math.exp(eps)) if a > 0 else 0.0
    r1, r2 = sorted(((-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)))
    if a > 0:  # positive outside the roots
        return max(0.0, mass(-math.inf, r1) + mass(r2, math.inf))
    return max(0.0, mass(r1, r2))


_MAX_EPS = 512.0


def gaussian_epsilon(mu1: float, s1: float, mu0: float, s0: float, delta: float) -> float:
    """Smallest eps at which N(mu1, s1^2) and N(mu0, s0^2) are (eps, delta)-indistinguishable both ways."""
    if not (s1 > 0 and s0 > 0):
        return math.inf
    worst = 0.0
    for args in ((mu1, s1, mu0, s0), (mu0, s0, mu1, s1)):
        if _delta_of(0.0, *args) <= delta:
            continue
        hi = 1.0
        while _delta_of(hi, *args) > delta:
            hi *= 2.0
            if hi > _MAX_EPS:  # beyond e^700 the arithmetic overflows: report "unbounded"
                return math.inf
        worst = max(worst, optimize.brentq(lambda e, a=args: _delta_of(e, *a) - delta, 0.0, hi, xtol=1e-6))
    return float(worst)


def gaussian_estimate(
    scores: np.ndarray, included: np.ndarray, delta: float, bootstrap: int = 1000, seed: int = 0
) -> dict:
    """Andrew et al.'s estimate: the eps of Gaussians fitted to inserted and held-out scores.

    epsilon_estimate fits one pooled variance (the mechanisms audited here add isotropic Gaussian
    noise, so both groups share it; the eps is then that of the Gaussian mechanism with
    mu = mean difference / sd), with a bootstrap 95 % interval resampling canaries within each
    group. epsilon_unequal_variances fits each group's own variance: at small delta it lives in
    the tails, where a variance ratio within sampling error of 1 moves eps by several units, so it
    is reported beside the estimate, not as it.
    """
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    s_in, s_out = scores[included], scores[~included]
    if s_in.size < 2 or s_out.size < 2:
        return {"epsilon_estimate": None, "reason": "needs two inserted and two held-out canaries"}

    def pooled(a: np.ndarray, b: np.ndarray) -> float:
        var = ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
        return gaussian_epsilon(a.mean(), math.sqrt(var), b.mean(), math.sqrt(var), delta)

    rng = np.random.default_rng([seed, 0xA0D1])
    boots = [
        pooled(rng.choice(s_in, s_in.size), rng.choice(s_out, s_out.size)) for _ in range(max(bootstrap, 0))
    ]
    # "nearest": no interpolation, so an unbounded (inf) resample gives inf, not nan
    lo, hi = np.percentile(boots, [2.5, 97.5], method="nearest").tolist() if boots else (None, None)
    sd = math.sqrt(
        ((s_in.size - 1) * s_in.var(ddof=1) + (s_out.size - 1) * s_out.var(ddof=1))
        / (s_in.size + s_out.size - 2)
    )
    return {
        "epsilon_estimate": pooled(s_in, s_out),
        "ci95": [lo, hi],
        "mu": float((s_in.mean() - s_out.mean()) / sd) if sd > 0 else math.inf,
        "epsilon_unequal_variances": gaussian_epsilon(
            s_in.mean(), s_in.std(ddof=1), s_out.mean(), s_out.std(ddof=1), delta
        ),
        "mean_inserted": float(s_in.mean()),
        "std_inserted": float(s_in.std(ddof=1)),
        "mean_held_out": float(s_out.mean()),
        "std_held_out": float(s_out.std(ddof=1)),
    }


def auc(scores: np.ndarray, included: np.ndarray) -> float:
    """Area under the ROC curve of the scores for inserted vs held-out canaries (ties count half)."""
    ranks = stats.rankdata(scores)
    n1, n0 = int(included.sum()), int((~included).sum())
    if n1 == 0 or n0 == 0:
        return math.nan
    return float((ranks[included].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# --- scoring a run ------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditConfig:
    """What the auditor is asked: the view (whose observations), the confidence, the bootstrap."""

    view: str = "auto"
    confidence: float = 0.95
    bootstrap: int = 1000
    seed: int = 0

    def validate(self) -> AuditConfig:
        if self.view not in VIEWS:
            raise ConfigError(f"--view {self.view!r} is not one of {', '.join(VIEWS)}")
        if not 0.5 <= self.confidence < 1:
            raise ConfigError(f"--confidence must be in [0.5, 1), got {self.confidence}; e.g. 0.95")
        if self.bootstrap < 0:
            raise ConfigError(f"--bootstrap must be >= 0, got {self.bootstrap}")
        return self


def gradient_scores(secrets: CanarySecrets, deltas_by_client: dict[int, np.ndarray]) -> np.ndarray:
    """-s_i times the change of weight j_i in canary i's owner's summed delta (model view: one delta
    for every owner). Higher: the weight moved the way the canary's gradient pushes it."""
    out = np.empty(secrets.count)
    for i in range(secrets.count):
        delta = deltas_by_client[int(secrets.owners[i])]
        out[i] = -secrets.signs[i] * float(delta[int(secrets.coordinates[i])])
    return out


def client_scores(secrets: CanarySecrets, model_delta: np.ndarray) -> np.ndarray:
    """Cosine between the final model's change and each client canary's direction."""
    norm = float(np.linalg.norm(model_delta))
    if norm == 0:
        return np.zeros(secrets.count)
    unit = model_delta.astype(np.float64) / norm
    return np.array([float(direction(int(s), secrets.n_params) @ unit) for s in secrets.seeds])


def _resolve_view(view: str, secrets: CanarySecrets, run: RunDir, rounds: int) -> str:
    if secrets.kind == "client":
        if view == "updates":
            raise ConfigError(
                "--view updates scores gradient canaries; client canaries are scored on the final model "
                "(their updates are never recorded): use --view model"
            )
        return "model"
    recorded = run.recorded_rounds()
    if view == "updates" and len(recorded) < rounds:
        raise ConfigError(
            f"--view updates needs every round's recorded updates, {run.path} holds {len(recorded)} of "
            f"{rounds}; train with --record-updates, or use --view model"
        )
    if view == "auto":
        return "updates" if len(recorded) >= rounds else "model"
    return view


VIEW_OBSERVER = {
    "model": ("released_model", "a reader of the released model (final weights minus w_0)"),
    "updates": ("server", "the server: each client's update in every round (recorded updates)"),
}
# The party of docs/attacks.md that holds each view: anyone with the final weights, or the server.
VIEW_PARTY = {"model": "reader of the released model", "updates": "server"}


def audit_run(run_path: Path, cfg: AuditConfig | None = None) -> AttackResult:
    """Score a finished run's canaries and bound its epsilon; reads only."""
    cfg = (cfg or AuditConfig()).validate()
    started = time.perf_counter()
    run = RunDir.open(Path(run_path))
    config = run.config()
    secrets = CanarySecrets.load(run.path)
    ckpt = run.load_checkpoint(secrets.n_params)
    if ckpt is None:
        raise RunError(f"{run.path} has no checkpoint yet; audit it after its first round")
    view = _resolve_view(cfg.view, secrets, run, ckpt["round"])
    w0 = initial_weights(config.model, config.data.n_mels, config.seed)
    model_delta = ckpt["weights"].astype(np.float64) - w0
    if secrets.kind == "client":
        scores = client_scores(secrets, model_delta)
    elif view == "model":
        scores = gradient_scores(secrets, {int(c): model_delta for c in np.unique(secrets.owners)})
    else:
        summed: dict[int, np.ndarray] = {
            int(c): np.zeros(secrets.n_params) for c in np.unique(secrets.owners)
        }
        for r in run.recorded_rounds()[: ckpt["round"]]:
            rec = run.load_updates(r)
            for cid, delta in zip(rec["client_ids"], rec["deltas"], strict=True):
                if int(cid) in summed:
                    summed[int(cid)] += delta
        scores = gradient_scores(secrets, summed)

    summary = run.summary() if run.finished else {}
    privacy = summary.get("privacy") or {}
    observer, observer_text = VIEW_OBSERVER[view]
    accounted = ((privacy.get("observers") or {}).get(observer) or {}).get("epsilon")
    delta = float(privacy.get("delta", 1e-5)) if privacy else 1e-5
    bound = one_run_bound(scores, secrets.included, delta, cfg.confidence)
    estimate = gaussian_estimate(scores, secrets.included, delta, cfg.bootstrap, cfg.seed)
    unit = (
        "one record (a Dirac gradient canary)"
        if secrets.kind == "gradient"
        else "one client (a canary client)"
    )
    common = {
        "accountant_epsilon": accounted,
        "delta": delta,
        "canary_kind": secrets.kind,
        "view": view,
        "auc": auc(scores, secrets.included),
    }
    lower = AttackRow(
        "one-run lower bound (Steinke et al. 2023)",
        observer_text,
        party=VIEW_PARTY[view],
        metrics={
            **common,
            **bound,
            "below_accountant": None if accounted is None else bound["epsilon_lower_bound"] <= accounted,
        },
    )
    est = AttackRow(
        "Gaussian estimate (Andrew et al. 2024)",
        observer_text,
        party=VIEW_PARTY[view],
        metrics={**common, **estimate},
        notes=["an estimate from fitted Gaussians, not a bound; ci95 is a bootstrap interval over canaries"],
    )
    notes = [
        f"{secrets.count} {secrets.kind} canaries, {int(secrets.included.sum())} inserted (secret draw "
        f"read from {run.path.name}/{SECRET_FILE}); run mode {config.train.mode}",
    ]
    if 2 * secrets.count * delta >= 0.1:
        notes.append(
            f"2 m delta = {2 * secrets.count * delta:.3g}: the one-run bound's delta term is large, so the "
            "bound is weak or 0; train with a smaller --delta (e.g. 1e-5) or fewer --canaries"
        )
    result = AttackResult(
        attack="audit",
        run=str(run.path),
        observed=observer_text,
        config={"view": view, "confidence": cfg.confidence, "bootstrap": cfg.bootstrap, "unit": unit},
        seed=cfg.seed,
        rows=[lower, est],
        notes=notes,
    )
    result.seconds = time.perf_counter() - started
    return result


def write_audit(out_dir: Path, result: AttackResult) -> Path:
    """Write audit-<view>.json (the AttackResult) into out_dir (default <run>/attacks).

    One file per view, so auditing a run from the server's view and from the released model's
    keeps both.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"audit-{result.config['view']}.json"
    atomic_write_json(path, result.to_dict())
    return path
