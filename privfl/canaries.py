"""Audit canaries: what a run inserts so that an auditor can measure its privacy afterwards.

Two kinds (docs/auditing.md):

* **gradient** canaries, for record-level DP-SGD (Steinke, Nasr and Jagielski 2023, white-box
  Dirac canaries). Canary i belongs to client `owners[i]`; when included it is one more record of
  that client whose per-sample gradient is `signs[i] * norm * e_j`, j = `coordinates[i]` (a flat
  parameter index). Under DP-SGD it is Poisson-sampled at the client's rate every step and goes
  through Opacus's clipping and noise like any record (its norm is the clip bound C); under plain
  SGD it joins one batch of every local epoch.
* **client** canaries, for user-level DP-FedAvg (Andrew et al. 2024). Canary i is one more client
  whose update is `norm * u_i`, u_i a uniformly random unit direction drawn from `seeds[i]`; when
  included it is sampled each round like the clients (Poisson at train.fraction) and goes through
  the policy's clipping and noise.

Each canary is included independently with probability 1/2. The inclusion draw, the coordinates,
signs and seeds come from OS entropy (never the config seed) and are kept in
`canaries.secret.npz` in the run directory, which only the auditor (`privfl attack audit`) reads:
nothing derived from them is written to config.toml, metrics.jsonl or summary.json. Which canaries
join a step or a round is drawn from fresh OS-seeded generators of their own, so the clients' data
order, record samples and noise draw exactly what they would without canaries.
"""

from __future__ import annotations

import secrets as os_secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from privfl import npz
from privfl.errors import PrivacyError, RunError

SECRET_FILE = "canaries.secret.npz"
CANARY_KINDS = ("gradient", "client")

SECRETS_SPEC: npz.Spec = {
    "kind": ("str", ()),
    "n_params": ("int64", ()),
    "norm": ("float64", ()),
    "included": ("bool", ("m",)),
    "coordinates": ("int64", ("m",)),
    "signs": ("float64", ("m",)),
    "owners": ("int64", ("m",)),
    "seeds": ("uint64", ("m",)),
}


@dataclass(frozen=True)
class CanarySecrets:
    """What only the auditor may know: which canaries were inserted, and where. Arrays are [m]."""

    kind: str
    n_params: int
    norm: float
    included: np.ndarray
    coordinates: np.ndarray
    signs: np.ndarray
    owners: np.ndarray
    seeds: np.ndarray

    @property
    def count(self) -> int:
        return int(self.included.shape[0])

    def save(self, run_path: Path) -> Path:
        """Write `canaries.secret.npz` into the run directory (atomically, owner-readable only)."""
        path = Path(run_path) / SECRET_FILE
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(
            tmp,
            kind=np.array(self.kind),
            n_params=np.array(self.n_params, dtype=np.int64),
            norm=np.array(self.norm, dtype=np.float64),
            included=self.included.astype(bool),
            coordinates=self.coordinates.astype(np.int64),
            signs=self.signs.astype(np.float64),
            owners=self.owners.astype(np.int64),
            seeds=self.seeds.astype(np.uint64),
        )
        tmp.chmod(0o600)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, run_path: Path) -> CanarySecrets:
        """Read a run's canary secrets (data only, checked against what `save` writes)."""
        path = Path(run_path) / SECRET_FILE
        if not path.is_file():
            raise RunError(
                f"{path} does not exist: the run was trained without canaries or the file was removed; "
                "train with --canaries N (e.g. 500) to audit it"
            )
        fix = "retrain the run with --canaries N"
        arrays, _ = npz.read_npz(path, SECRETS_SPEC, RunError, fix)
        kind = str(arrays["kind"])
        if kind not in CANARY_KINDS:
            raise RunError(f"{path}: canary kind {kind!r} is not one of {', '.join(CANARY_KINDS)}; {fix}")
        return cls(
            kind=kind,
            n_params=int(arrays["n_params"]),
            norm=float(arrays["norm"]),
            included=arrays["included"],
            coordinates=arrays["coordinates"],
            signs=arrays["signs"],
            owners=arrays["owners"],
            seeds=arrays["seeds"],
        )


def os_rng() -> np.random.Generator:
    """A NumPy generator seeded from OS entropy (never from the config)."""
    return np.random.default_rng(os_secrets.randbits(128))


def os_torch_generator() -> torch.Generator:
    return torch.Generator().manual_seed(os_secrets.randbits(63))


def draw_canaries(kind: str, count: int, n_params: int, n_clients: int, norm: float) -> CanarySecrets:
    """m canaries, each included with probability 1/2, everything from OS entropy.

    gradient: distinct random coordinates and random signs, owned round-robin by the clients.
    client: a 63-bit seed per canary for its random direction (`direction`).
    """
    if kind not in CANARY_KINDS:
        raise PrivacyError(f"canary kind {kind!r} is not one of {', '.join(CANARY_KINDS)}")
    if count < 1:
        raise PrivacyError(f"need at least one canary, got {count}")
    if kind == "gradient" and count > n_params:
        raise PrivacyError(
            f"{count} gradient canaries need as many distinct coordinates, the model has {n_params}; "
            "use fewer --canaries"
        )
    if not norm > 0:
        raise PrivacyError(f"canary norm must be > 0, got {norm}")
    rng = os_rng()
    included = rng.random(count) < 0.5
    if kind == "gradient":
        coordinates = np.sort(rng.choice(n_params, size=count, replace=False)).astype(np.int64)
        rng.shuffle(coordinates)
        signs = rng.choice(np.array([-1.0, 1.0]), size=count)
        owners = np.arange(count, dtype=np.int64) % max(n_clients, 1)
        seeds = np.zeros(count, dtype=np.uint64)
    else:
        coordinates = np.full(count, -1, dtype=np.int64)
        signs = np.ones(count)
        owners = np.full(count, -1, dtype=np.int64)
        seeds = rng.integers(0, 2**63, size=count, dtype=np.uint64)
    return CanarySecrets(kind, int(n_params), float(norm), included, coordinates, signs, owners, seeds)


