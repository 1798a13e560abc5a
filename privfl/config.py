"""One frozen config tree per experiment: defaults, validation, TOML in and out.

Every CLI flag of `privfl train` maps onto one field here (see `FLAG_FIELDS`); the resolved
config is written to the run directory as `config.toml` and is enough to rerun the experiment.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from privfl.errors import ConfigError

MODES = ("central", "fedavg", "dp", "user-dp")
MODELS = ("cnn", "lstm")
DATASETS = ("synthetic", "iemocap", "crema-d", "ravdess", "emodb")
PARTITIONS = ("iid", "by-speaker", "dirichlet")
SPLITS = ("auto", "speaker", "iemocap-paper", "loso")
SESSION_SPLITS = ("iemocap-paper", "loso")  # IEMOCAP's session protocols
ENGINES = ("builtin", "flower-sim")
ACCOUNTANTS = ("rdp", "prv")
NOISE_SOURCES = ("os", "seeded")  # dp.noise: privacy randomness from OS entropy, or from the seed
SECURE_SCHEMES = ("none", "ckks")
DEFAULT_AUX_SPEAKERS = 4


@dataclass(frozen=True)
class DataConfig:
    """Which corpus, how it is split by speaker, featurised and partitioned across clients."""

    dataset: str = "synthetic"
    data_dir: str = ""  # root of a real corpus; unused for the built-in synthetic corpus
    speakers: int = 24  # synthetic corpus only
    utterances_per_emotion: int = 10  # synthetic corpus only, per speaker
    corpus_seed: int = 0  # synthetic corpus only; fixed so the cached corpus is shared by runs
    split: str = "auto"  # auto: iemocap-paper for IEMOCAP, speaker-disjoint by seed otherwise
    val_speakers: int = 2
    test_speakers: int = 2
    # Speakers held out of training as an attacker's auxiliary data. None: DEFAULT_AUX_SPEAKERS on
    # speaker splits, 0 on IEMOCAP's session protocols (the paper trains on all of sessions 1-4).
    aux_speakers: int | None = None
    test_speaker: str = "Ses05F"  # IEMOCAP paper split: which session-5 speaker is test
    test_session: int = 5  # IEMOCAP leave-one-session-out fold
    test_gender: str = "female"  # IEMOCAP leave-one-session-out: that session's test speaker
    demographics: str = ""  # CREMA-D VideoDemographics.csv; empty: searched under data_dir
    merge_excited: bool = True  # IEMOCAP: excited counts as happy
    calm_as_neutral: bool = False  # RAVDESS
    strict: bool = False  # unreadable files or label lines become errors instead of being skipped
    speed_perturb: tuple[float, ...] = ()  # e.g. (0.9, 1.1): extra training copies, clients only
    partition: str = "iid"
    dirichlet_alpha: float = 0.5
    n_mels: int = 40
    max_frames: int = 300  # 3 s at a 10 ms hop

    def aux_count(self, protocol: str) -> int:
        """Auxiliary speakers under a resolved split protocol (see aux_speakers)."""
        if self.aux_speakers is not None:
            return self.aux_speakers
        return 0 if protocol in SESSION_SPLITS else DEFAULT_AUX_SPEAKERS

    def validate(self) -> None:
        _choice("data.dataset", self.dataset, DATASETS)
        _choice("data.split", self.split, SPLITS)
        _choice("data.partition", self.partition, PARTITIONS)
        _choice("data.test_gender", self.test_gender, ("female", "male"))
        if self.demographics and self.dataset != "crema-d":
            raise ConfigError(
                f"data.demographics ({self.demographics!r}) is CREMA-D's VideoDemographics.csv; "
                f"dataset {self.dataset!r} takes no demographics file: remove the setting"
            )
        if self.dataset != "synthetic" and not self.data_dir:
            raise ConfigError(
                f"dataset {self.dataset!r} is read from disk: pass --data-dir pointing at your copy"
            )
        _positive("data.speakers", self.speakers, minimum=2)
        _positive("data.utterances_per_emotion", self.utterances_per_emotion)
        for name in ("val_speakers", "test_speakers"):
            _positive(f"data.{name}", getattr(self, name))
        if self.aux_speakers is not None and self.aux_speakers < 0:
            raise ConfigError(f"data.aux_speakers must be >= 0, got {self.aux_speakers}")
        if self.dirichlet_alpha <= 0:
            raise ConfigError(
                f"data.dirichlet_alpha must be > 0, got {self.dirichlet_alpha}; small values "
                "(0.1) give strong label skew, large ones (100) nearly IID"
            )
        if self.speed_perturb:
            from privfl.data.augment import validate_speed_factors

            validate_speed_factors(self.speed_perturb)
        _positive("data.n_mels", self.n_mels)
        _positive("data.max_frames", self.max_frames)


@dataclass(frozen=True)
class ModelConfig:
    """The paper's CNN or LSTM; widths are free because the paper gives none."""

    name: str = "cnn"
    conv_channels: int = 32  # CNN
    lstm_hidden: int = 128  # LSTM
    fc_hidden: int = 128  # both: the first fully connected layer

    def validate(self) -> None:
        _choice("model.name", self.name, MODELS)
        for name in ("conv_channels", "lstm_hidden", "fc_hidden"):
            _positive(f"model.{name}", getattr(self, name))


