"""A privacy-utility grid: one base experiment, named defence points, seeds, and attack settings.

Grid TOML (benchmarks/configs/*.toml):

    name = "synthetic-cnn"
    seeds = [0, 1, 2]

    [base]                       # an ExperimentConfig, same schema as a run's config.toml
    [base.data]
    partition = "by-speaker"
    [base.train]
    clients = 8
    record_updates = true

    [attacks]
    which = ["gender", "membership"]          # [] trains without attacking
    gender = { shadow_clients = 32, max_rounds = 2 }        # GenderAttackConfig fields
    membership = { candidates = 20, max_rounds = 1 }        # MembershipAttackConfig fields

    [[points]]
    name = "dp-sigma1"
    defence = "record-dp"                     # optional; checked against the overrides
    set = { "train.mode" = "dp", "dp.noise_multiplier" = 1.0 }

A point's experiment is `base.override(point.set)` with `seed` replaced by each of `seeds`;
the attacks use the run's seed, so one seed reproduces a row.

Speaker folds instead of (or besides) seeds: with `data.folds = K` in [base], a top-level
`folds = [1, 2, ..., K]` runs every point on each listed fold of K-fold speaker CV (test speakers
disjoint across folds), and the tables give mean +- sd over folds (`--folds K` on the CLI).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from privfl.config import ExperimentConfig
from privfl.errors import ConfigError

DEFENCES: tuple[str, ...] = (
    "none",
    "record-dp",
    "user-dp",
    "secagg",
    "record-dp+secagg",
    "user-dp+secagg",
)
ATTACKS: tuple[str, ...] = ("gender", "membership")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def defence_of(cfg: ExperimentConfig) -> str:
    """The defence an experiment applies, from its mode and secure-aggregation scheme."""
    dp = {"dp": "record-dp", "user-dp": "user-dp"}.get(cfg.train.mode)
    secure = cfg.secure.scheme != "none"
    if dp and secure:
        return f"{dp}+secagg"
    return dp or ("secagg" if secure else "none")


@dataclass(frozen=True)
class GridPoint:
    """One defence setting: a name (also its directory), a defence label and dotted config overrides."""

    name: str
    defence: str
    overrides: tuple[tuple[str, Any], ...] = ()

    def overrides_dict(self) -> dict[str, Any]:
        return dict(self.overrides)


@dataclass(frozen=True)
class AttackPlan:
    """Which attacks to run on every point and their settings (fields of attacks' config classes)."""

    which: tuple[str, ...] = ATTACKS
    gender: tuple[tuple[str, Any], ...] = ()
    membership: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"which": list(self.which), "gender": dict(self.gender), "membership": dict(self.membership)}

    def configs(self, seed: int) -> tuple[Any, Any]:
        """(GenderAttackConfig, MembershipAttackConfig) for a run with this seed; ConfigError if bad."""
        from privfl.attacks import GenderAttackConfig, MembershipAttackConfig

        return (
            _attack_config(GenderAttackConfig, "attacks.gender", dict(self.gender), seed),
            _attack_config(MembershipAttackConfig, "attacks.membership", dict(self.membership), seed),
        )


def _attack_config(cls: type, where: str, raw: dict[str, Any], seed: int) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"unknown key {where}.{unknown[0]}; valid keys: {', '.join(sorted(names - {'seed'}))}"
        )
    if "seed" in raw:
        raise ConfigError(
            f"{where}.seed is not settable: the attacks use each run's seed (set `seeds` instead)"
        )
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    try:
        return cls(**kwargs, seed=seed).validate()
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


