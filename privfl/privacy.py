"""Privacy accounting: accountants, sigma calibration, default delta, and what each guarantee protects.

Two guarantees (see docs/privacy.md):

* record-level (`--mode dp`): every client runs DP-SGD on its own utterances; the unit protected
  is one utterance of one client. Each client has one accountant for the whole run that composes
  its steps of the Poisson-subsampled Gaussian mechanism (rate q_k = B / n_k).
* user-level (`--mode user-dp`, DP-FedAvg): the server adds noise to the sum of clipped updates of
  Poisson-sampled clients; the unit protected is all data of one client. One accountant composes
  one subsampled Gaussian step (rate q = train.fraction) per round.

Accountants are Opacus's (`RDPAccountant` by default, `PRVAccountant` on request); privfl steps
them itself, so a client's spend survives the model being replaced every round, and checkpoints
carry their histories so `--resume` continues them exactly.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from scipy import optimize

from privfl.errors import PrivacyError
from privfl.observers import Setting, guarantee, record_level, user_level

UNIT_RECORD = "one utterance of one client"
UNIT_USER = "all data of one client"

MAX_NOISE_MULTIPLIER = 1e3
"""The largest sigma a target epsilon may ask for; beyond it the model learns nothing useful."""

History = list[tuple[float, float, int]]
"""An accountant's history: (noise multiplier, sample rate, steps) runs, oldest first."""


# --- accountants ----------------------------------------------------------------------------------
def make_accountant(kind: str) -> IAccountant:
    """A fresh Opacus accountant: 'rdp' (Mironov et al. 2019) or 'prv' (Gopi et al. 2021)."""
    if kind == "rdp":
        return RDPAccountant()
    if kind == "prv":
        return PRVAccountant()
    raise PrivacyError(f"accountant {kind!r} is not one of rdp, prv; use --accountant rdp")


def epsilon_of(history: Sequence[tuple[float, float, int]], delta: float, kind: str) -> float:
    """Epsilon at `delta` after the composed history; 0 for an empty history, inf for sigma 0.

    RDP is Opacus's own analysis (compute_rdp, get_privacy_spent at RDPAccountant's default orders),
    with the per-step RDP curve cached per (sigma, q): a run's epsilon is asked for every round.
    """
    runs = tuple((float(s), float(q), int(n)) for s, q, n in history if int(n) > 0)
    if not runs:
        return 0.0
    if any(s <= 0 and q > 0 for s, q, _ in runs):
        return math.inf  # no noise: nothing is protected
    return _epsilon(runs, float(delta), kind)


@functools.lru_cache(maxsize=1024)
def _epsilon(runs: tuple[tuple[float, float, int], ...], delta: float, kind: str) -> float:
    with warnings.catch_warnings():
        # "optimal order is the largest/smallest alpha": at extreme sigma (epsilon below ~0.1 or
        # in the hundreds) the bound is looser than with more orders, but still a valid one
        warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
        if kind == "rdp":
            rdp = sum([_rdp_per_step(s, q) * n for s, q, n in runs])
            eps, _ = rdp_analysis.get_privacy_spent(orders=_RDP_ORDERS, rdp=rdp, delta=delta)
            return float(eps)
        accountant = make_accountant(kind)
        accountant.history = list(runs)
        return float(accountant.get_epsilon(delta=delta))


_RDP_ORDERS = list(RDPAccountant.DEFAULT_ALPHAS)


@functools.lru_cache(maxsize=4096)
def _rdp_per_step(sigma: float, q: float) -> np.ndarray:
    """RDP of one subsampled-Gaussian step at each default order (RDP composes by addition)."""
    curve = rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=_RDP_ORDERS)
    curve.setflags(write=False)
    return curve


def _check_noise(noise_multiplier: float | None, target_epsilon: float | None) -> None:
    if (noise_multiplier is None) == (target_epsilon is None):
        raise PrivacyError("give exactly one of noise_multiplier or target_epsilon")
    if noise_multiplier is not None and noise_multiplier < 0:
        raise PrivacyError(f"noise multiplier must be >= 0, got {noise_multiplier}")


USER_LEVEL_MAX_DEFAULT_DELTA = 1e-5
"""The largest default delta for user-level DP: with few clients 1/(10 K) would be 1e-2 at K = 5."""


def default_delta(n: int) -> float:
    """A delta below 1/n: 1/(10 n) rounded down to a power of ten (n = 20 -> 1e-3, 5000 -> 1e-5)."""
    if n < 1:
        raise PrivacyError(f"cannot choose delta for a population of {n}; need at least one record or client")
    return 10.0 ** math.floor(math.log10(1.0 / (10.0 * n)))


