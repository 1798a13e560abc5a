"""What an honest-but-curious server observed in a finished run, and the data an evaluator needs.

The server sends w_t to the selected clients and receives their updates. Without secure
aggregation it sees each client's update delta_k; with secure aggregation (secure.scheme "ckks" or
"secaggplus") it sees only the aggregate, w_{t+1} - w_t. `Observation` holds exactly
what the server saw in one round; `Truth` holds what only the evaluator knows (who held which
speakers and genders), used to score the attacks and never to mount them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privfl.config import ExperimentConfig
from privfl.errors import AttackError, RunError
from privfl.models import build_model, count_parameters
from privfl.runs import RunDir

PER_CLIENT = "per-client updates"
AGGREGATE_ONLY = "aggregate update only (secure aggregation)"
NOT_OBSERVED = "no per-client update was observed (secure aggregation: the server sees only the aggregate)"

WHO_DECRYPTS = {
    "ckks": (
        "the key holder, a separate party that can decrypt each client's ciphertext and is trusted not to "
        "(docs/secure-aggregation.md); the server gets one decrypted sum per round"
    ),
    "secaggplus": (
        "no single party: SecAgg+ masks cancel only in the sum, and unmasking one client's input takes "
        "both of its secrets' shares, which its honest neighbours never both hand out; the server would "
        "need at least secure.threshold of that client's neighbours to collude (docs/secure-aggregation.md)"
    ),
}
"""Per secure-aggregation scheme: which party could read a single client's update."""


@dataclass(frozen=True)
class Observation:
    """One round as the server saw it. weights: w_t [P]; deltas: [k, P] or None under secure aggregation;
    aggregate: w_{t+1} - w_t [P] or None when w_{t+1} was not recorded."""

    round: int
    weights: np.ndarray
    client_ids: np.ndarray
    num_samples: np.ndarray
    deltas: np.ndarray | None
    aggregate: np.ndarray | None


@dataclass(frozen=True)
class Truth:
    """Ground truth for scoring one round: the speakers and genders of each selected client."""

    client_ids: np.ndarray
    speakers: tuple[tuple[str, ...], ...]
    genders: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Privacy:
    """The DP guarantee a run claims (summary.json "privacy"): epsilon, delta and what it protects."""

    epsilon: float
    delta: float
    unit: str
    mode: str

    @property
    def record_level(self) -> bool:
        return self.mode == "dp"