@dataclass(frozen=True)
class TrainConfig:
    """The federation: clients, rounds, local SGD (McMahan et al.'s K, C, B, E, eta)."""

    mode: str = "fedavg"
    engine: str = "builtin"
    clients: int = 5  # K
    fraction: float = 1.0  # C: fraction of clients per round (user-dp: Poisson rate q)
    rounds: int = 20
    batch_size: int = 10  # B
    local_epochs: int = 1  # E
    lr: float = 0.01  # eta
    momentum: float = 0.9  # the paper gives eta = 0.01 but no momentum; 0 is plain SGD
    eval_every: int = 1
    record_updates: bool = False  # keep every client's update per round for attacks/

    def validate(self) -> None:
        _choice("train.mode", self.mode, MODES)
        _choice("train.engine", self.engine, ENGINES)
        _positive("train.clients", self.clients)
        _positive("train.rounds", self.rounds)
        _positive("train.batch_size", self.batch_size)
        _positive("train.local_epochs", self.local_epochs)
        _positive("train.eval_every", self.eval_every)
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}; the paper uses 0.01")
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"train.fraction must be in (0, 1], got {self.fraction}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"train.momentum must be in [0, 1), got {self.momentum}")


@dataclass(frozen=True)
class DPConfig:
    """Differential privacy: record-level DP-SGD (mode dp) or user-level DP-FedAvg (mode user-dp)."""

    noise_multiplier: float | None = None  # sigma; give it or target_epsilon
    target_epsilon: float | None = None  # solve sigma for the whole run before training
    delta: float | None = None  # default: below 1/n (per client for dp, per client count for user-dp)
    max_grad_norm: float = 1.0  # dp: per-sample clipping bound C
    clip_norm: float = 1.0  # user-dp: per-update clipping bound S
    accountant: str = "rdp"
    grad_sample_mode: str = "auto"  # Opacus per-sample gradient engine; auto picks per model
    # privacy randomness (noise, record and client samples): "os" = each party's own OS entropy,
    # never written or sent; "seeded" = derived from `seed` for bit-identical reruns, which voids
    # the guarantee against anyone who holds the seed (privfl.randomness)
    noise: str = "os"

    def validate(self) -> None:
        _choice("dp.accountant", self.accountant, ACCOUNTANTS)
        _choice("dp.noise", self.noise, NOISE_SOURCES)
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise ConfigError(
                f"dp.noise_multiplier must be > 0, got {self.noise_multiplier}; "
                "use e.g. 1.0, or --mode fedavg for no noise"
            )
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise ConfigError(f"dp.target_epsilon must be > 0, got {self.target_epsilon}")
        if self.delta is not None and not 0.0 < self.delta < 1.0:
            raise ConfigError(f"dp.delta must be in (0, 1), got {self.delta}; e.g. 1e-5")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"dp.max_grad_norm must be > 0, got {self.max_grad_norm}")
        if not self.clip_norm > 0:
            raise ConfigError(f"dp.clip_norm must be > 0, got {self.clip_norm}")