def default_user_delta(n_clients: int) -> float:
    """User-level default delta: 1/(10 K) rounded down, and never above 1e-5 (K = 5 -> 1e-5)."""
    return min(default_delta(n_clients), USER_LEVEL_MAX_DEFAULT_DELTA)


def check_delta(delta: float, n: int, what: str) -> None:
    """Refuse a delta that is not below 1/n: such a delta allows publishing one record outright."""
    if not 0.0 < delta < 1.0:
        raise PrivacyError(f"dp.delta must be in (0, 1), got {delta}; e.g. {default_delta(n):g}")
    if delta >= 1.0 / n:
        raise PrivacyError(
            f"dp.delta = {delta:g} is not below 1/n = {1.0 / n:.3g} for {what} ({n}); a delta that large "
            f"permits releasing a whole record; pass --delta {default_delta(n):g} or leave it unset"
        )


def solve_noise_multiplier(
    target_epsilon: float,
    delta: float,
    schedules: Iterable[tuple[float, int]],
    kind: str = "rdp",
    *,
    spent: Sequence[History] | None = None,
    rel_tol: float = 0.005,
    max_sigma: float = MAX_NOISE_MULTIPLIER,
) -> float:
    """Smallest sigma (to rel_tol in epsilon) whose worst epsilon over `schedules` is <= target.

    schedules: (sample rate, steps still to take) for each accountant sharing the sigma (one per
    client for record-level DP, one for user-level). spent: each accountant's history so far (for
    a resumed run that extends its rounds), in the same order. The result gives epsilon in
    [target * (1 - rel_tol), target] unless even tiny noise stays below the target.
    """
    plans = list(schedules)
    histories = list(spent) if spent is not None else [[] for _ in plans]
    if len(histories) != len(plans):
        raise ValueError(f"{len(histories)} spent histories for {len(plans)} schedules")
    if not plans:
        raise ValueError("no schedules to calibrate sigma for")

    # accountants with the same rate, steps and history have the same epsilon: evaluate each once
    distinct = {(q, int(steps), tuple(map(tuple, h))) for (q, steps), h in zip(plans, histories, strict=True)}

    def worst(sigma: float) -> float:
        return max(epsilon_of(list(h) + [(sigma, q, steps)], delta, kind) for q, steps, h in distinct)

    already = max(epsilon_of(h, delta, kind) for _, _, h in distinct)
    if already >= target_epsilon:
        raise PrivacyError(
            f"the run has already spent epsilon = {already:.3g} of target_epsilon = {target_epsilon:g}; "
            "no further round can stay within it: raise --target-epsilon or keep the rounds it was "
            "planned for"
        )
    if worst(max_sigma) > target_epsilon:
        raise PrivacyError(
            f"target_epsilon = {target_epsilon:g} at delta = {delta:g} needs a noise multiplier above "
            f"{max_sigma:g} for this many steps: raise --target-epsilon, take fewer --rounds or "
            "--local-epochs, or lower the sample rate (smaller --batch-size, more data per client)"
        )
    low_enough = target_epsilon * (1.0 - rel_tol)
    hi = 1.0
    while worst(hi) > target_epsilon:
        hi = min(hi * 2.0, max_sigma)
    lo = hi / 2.0
    while worst(lo) <= target_epsilon:  # a loose target: look for less noise
        hi, lo = lo, lo / 2.0
        if lo < 1e-3:
            return hi
    if worst(hi) >= low_enough:
        return hi
    # worst(lo) > target >= worst(hi): Brent on log sigma for the middle of [low_enough, target]
    aim = math.log(target_epsilon * (1.0 - rel_tol / 2.0))

    def gap(log_sigma: float) -> float:
        return math.log(min(worst(math.exp(log_sigma)), 1e300)) - aim

    root = math.exp(optimize.brentq(gap, math.log(lo), math.log(hi), xtol=rel_tol / 8))
    if low_enough <= worst(root) <= target_epsilon:
        return root
    for _ in range(200):  # epsilon is only piecewise smooth in sigma: finish by bisection
        mid = (lo + hi) / 2.0
        if worst(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
        if worst(hi) >= low_enough:
            break
    return hi


def _history_to_lists(history: Sequence[tuple[float, float, int]]) -> list[list]:
    return [[float(s), float(q), int(n)] for s, q, n in history]


def _history_from_lists(raw: Sequence[Sequence]) -> History:
    return [(float(s), float(q), int(n)) for s, q, n in raw]


# --- what a run reports ---------------------------------------------------------------------------
class RecordLevelPrivacy:
    """Per-client accountants for DP-SGD on every client (unit: one utterance of one client).

    sample_rates: client id -> q_k = B / n_k; steps_per_round: client id -> E * ceil(1 / q_k).
    The noise multiplier is shared by all clients; with a target epsilon it is solved, before
    training, for the client whose epsilon is worst after every planned round (planned as if every
    client trained every round, so clients sampled less often end below the target).
    """

    mode = "dp"

    def __init__(
        self,
        *,
        noise_multiplier: float | None,
        target_epsilon: float | None,
        max_grad_norm: float,
        delta: float,
        accountant: str,
        sample_rates: Mapping[int, float],
        steps_per_round: Mapping[int, int],
        rounds: int,
        setting: Setting | None = None,
    ) -> None:
        _check_noise(noise_multiplier, target_epsilon)
        self.setting = setting or Setting()
        if not max_grad_norm > 0:
            raise PrivacyError(f"dp.max_grad_norm must be > 0, got {max_grad_norm}; e.g. 1.0")
        make_accountant(accountant)  # validates the kind
        self.kind = accountant
        self.delta = float(delta)
        self.max_grad_norm = float(max_grad_norm)
        self.target_epsilon = target_epsilon
        self.sample_rates = {int(k): float(v) for k, v in sample_rates.items()}
        self.steps_per_round = {int(k): int(v) for k, v in steps_per_round.items()}
        self.rounds = int(rounds)
        self.accountants = {cid: make_accountant(accountant) for cid in self.sample_rates}
        self.last_round = 0
        self.noise_multiplier = (
            float(noise_multiplier) if noise_multiplier is not None else self._solve(self.rounds, spent=False)
        )

    def _solve(self, remaining_rounds: int, spent: bool) -> float:
        ids = sorted(self.sample_rates)
        return solve_noise_multiplier(
            self.target_epsilon,
            self.delta,
            [(self.sample_rates[c], remaining_rounds * self.steps_per_round[c]) for c in ids],
            self.kind,
            spent=[self.accountants[c].history for c in ids] if spent else None,
        )

    # -- the trainer reports each client's steps ---------------------------------------------------
    def spend(self, client_id: int, steps: int, sample_rate: float, round_index: int) -> None:
        """Compose `steps` subsampled-Gaussian steps of round `round_index` into the client's accountant."""
        self.last_round = max(self.last_round, int(round_index))
        accountant = self.accountants[client_id]
        for _ in range(steps):
            accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=sample_rate)

    def epsilons(self) -> dict[int, float]:
        """Client id -> epsilon spent so far at self.delta."""
        return {cid: epsilon_of(a.history, self.delta, self.kind) for cid, a in self.accountants.items()}

    # -- PrivacyReport -------------------------------------------------------------------------------
    withheld: frozenset[str] = frozenset()
    """Metrics keys a run directory must not keep (none: client selection is not private here)."""

    def observers(self) -> dict[str, dict]:
        """Each observer's bound (privfl.observers): the worst client's epsilon against all of them."""
        return record_level(max(self.epsilons().values()), self.delta, self.setting)

    def round_report(self, round_index: int, outcome) -> dict:
        # no clip counts: a client reports only its update (privfl.fl.dp.disclosed)
        eps = self.epsilons()
        return {
            "epsilon": max(eps.values()),
            "epsilon_mean": sum(eps.values()) / len(eps),
            **_observer_columns(self.observers()),
            "delta": self.delta,
            "sigma": self.noise_multiplier,
            "clip_norm": self.max_grad_norm,
            "noise": self.setting.noise,
            "guarantee": guarantee(self.setting),
        }

    def state(self) -> dict:
        return {
            "mode": self.mode,
            "accountant": self.kind,
            "sigma": self.noise_multiplier,
            "delta": self.delta,
            "rounds": self.rounds,
            "last_round": self.last_round,
            "histories": {str(cid): _history_to_lists(a.history) for cid, a in self.accountants.items()},
        }

    def load_state(self, state: dict) -> None:
        """Restore the histories; a resumed target-epsilon run that extends its rounds re-solves sigma."""
        _check_state(state, self.mode, self.kind, self.delta)
        histories = state["histories"]
        if {int(k) for k in histories} != set(self.accountants):
            raise PrivacyError(
                f"checkpoint has accountants for clients {sorted(int(k) for k in histories)}, this run has "
                f"{sorted(self.accountants)}; resume with the run's own config"
            )
        for key, raw in histories.items():
            self.accountants[int(key)].history = _history_from_lists(raw)
        self.last_round = int(state["last_round"])
        self.noise_multiplier = _resumed_sigma(self, state)

    def summary(self) -> dict:
        eps = self.epsilons()
        return {
            "mode": self.mode,
            "unit": UNIT_RECORD,
            "epsilon": max(eps.values()),
            "epsilon_mean": sum(eps.values()) / len(eps),
            "epsilon_per_client": {str(c): e for c, e in sorted(eps.items())},
            "observers": self.observers(),
            "noise": self.setting.noise,
            "guarantee": guarantee(self.setting),
            "delta": self.delta,
            "accountant": self.kind,
            "sigma": self.noise_multiplier,
            "target_epsilon": self.target_epsilon,
            "clip_norm": self.max_grad_norm,
            "sample_rates": {str(c): q for c, q in sorted(self.sample_rates.items())},
            "steps": {str(c): sum(n for _, _, n in a.history) for c, a in sorted(self.accountants.items())},
        }