class ObservedRun:
    """A finished run directory with recorded updates, opened for attacks (read-only)."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.config: ExperimentConfig = run.config()
        self.summary: dict = run.summary()
        self.rounds: list[int] = run.recorded_rounds()
        self._checkpoint: dict | None = None
        self.verified_rounds: set[int] = set()  # rounds whose replay reproduced the recorded update

    @classmethod
    def open(cls, path: Path, *, need_updates: bool = True) -> ObservedRun:
        """Open and check a run; RunError/AttackError name what is missing and how to get it."""
        run = RunDir.open(path)  # RunError for a non-run or another privfl format
        observed = cls(run)  # RunError if unfinished (no summary.json)
        cfg = observed.config
        # every file the attacks read back is checked (as data, never unpickled) before any starts
        run.verify(count_parameters(build_model(cfg.model, cfg.data.n_mels)))
        if cfg.train.mode == "central":
            raise AttackError(
                f"{path} is a central (single-client) run: there are no client updates to attack; "
                "train with --mode fedavg, dp or user-dp"
            )
        if need_updates and not observed.rounds:
            raise AttackError(
                f"{path} has no recorded client updates (no updates/round_*.npz); retrain with "
                f"--record-updates, e.g. privfl train --config {Path(path) / 'config.toml'} --record-updates "
                "--out <new dir>"
            )
        return observed

    @property
    def secure(self) -> bool:
        """True when the server saw only the aggregate (any secure-aggregation scheme)."""
        return self.config.secure.scheme != "none"

    @property
    def observed(self) -> str:
        return AGGREGATE_ONLY if self.secure else PER_CLIENT

    @property
    def privacy(self) -> Privacy | None:
        p = self.summary.get("privacy")
        if not p or "epsilon" not in p or "delta" not in p:
            return None
        if p.get("noise") == "seeded":
            return None  # no DP guarantee against anyone who holds the seed (config.toml has it)
        eps = float(p["epsilon"])
        if not np.isfinite(eps):
            return None
        return Privacy(eps, float(p["delta"]), str(p.get("unit", "")), self.config.train.mode)

    def select_rounds(self, requested: tuple[int, ...] = (), max_rounds: int = 3) -> list[int]:
        """The rounds to attack: those asked for, or up to max_rounds evenly spaced (0: all recorded)."""
        if requested:
            missing = sorted(set(requested) - set(self.rounds))
            if missing:
                raise AttackError(
                    f"round(s) {', '.join(map(str, missing))} of {self.run.path} were not recorded; "
                    f"recorded rounds are {_span(self.rounds)}"
                )
            return sorted(set(requested))
        if max_rounds < 0:
            raise AttackError(f"max_rounds must be >= 0 (0: every recorded round), got {max_rounds}")
        if max_rounds == 0:
            return list(self.rounds)
        pick = np.unique(
            np.linspace(0, len(self.rounds) - 1, min(max_rounds, len(self.rounds))).round().astype(int)
        )
        return [self.rounds[i] for i in pick]

    def final_weights(self) -> np.ndarray:
        """The final global model [P] (the run's last checkpoint)."""
        ckpt = self._load_checkpoint()
        return ckpt["weights"]

    def _load_checkpoint(self) -> dict:
        if self._checkpoint is None:
            ckpt = self.run.load_checkpoint()
            if ckpt is None:
                raise RunError(
                    f"{self.run.path} has no checkpoint.pt; the run directory is incomplete, retrain it"
                )
            self._checkpoint = ckpt
        return self._checkpoint

    def observe(self, round_index: int) -> tuple[Observation, Truth]:
        """What the server saw in `round_index`, and the ground truth to score it."""
        rec = self.run.load_updates(round_index)
        aggregate = None
        if round_index + 1 in self.rounds:
            aggregate = self.run.load_updates(round_index + 1)["weights"] - rec["weights"]
        else:
            ckpt = self._load_checkpoint()
            if ckpt["round"] == round_index:
                aggregate = ckpt["weights"] - rec["weights"]
        deltas = None if self.secure else rec["deltas"]
        obs = Observation(
            round_index,
            rec["weights"],
            rec["client_ids"],
            rec["num_samples"],
            deltas,
            None if aggregate is None else aggregate.astype(np.float32),
        )
        split = lambda a: tuple(tuple(s.split("|")) if s else () for s in a.tolist())  # noqa: E731
        return obs, Truth(rec["client_ids"], split(rec["speakers"]), split(rec["genders"]))


def unobserved_row(name: str, observed: ObservedRun):
    """A per-client attack under secure aggregation: what the server lacks and which party holds it.

    The row carries no metrics (nothing is plotted at chance): the attack, run as the server, has
    no per-client update to read; the party that could decrypt one is named, and would see what
    the plain run's server sees if it turned curious or colluded, which the threat model excludes.
    """
    from privfl.attacks.result import AttackRow

    scheme = observed.config.secure.scheme
    who = WHO_DECRYPTS.get(scheme, "no single party: the scheme reveals only sums")
    return AttackRow(
        name,
        observed.observed,
        reason=f"{NOT_OBSERVED}; under {scheme} a single update is readable by {who}",
        party="server",
    )


def _span(rounds: list[int]) -> str:
    if not rounds:
        return "none"
    if rounds == list(range(rounds[0], rounds[-1] + 1)):
        return f"{rounds[0]}-{rounds[-1]}"
    return ", ".join(map(str, rounds))


def check_data_matches(observed: ObservedRun, data, round_index: int) -> None:
    """The data re-prepared from the run's config must be the data the run trained on.

    Two checks: every recorded client's sample count, then a replay: the first client of the
    round is trained again from the recorded w_t, as the run trained it (same trainer, seed, round
    and client id), and must reproduce its recorded update up to the float16 recording. A newer
    corpus generator or feature extractor would pass the first check and fail the second. The
    replay reads a per-client update even under secure aggregation: it checks the experiment,
    it is not part of any attack. A record-level DP run with OS-entropy noise (dp.noise = "os")
    cannot be replayed: its record samples and noise are each client's secret, which is the point;
    only the counts are checked there.
    """
    from privfl.attacks.shadow import client_trainer

    if round_index in observed.verified_rounds:
        return
    rec = observed.run.load_updates(round_index)
    clients = data.clients
    for cid, n in zip(rec["client_ids"].tolist(), rec["num_samples"].tolist(), strict=True):
        if cid >= len(clients) or clients[cid].num_samples != n:
            have = clients[cid].num_samples if cid < len(clients) else "no such client"
            raise AttackError(
                f"the data prepared from {observed.run.path / 'config.toml'} does not match the recorded "
                f"updates (client {cid}: recorded {n} samples, prepared {have}); the corpus or feature "
                "cache changed since training; retrain the run with this privfl"
            )
    if not len(rec["client_ids"]) or not rec["deltas"].shape[0] or _unreplayable(observed):
        observed.verified_rounds.add(round_index)
        return
    cid = int(rec["client_ids"][0])
    trainer = client_trainer(observed.config, data, clients, observed.summary.get("privacy"))
    replay = trainer.train(clients[cid], rec["weights"], round_index).delta.astype(np.float64)
    error = float(np.max(np.abs(rec["deltas"][0].astype(np.float64) - replay)))
    # the recording stores delta / max|delta| as float16: at most scale * 2^-12 off per value; allow 4x
    tolerance = float(rec["scales"][0]) * 2.0**-10
    if not error <= tolerance:
        raise AttackError(
            f"replaying client {cid}'s local training of round {round_index} on the data prepared from "
            f"{observed.run.path / 'config.toml'} does not reproduce its recorded update (largest difference "
            f"{error:.3g}, float16 recording allows {tolerance:.3g}); the corpus or its features changed "
            "since training (e.g. a newer synthetic generator), so the attacks would run on other data; "
            "retrain the "
            "run with this privfl"
        )
    observed.verified_rounds.add(round_index)


def _unreplayable(observed: ObservedRun) -> bool:
    """DP-SGD under OS noise: no one, the attacker included, can redraw the client's randomness."""
    privacy = observed.summary.get("privacy") or {}
    return observed.config.train.mode == "dp" and privacy.get("noise", "seeded") != "seeded"