@dataclass(frozen=True)
class SecureConfig:
    """Encrypted aggregation of client updates (TenSEAL CKKS)."""

    scheme: str = "none"
    # addition only, so no rescaling primes: one 50-bit data prime + the special prime fit N=4096
    # at 128-bit security and upload ~29 bytes per parameter (docs/secure-aggregation.md)
    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (50, 50)
    global_scale_bits: int = 46
    insecure_he: bool = False  # allow parameters below 128-bit security (tests only)
    debug_check: bool = False  # log decrypted-vs-plaintext error (computed outside the aggregator)
    min_clients: int = 1

    def validate(self) -> None:
        _choice("secure.scheme", self.scheme, SECURE_SCHEMES)
        _positive("secure.min_clients", self.min_clients)


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines a run; same config and seed give the same numbers."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    secure: SecureConfig = field(default_factory=SecureConfig)

    def validate(self) -> ExperimentConfig:
        """Check every field and cross-field rule; returns self so calls can chain."""
        for section in (self.data, self.model, self.train, self.dp, self.secure):
            section.validate()
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.train.mode in ("dp", "user-dp") and (
            (self.dp.noise_multiplier is None) == (self.dp.target_epsilon is None)
        ):
            raise ConfigError(
                f"mode {self.train.mode!r} needs exactly one of --noise-multiplier or --target-epsilon "
                f"(got noise_multiplier={self.dp.noise_multiplier}, target_epsilon={self.dp.target_epsilon})"
            )
        if self.train.mode == "central" and self.secure.scheme != "none":
            raise ConfigError("mode 'central' has no clients to aggregate: drop --secure-agg")
        return self

    # --- dict / TOML -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict; None fields are left out (TOML has no null)."""
        return _strip_none(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExperimentConfig:
        """Build from a nested dict, refusing unknown keys and wrong types."""
        return _build(cls, raw, prefix="")

    def to_toml(self, path: Path) -> None:
        """Write the resolved config as TOML (atomically)."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(tomli_w.dumps(_tomlable(self.to_dict())).encode())
        tmp.replace(path)

    @classmethod
    def from_toml(cls, path: Path) -> ExperimentConfig:
        """Read a config written by to_toml or by hand; missing keys take their defaults."""
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist; check the path") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        return cls.from_dict(raw)

    def override(self, dotted: dict[str, Any]) -> ExperimentConfig:
        """A copy with fields replaced by dotted name, e.g. {"train.rounds": 5}."""
        raw = self.to_dict()
        for key, value in dotted.items():
            node = raw
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{key!r} does not name a config field")
            node[parts[-1]] = value
        return ExperimentConfig.from_dict(raw)


# CLI flag -> config field; the CLI builds its options from this table.
FLAG_FIELDS: dict[str, str] = {
    "seed": "seed",
    "dataset": "data.dataset",
    "data_dir": "data.data_dir",
    "speakers": "data.speakers",
    "partition": "data.partition",
    "dirichlet_alpha": "data.dirichlet_alpha",
    "split": "data.split",
    "strict": "data.strict",
    "model": "model.name",
    "mode": "train.mode",
    "engine": "train.engine",
    "clients": "train.clients",
    "fraction": "train.fraction",
    "rounds": "train.rounds",
    "batch_size": "train.batch_size",
    "local_epochs": "train.local_epochs",
    "lr": "train.lr",
    "momentum": "train.momentum",
    "eval_every": "train.eval_every",
    "record_updates": "train.record_updates",
    "noise_multiplier": "dp.noise_multiplier",
    "target_epsilon": "dp.target_epsilon",
    "delta": "dp.delta",
    "max_grad_norm": "dp.max_grad_norm",
    "clip_norm": "dp.clip_norm",
    "accountant": "dp.accountant",
    "dp_noise": "dp.noise",
    "secure_agg": "secure.scheme",
    "insecure_he": "secure.insecure_he",
}


def parse_sets(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` items -> {dotted key: value}; VALUE in TOML syntax, else a bare string."""
    dotted: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE; e.g. --set data.speakers=32")
        try:
            dotted[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            dotted[key.strip()] = value  # a bare string, e.g. --set data.data_dir=/data/x
    return dotted


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{name} {value!r} is not one of {', '.join(options)}")


def _positive(name: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")


def _strip_none(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_none(v) for k, v in node.items() if v is not None}
    return node


def _tomlable(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _tomlable(v) for k, v in node.items()}
    if isinstance(node, tuple):
        return list(node)
    return node


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'} must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=name + ".")
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, name)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        inner = typing.get_args(hint)[0]
        return tuple(_coerce(inner, v, name) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    return value