class UserLevelPrivacy:
    """One accountant for DP-FedAvg (unit: all data of one client), one step per round at rate q."""

    mode = "user-dp"

    def __init__(
        self,
        *,
        noise_multiplier: float | None,
        target_epsilon: float | None,
        clip_norm: float,
        delta: float,
        accountant: str,
        sample_rate: float,
        rounds: int,
        setting: Setting | None = None,
    ) -> None:
        _check_noise(noise_multiplier, target_epsilon)
        self.setting = setting or Setting()
        if not clip_norm > 0:
            raise PrivacyError(f"dp.clip_norm must be > 0, got {clip_norm}; e.g. 1.0")
        if not 0.0 < sample_rate <= 1.0:
            raise PrivacyError(f"client sample rate must be in (0, 1], got {sample_rate}")
        make_accountant(accountant)
        self.kind = accountant
        self.delta = float(delta)
        self.clip_norm = float(clip_norm)
        self.sample_rate = float(sample_rate)
        self.target_epsilon = target_epsilon
        self.rounds = int(rounds)
        self.accountant = make_accountant(accountant)
        self.noise_multiplier = (
            float(noise_multiplier) if noise_multiplier is not None else self._solve(self.rounds, spent=False)
        )

    def _solve(self, remaining_rounds: int, spent: bool) -> float:
        return solve_noise_multiplier(
            self.target_epsilon,
            self.delta,
            [(self.sample_rate, remaining_rounds)],
            self.kind,
            spent=[self.accountant.history] if spent else None,
        )

    def spend_round(self) -> None:
        """Compose one round of the Poisson-subsampled Gaussian (called by the policy's server step)."""
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)

    def epsilon(self) -> float:
        """Against an observer who does not know the client sample (amplified at q)."""
        return epsilon_of(self.accountant.history, self.delta, self.kind)

    def epsilon_knowing_sample(self) -> float:
        """Against an observer who knows the sample: the same rounds at q = 1."""
        return epsilon_of([(s, 1.0, n) for s, _, n in self.accountant.history], self.delta, self.kind)

    withheld: frozenset[str] = frozenset(
        {
            "clients",
            "bytes_up",
            "train_s",
            "encrypt_s",
            "aggregate_s",
            "exchange_s",
            "rejected",
            "clipped_fraction",
            "server_noise_share",
            # SecAgg+ (privfl.fl.secure.secaggplus_summation): counts, and what scales with them
            "bytes_per_client",
            "download_bytes_per_client",
            "encode_s",
            "encode_cpu_s",
            "secagg_clients",
            "secagg_survivors",
            "secagg_dropped",
            "secagg_aborted",
            "quant_error_bound",
            "max_abs_error",
        }
    )
    """Metrics keys a run directory must not keep: each reveals how many clients were sampled."""

    def observers(self) -> dict[str, dict]:
        """Each observer's bound (privfl.observers): amplified only where the sample is unknown."""
        return user_level(
            self.epsilon(), self.epsilon_knowing_sample(), self.delta, self.sample_rate, self.setting
        )

    def round_report(self, round_index: int, outcome) -> dict:
        # no clipped fraction: which updates were clipped depends on who was sampled
        return {
            "epsilon": self.epsilon(),
            **_observer_columns(self.observers()),
            "delta": self.delta,
            "sigma": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "noise": self.setting.noise,
            "guarantee": guarantee(self.setting),
        }

    def state(self) -> dict:
        return {
            "mode": self.mode,
            "accountant": self.kind,
            "sigma": self.noise_multiplier,
            "delta": self.delta,
            "rounds": self.rounds,
            "history": _history_to_lists(self.accountant.history),
        }

    def load_state(self, state: dict) -> None:
        _check_state(state, self.mode, self.kind, self.delta)
        self.accountant.history = _history_from_lists(state["history"])
        self.noise_multiplier = _resumed_sigma(self, state)

    def summary(self) -> dict:
        return {
            "mode": self.mode,
            "unit": UNIT_USER,
            "epsilon": self.epsilon(),
            "epsilon_knowing_sample": self.epsilon_knowing_sample(),
            "observers": self.observers(),
            "noise": self.setting.noise,
            "guarantee": guarantee(self.setting),
            "delta": self.delta,
            "accountant": self.kind,
            "sigma": self.noise_multiplier,
            "target_epsilon": self.target_epsilon,
            "clip_norm": self.clip_norm,
            "sample_rate": self.sample_rate,
            "rounds_accounted": sum(n for _, _, n in self.accountant.history),
        }