@dataclass(frozen=True)
class Grid:
    """A privacy-utility grid; `config_for(point, seed)` is the experiment one run trains."""

    name: str
    base: ExperimentConfig
    points: tuple[GridPoint, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    attacks: AttackPlan = field(default_factory=AttackPlan)
    description: str = ""
    folds: tuple[int, ...] = ()  # folds of base.data.folds to run; () = one split per seed

    def config_for(self, point: GridPoint, seed: int, fold: int = 0) -> ExperimentConfig:
        """The experiment of one run: the point's overrides, this seed and (with folds) this fold."""
        fold_set = {"data.fold": fold} if fold else {}
        return self.base.override({**point.overrides_dict(), **fold_set, "seed": seed})

    def repeats(self) -> list[tuple[int, int]]:
        """(seed, fold) of every run of a point, fold 0 where the grid has no folds."""
        return [(seed, fold) for seed in self.seeds for fold in (self.folds or (0,))]

    def point(self, name: str) -> GridPoint:
        for p in self.points:
            if p.name == name:
                return p
        raise ConfigError(
            f"grid {self.name!r} has no point {name!r}; points: {', '.join(p.name for p in self.points)}"
        )

    # --- changing a grid ----------------------------------------------------------------------
    def with_base(self, dotted: dict[str, Any]) -> Grid:
        """A copy whose base config has these dotted fields replaced (CLI flags)."""
        return dataclasses.replace(self, base=self.base.override(dotted)) if dotted else self

    def with_seeds(self, seeds: tuple[int, ...]) -> Grid:
        return dataclasses.replace(self, seeds=tuple(seeds))

    def with_folds(self, k: int) -> Grid:
        """A copy that runs every point on all k folds of k-fold speaker CV (base data.folds = k)."""
        return dataclasses.replace(
            self, base=self.base.override({"data.folds": k, "data.fold": 0}), folds=tuple(range(1, k + 1))
        )

    def only(self, names: tuple[str, ...]) -> Grid:
        """A copy with just the named points (in grid order)."""
        if not names:
            return self
        wanted = set(names)
        for n in names:
            self.point(n)
        return dataclasses.replace(self, points=tuple(p for p in self.points if p.name in wanted))

    def without_attacks(self) -> Grid:
        return dataclasses.replace(self, attacks=dataclasses.replace(self.attacks, which=()))

    # --- validation ---------------------------------------------------------------------------
    def validate(self) -> Grid:
        """Check names, seeds, defences and every point's config before anything trains."""
        if not self.points:
            raise ConfigError(f"grid {self.name!r} has no [[points]]; add at least one")
        if not self.seeds:
            raise ConfigError("the grid needs at least one seed, e.g. seeds = [0, 1, 2]")
        if any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and >= 0, got {list(self.seeds)}")
        self._validate_folds()
        unknown = [a for a in self.attacks.which if a not in ATTACKS]
        if unknown:
            raise ConfigError(f"attacks.which has {unknown[0]!r}; choose among {', '.join(ATTACKS)}")
        seen: set[str] = set()
        for p in self.points:
            if not _NAME.match(p.name):
                raise ConfigError(
                    f"point name {p.name!r} must be letters, digits, '.', '_' or '-' (it names a directory)"
                )
            if p.name in seen:
                raise ConfigError(f"two points are named {p.name!r}; point names must be unique")
            seen.add(p.name)
            cfg = self.config_for(p, *self.repeats()[0]).validate()
            if cfg.train.mode == "central":
                raise ConfigError(
                    f"point {p.name!r} uses mode 'central', which has no clients to defend or attack; "
                    "use fedavg, dp or user-dp"
                )
            actual = defence_of(cfg)
            if p.defence not in DEFENCES:
                raise ConfigError(
                    f"point {p.name!r}: defence {p.defence!r} is not one of {', '.join(DEFENCES)}"
                )
            if p.defence != actual:
                raise ConfigError(
                    f"point {p.name!r} is labelled {p.defence!r} but its config applies {actual!r} "
                    f"(train.mode={cfg.train.mode!r}, secure.scheme={cfg.secure.scheme!r}); "
                    "fix the label or the set"
                )
        if self.attacks.which:
            self.attacks.configs(self.seeds[0])
            if not self.base.train.record_updates:
                raise ConfigError(
                    "the attacks read recorded client updates: set train.record_updates = true in [base], "
                    "or run without attacks (attacks.which = [] / --no-attacks)"
                )
            if "gender" in self.attacks.which and self.base.data.partition != "by-speaker":
                raise ConfigError(
                    f"the gender attack needs single-gender clients, but data.partition is "
                    f"{self.base.data.partition!r}: set data.partition = 'by-speaker' in [base] (--partition "
                    "by-speaker, with clients <= training speakers), or drop 'gender' from attacks.which"
                )
        return self

    def _validate_folds(self) -> None:
        k = self.base.data.folds
        if self.base.data.fold:
            raise ConfigError(
                f"[base] sets data.fold = {self.base.data.fold}; a grid lists its folds at the top level "
                f"instead (folds = [1, 2, ...])"
            )
        if k and not self.folds:
            raise ConfigError(
                f"[base] sets data.folds = {k} but the grid lists no folds to run: add "
                f"folds = {list(range(1, k + 1))} at the top level (or --folds {k})"
            )
        if self.folds and not k:
            raise ConfigError(
                f"the grid lists folds {list(self.folds)} but [base] has no data.folds: set data.folds "
                "(the number of speaker folds, e.g. 6) in [base], or use --folds K"
            )
        bad = [f for f in self.folds if isinstance(f, bool) or not isinstance(f, int) or not 1 <= f <= k]
        if bad or len(set(self.folds)) != len(self.folds):
            raise ConfigError(
                f"folds must be distinct integers in 1..{k} (data.folds = {k}), got {list(self.folds)}"
            )

    # --- TOML ---------------------------------------------------------------------------------
    def to_dict(self, full: bool = True) -> dict[str, Any]:
        """Plain dict; full=False writes only the base fields that differ from ExperimentConfig's defaults."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["seeds"] = list(self.seeds)
        if self.folds:
            out["folds"] = list(self.folds)
        base = self.base.to_dict() if full else _changed(self.base.to_dict(), ExperimentConfig().to_dict())
        if not full:  # always say which corpus and model, defaults or not
            base.setdefault("data", {})["dataset"] = self.base.data.dataset
            base.setdefault("model", {})["name"] = self.base.model.name
        base.pop("seed", None)  # the seeds list decides
        out["base"] = base
        out["attacks"] = self.attacks.to_dict()
        out["points"] = [
            {"name": p.name, "defence": p.defence, "set": p.overrides_dict()} for p in self.points
        ]
        return out

    def to_toml(self, full: bool = True) -> str:
        return tomli_w.dumps(_tomlable(self.to_dict(full)))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "grid") -> Grid:
        known = {"name", "description", "seeds", "folds", "base", "attacks", "points"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"unknown key {unknown[0]!r} in {where}; valid keys: {', '.join(sorted(known))}"
            )
        base_raw = dict(raw.get("base", {}))
        if "seed" in base_raw:
            raise ConfigError(
                f"{where}: [base] sets seed; list the seeds at the top level instead (seeds = [0, 1, 2])"
            )
        base = ExperimentConfig.from_dict(base_raw)
        seeds = raw.get("seeds", [0, 1, 2])
        if not isinstance(seeds, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds
        ):
            raise ConfigError(f"{where}: seeds must be a list of integers, got {seeds!r}")
        folds = raw.get("folds", [])
        if not isinstance(folds, list) or not all(
            isinstance(f, int) and not isinstance(f, bool) for f in folds
        ):
            raise ConfigError(f"{where}: folds must be a list of fold numbers, e.g. [1, 2, 3], got {folds!r}")
        a = raw.get("attacks", {})
        if not isinstance(a, dict) or set(a) - {"which", "gender", "membership"}:
            raise ConfigError(
                f"{where}: [attacks] takes which, gender and membership, got "
                f"{sorted(a) if isinstance(a, dict) else a!r}"
            )
        attacks = AttackPlan(
            which=tuple(a.get("which", ATTACKS)),
            gender=tuple(sorted(dict(a.get("gender", {})).items())),
            membership=tuple(sorted(dict(a.get("membership", {})).items())),
        )
        points = []
        raw_points = raw.get("points", [])
        if not isinstance(raw_points, list):
            raise ConfigError(f"{where}: points must be an array of tables ([[points]])")
        for i, rp in enumerate(raw_points):
            if not isinstance(rp, dict) or "name" not in rp:
                raise ConfigError(f"{where}: point #{i + 1} needs a name")
            extra = sorted(set(rp) - {"name", "defence", "set"})
            if extra:
                raise ConfigError(
                    f"{where}: point {rp['name']!r} has unknown key {extra[0]!r} (use name, defence, set)"
                )
            overrides = rp.get("set", {})
            if not isinstance(overrides, dict):
                raise ConfigError(f"{where}: point {rp['name']!r}: set must be a table of dotted keys")
            if "seed" in overrides:
                raise ConfigError(f"{where}: point {rp['name']!r} sets seed; the grid's seeds decide it")
            try:
                cfg = base.override(overrides)
            except ConfigError as exc:
                raise ConfigError(f"{where}: point {rp['name']!r}: {exc}") from exc
            points.append(
                GridPoint(str(rp["name"]), str(rp.get("defence", defence_of(cfg))), tuple(overrides.items()))
            )
        return cls(
            str(raw.get("name", "grid")),
            base,
            tuple(points),
            tuple(seeds),
            attacks,
            str(raw.get("description", "")),
            tuple(folds),
        )

    @classmethod
    def from_toml(cls, path: Path) -> Grid:
        """Read a grid TOML; errors name the file and the bad key."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"grid file {path} does not exist; check the path") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"grid file {path} is not valid TOML: {exc}") from exc
        return cls.from_dict(raw, where=str(path))


def _changed(node: dict, default: dict) -> dict:
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            sub = _changed(v, default.get(k, {}))
            if sub:
                out[k] = sub
        elif k not in default or default[k] != v:
            out[k] = v
    return out


def _tomlable(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _tomlable(v) for k, v in node.items()}
    if isinstance(node, tuple | list):
        return [_tomlable(v) for v in node]
    return node


# --- the built-in grids -----------------------------------------------------------------------
# Sized for the 15-minute budget on a 2-core CPU (docs/results.md): a smaller synthetic corpus
# (6 utterances per emotion and speaker, 2 s clips), 8 single-gender clients, 10 rounds, lr 0.05.
DEFAULT_BASE: dict[str, Any] = {
    "data.utterances_per_emotion": 6,
    "data.max_frames": 200,
    "data.partition": "by-speaker",
    "train.clients": 8,
    "train.rounds": 10,
    "train.lr": 0.05,  # the paper's 0.01 barely leaves chance in 10 rounds of this small corpus
    "train.momentum": 0.0,  # plain SGD, as the paper
    "train.record_updates": True,
}
DEFAULT_ATTACKS = AttackPlan(
    which=ATTACKS,
    gender=(("bootstrap", 200), ("max_rounds", 2), ("shadow_clients", 32)),
    membership=(("bootstrap", 200), ("candidates", 16), ("max_rounds", 1)),
)
DEFAULT_POINTS: tuple[GridPoint, ...] = (
    GridPoint("fedavg", "none"),
    GridPoint("record-dp-sigma0.5", "record-dp", (("train.mode", "dp"), ("dp.noise_multiplier", 0.5))),
    GridPoint("record-dp-sigma1", "record-dp", (("train.mode", "dp"), ("dp.noise_multiplier", 1.0))),
    GridPoint("user-dp-sigma0.1", "user-dp", (("train.mode", "user-dp"), ("dp.noise_multiplier", 0.1))),
    GridPoint("user-dp-sigma0.5", "user-dp", (("train.mode", "user-dp"), ("dp.noise_multiplier", 0.5))),
    GridPoint("secagg", "secagg", (("secure.scheme", "ckks"),)),
    GridPoint(
        "record-dp-sigma1-secagg",
        "record-dp+secagg",
        (("train.mode", "dp"), ("dp.noise_multiplier", 1.0), ("secure.scheme", "ckks")),
    ),
    GridPoint("secaggplus", "secagg", (("secure.scheme", "secaggplus"),)),
    GridPoint(
        "user-dp-sigma0.5-secaggplus",
        "user-dp+secagg",
        (("train.mode", "user-dp"), ("dp.noise_multiplier", 0.5), ("secure.scheme", "secaggplus")),
    ),
)


def default_grid(dataset: str = "synthetic", model: str = "cnn") -> Grid:
    """The quick default grid (benchmarks/configs/synthetic_cnn.toml is this grid written out)."""
    base = ExperimentConfig().override({**DEFAULT_BASE, "data.dataset": dataset, "model.name": model})
    return Grid(
        name=f"{dataset}-{model}",
        base=base,
        points=DEFAULT_POINTS,
        seeds=(0, 1, 2),
        attacks=DEFAULT_ATTACKS,
        description=(
            "plain FedAvg, record-level DP, user-level DP, CKKS secure aggregation, DP + CKKS, SecAgg+ "
            "masking, user-level DP + SecAgg+"
        ),
    )