def direction(seed: int, n_params: int) -> np.ndarray:
    """Client canary i's unit direction u_i (float64 [n_params]), uniform on the sphere."""
    v = np.random.default_rng([int(seed), 0xCA9A]).standard_normal(n_params)
    return v / np.linalg.norm(v)


def dirac_rows(
    shapes: list[torch.Size], coordinates: np.ndarray, values: np.ndarray, dtype: torch.dtype
) -> list[torch.Tensor]:
    """Per-sample gradient rows of Dirac canaries, per parameter: [len(coordinates), *shape] each.

    `shapes` are the parameters' shapes in flat (canonical) order; canary r is `values[r]` at flat
    index `coordinates[r]` and zero everywhere else.
    """
    sizes = [int(np.prod(s)) for s in shapes]
    starts = np.cumsum([0] + sizes)
    rows = [torch.zeros((len(coordinates), size), dtype=dtype) for size in sizes]
    for r, (coord, value) in enumerate(zip(coordinates, values, strict=True)):
        p = int(np.searchsorted(starts, coord, side="right") - 1)
        if not 0 <= p < len(sizes):
            raise PrivacyError(f"canary coordinate {coord} is outside the model's {starts[-1]} parameters")
        rows[p][r, int(coord - starts[p])] = float(value)
    return [row.reshape(len(coordinates), *shape) for row, shape in zip(rows, shapes, strict=True)]


class GradientCanaries:
    """Run-time side of gradient canaries: which included canaries a client holds, when they join."""

    def __init__(self, secrets: CanarySecrets) -> None:
        if secrets.kind != "gradient":
            raise PrivacyError(f"GradientCanaries needs gradient canaries, got {secrets.kind!r}")
        self.norm = secrets.norm
        held = secrets.included
        self._coords: dict[int, np.ndarray] = {}
        self._values: dict[int, np.ndarray] = {}
        for cid in np.unique(secrets.owners[held]):
            mine = held & (secrets.owners == cid)
            self._coords[int(cid)] = secrets.coordinates[mine]
            self._values[int(cid)] = secrets.signs[mine] * secrets.norm

    def held(self, client_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(flat coordinates, gradient values) of the included canaries client_id holds."""
        empty = np.zeros(0, dtype=np.int64), np.zeros(0)
        return self._coords.get(client_id, empty[0]), self._values.get(client_id, empty[1])

    def poisson_plan(self, client_id: int, steps: int, rate: float) -> list[np.ndarray]:
        """For each DP-SGD step, the indices (into `held`) of canaries in its Poisson batch."""
        n = self.held(client_id)[0].shape[0]
        if n == 0:
            return [np.zeros(0, dtype=np.int64)] * steps
        draws = os_rng().random((steps, n)) < rate
        return [np.flatnonzero(row) for row in draws]

    def epoch_plan(self, client_id: int, epochs: int, n_batches: int) -> dict[tuple[int, int], np.ndarray]:
        """Plain SGD: every held canary joins one uniformly random batch of each epoch."""
        n = self.held(client_id)[0].shape[0]
        plan: dict[tuple[int, int], list[int]] = {}
        if n == 0 or n_batches == 0:
            return {}
        batches = os_rng().integers(0, n_batches, size=(epochs, n))
        for e in range(epochs):
            for i, b in enumerate(batches[e]):
                plan.setdefault((e, int(b)), []).append(i)
        return {k: np.array(v, dtype=np.int64) for k, v in plan.items()}


class ClientCanaries:
    """Run-time side of client canaries: each round, the included canaries' updates.

    rate: each included canary takes part in a round with this probability (Poisson, as the
    clients of user-level DP); weight: the sample count its Update reports (FedAvg's weight).
    """

    def __init__(self, secrets: CanarySecrets, rate: float, weight: int, first_id: int) -> None:
        if secrets.kind != "client":
            raise PrivacyError(f"ClientCanaries needs client canaries, got {secrets.kind!r}")
        self.n_params = secrets.n_params
        self.norm = secrets.norm
        self.rate = float(rate)
        self.weight = int(weight)
        self.first_id = int(first_id)
        self.seeds = secrets.seeds[secrets.included]

    def round_members(self) -> np.ndarray:
        """Indices (into the included canaries) taking part in this round, from OS entropy."""
        if self.seeds.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(os_rng().random(self.seeds.shape[0]) < self.rate)

    def update_vector(self, index: int) -> np.ndarray:
        """Included canary `index`'s update: norm * u (float32 [n_params])."""
        return (self.norm * direction(int(self.seeds[index]), self.n_params)).astype(np.float32)