def _observer_columns(observers: dict[str, dict]) -> dict:
    """Per-observer epsilon as metrics columns (None where no bound holds); `epsilon` is the
    released model's."""
    return {f"epsilon_{name}": o["epsilon"] for name, o in observers.items() if name != "released_model"}


def _check_state(state: dict, mode: str, kind: str, delta: float) -> None:
    if not isinstance(state, dict) or state.get("mode") != mode:
        got = state.get("mode") if isinstance(state, dict) else type(state).__name__
        raise PrivacyError(f"checkpoint privacy state is for mode {got!r}, this run is {mode!r}")
    if state.get("accountant") != kind:
        raise PrivacyError(
            f"checkpoint was accounted with {state.get('accountant')!r}, this run asks for {kind!r}; "
            "resume with the run's own --accountant"
        )
    if float(state.get("delta", -1.0)) != delta:
        raise PrivacyError(
            f"checkpoint was accounted at delta = {state.get('delta')}, this run at {delta}; "
            "resume with the run's own --delta"
        )


def _resumed_sigma(report: RecordLevelPrivacy | UserLevelPrivacy, state: dict) -> float:
    """The sigma to continue with: the checkpoint's, unless a target-epsilon run changed its rounds."""
    saved = float(state["sigma"])
    if report.target_epsilon is None or int(state["rounds"]) == report.rounds:
        return saved
    done = _rounds_done(report)
    remaining = report.rounds - done
    if remaining <= 0:
        return saved
    return report._solve(remaining, spent=True)


def _rounds_done(report: RecordLevelPrivacy | UserLevelPrivacy) -> int:
    if isinstance(report, UserLevelPrivacy):
        return sum(n for _, _, n in report.accountant.history)
    return report.last_round


# --- what a guarantee bounds: any attack's ROC against an (epsilon, delta)-DP mechanism -------------
_EXP_MAX = 40.0  # beyond this e^-eps < 1e-17: the AUC bound is 1 to double precision


def dp_tpr_bound(fpr: np.ndarray, epsilon: float, delta: float) -> np.ndarray:
    """The largest TPR any attack may reach at each FPR under (epsilon, delta)-DP (Kairouz et al. 2015)."""
    fpr = np.asarray(fpr, dtype=np.float64)
    # e^700 * fpr already exceeds 1 for every representable fpr > 0, so capping the exponent
    # keeps huge epsilons (weak DP) from overflowing without changing the bound
    a = math.exp(min(epsilon, 700.0)) * fpr + delta
    b = 1.0 - math.exp(-epsilon) * (1.0 - delta - fpr)
    return np.clip(np.minimum(a, b), 0.0, 1.0)


def dp_auc_bound(epsilon: float, delta: float) -> float:
    """Largest ROC AUC any attack may reach against an (epsilon, delta)-DP mechanism: the area under
    `dp_tpr_bound`, in closed form. 0.5 at (0, 0); tends to 1 as epsilon grows.

    The two lines meet at x* = (1 - delta) / (1 + e^eps); the second reaches 1 at FPR = 1 - delta.
    """
    if not 0.0 <= delta < 1.0 or epsilon < 0:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1), got {epsilon}, {delta}")
    if epsilon > _EXP_MAX:
        return 1.0  # within 1e-17 of it; exp would overflow
    e = math.exp(epsilon)
    x = (1.0 - delta) / (1.0 + e)
    below = e * x * x / 2.0 + delta * x  # integral of e^eps t + delta over [0, x*]
    rest = 1.0 - delta - x  # integral of 1 - e^-eps (1 - delta - t) over [x*, 1 - delta] ...
    above = rest - (rest * rest) / (2.0 * e)
    return min(1.0, below + above + delta)  # ... and of 1 over [1 - delta, 1]
