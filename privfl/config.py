"""One frozen config tree per experiment: defaults, validation, TOML in and out.

Every CLI flag of `privfl train` maps onto one field here (see `FLAG_FIELDS`); the resolved
config is written to the run directory as `config.toml` and is enough to rerun the experiment.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tomllib
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from privfl.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("central", "fedavg", "dp", "user-dp")
MODELS = ("cnn", "lstm")
POOLINGS = ("paper", "meanstd")  # over time: the paper's (CNN max, LSTM mean), or mean + std
CLASS_WEIGHTS = ("none", "balanced")  # local cross-entropy: plain, or weighted by 1 / class count
LR_SCHEDULES = ("constant", "cosine")  # the local lr over rounds: fixed (the paper) or cosine-annealed
DATASETS = ("synthetic", "iemocap", "crema-d", "ravdess", "emodb", "manifest")
NORMALIZE = ("utterance", "speaker", "global", "none")
FOUR_CLASSES = ("neutral", "happy", "sad", "angry")  # privfl.data.records.EMOTIONS, without its import
PARTITIONS = ("iid", "by-speaker", "dirichlet")
SPLITS = ("auto", "speaker", "iemocap-paper", "loso", "manifest")
SESSION_SPLITS = ("iemocap-paper", "loso")  # IEMOCAP's session protocols
ENGINES = ("builtin", "flower-sim")
ACCOUNTANTS = ("rdp", "prv")
NOISE_SOURCES = ("os", "seeded")  # dp.noise: privacy randomness from OS entropy, or from the seed
GRAD_SAMPLE_MODES = ("auto", "microbatch", "hooks", "functorch", "ew", "ghost")
"""How per-sample gradients are computed. microbatch: one forward/backward per sample through the
ordinary model (TF Privacy's microbatches; for the paper LSTM only the recurrence runs per sample);
the others are Opacus's engines on the DP model (hooks, functorch, ew = expanded weights, ghost =
ghost clipping, which never forms per-sample gradients)."""
SECURE_SCHEMES = ("none", "ckks", "secaggplus")
SECAGG_ON_ABORT = ("skip", "stop")
CANARY_KINDS = ("auto", "gradient", "client")  # audit.kind; auto: gradient for dp/central, client otherwise
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
    # Log-Mel mean/variance normalisation per band: over each utterance (the paper's features),
    # over each speaker's utterances (each client does its own speaker locally), over the training
    # set (a statistic pooled across clients), or none.
    normalize: str = "utterance"
    # > 0: drop leading and trailing frames more than trim_db (dB) below the loudest frame before the
    # crop to max_frames and the normalisation (RAVDESS: about 1 s of silence around each sentence)
    trim_db: float = 0.0
    # Speaker-independent k-fold CV: folds > 0 splits the speakers into `folds` disjoint test groups
    # (IEMOCAP: one fold per session); fold 1..folds picks one, 0 runs them all (privfl.folds).
    folds: int = 0
    fold: int = 0
    # manifest corpora: "source=target" label renames (e.g. "ang=angry") and the classes kept
    label_map: tuple[str, ...] = ()
    emotions: tuple[str, ...] = ()  # empty: all four classes

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
            validate_speed_factors(self.speed_perturb)
        _positive("data.n_mels", self.n_mels)
        _positive("data.max_frames", self.max_frames)
        _choice("data.normalize", self.normalize, NORMALIZE)
        if not (math.isfinite(self.trim_db) and 0.0 <= self.trim_db <= 120.0):
            raise ConfigError(
                f"data.trim_db must be between 0 (keep every frame) and 120 dB, got {self.trim_db}; "
                "e.g. 30 trims what is 30 dB below the loudest frame"
            )
        self._validate_folds()
        self._validate_manifest()

    def _validate_folds(self) -> None:
        if self.folds == 1 or self.folds < 0:
            raise ConfigError(
                f"data.folds must be 0 (one split) or >= 2 (k-fold speaker CV), got {self.folds}; "
                "e.g. --folds 6 for RAVDESS's 24 actors"
            )
        if not 0 <= self.fold <= self.folds:
            raise ConfigError(
                f"data.fold must be in 0..{self.folds} (0 runs every fold), got {self.fold}"
                + ("; set data.folds first" if self.folds == 0 else "")
            )
        if self.folds and self.split == "iemocap-paper":
            raise ConfigError(
                "data.split 'iemocap-paper' fixes one test speaker; with --folds use --split loso "
                "(IEMOCAP, one fold per session) or --split speaker"
            )
        if self.folds and (self.split == "loso" or (self.dataset == "iemocap" and self.split == "auto")):
            if self.folds != 5:
                raise ConfigError(
                    f"IEMOCAP's leave-one-session-out has 5 folds (one per session), got data.folds="
                    f"{self.folds}; use --folds 5, or --split speaker for k folds over speakers"
                )

    def _validate_manifest(self) -> None:
        if self.split == "manifest" and (self.dataset != "manifest" or self.folds):
            raise ConfigError(
                "data.split 'manifest' takes the roles from a manifest's split column: it needs "
                f"--dataset manifest (got {self.dataset!r}) and no --folds (got {self.folds})"
            )
        if self.dataset != "manifest" and (self.label_map or self.emotions):
            raise ConfigError(
                f"data.label_map and data.emotions apply to --dataset manifest, not {self.dataset!r}; "
                "remove them"
            )
        for item in self.label_map:
            source, sep, target = item.partition("=")
            if not sep or not source.strip() or target.strip() not in FOUR_CLASSES:
                raise ConfigError(
                    f"data.label_map entry {item!r} is not 'source=target' with target one of "
                    f'{", ".join(FOUR_CLASSES)}; e.g. "ang=angry"'
                )
        for emotion in self.emotions:
            if emotion not in FOUR_CLASSES:
                raise ConfigError(
                    f"data.emotions holds {emotion!r}; expected a subset of {', '.join(FOUR_CLASSES)}"
                )
        if len(set(self.emotions)) != len(self.emotions):
            raise ConfigError(f"data.emotions lists a class twice: {list(self.emotions)}")


@dataclass(frozen=True)
class ModelConfig:
    """The paper's CNN or LSTM; widths are free because the paper gives none."""

    name: str = "cnn"
    conv_channels: int = 32  # CNN
    lstm_hidden: int = 128  # LSTM
    fc_hidden: int = 128  # both: the first fully connected layer
    pooling: str = "paper"  # over time: paper (CNN max, LSTM mean) or meanstd (statistics pooling)

    def validate(self) -> None:
        _choice("model.name", self.name, MODELS)
        _choice("model.pooling", self.pooling, POOLINGS)
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
    # "balanced": each client weights its cross-entropy by n / (classes * n_class) over its own
    # labels (scikit-learn's "balanced" heuristic), so a small class (RAVDESS neutral) is not given up
    class_weights: str = "none"
    # "cosine": round r (1..rounds) trains at lr * (1 + cos(pi (r - 1) / rounds)) / 2 (Loshchilov &
    # Hutter 2017, one cycle, by round), so the last rounds take small steps; "constant": the paper
    lr_schedule: str = "constant"
    # eta_s: the server's step on the averaged update, w + eta_s * avg delta (FedOpt's server SGD,
    # Reddi et al. 2021); 1.0 is McMahan et al.'s FedAvg
    server_lr: float = 1.0

    def validate(self) -> None:
        _choice("train.mode", self.mode, MODES)
        _choice("train.class_weights", self.class_weights, CLASS_WEIGHTS)
        _choice("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
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
        if not self.server_lr > 0:
            raise ConfigError(f"train.server_lr must be > 0, got {self.server_lr}; 1.0 is plain FedAvg")
        if self.server_lr != 1.0 and self.mode != "fedavg":
            raise ConfigError(
                f"train.server_lr = {self.server_lr} is implemented for --mode fedavg only (got mode "
                f"{self.mode!r}); use train.server_lr = 1.0"
            )


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
        _choice("dp.grad_sample_mode", self.grad_sample_mode, GRAD_SAMPLE_MODES)
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
class AuditConfig:
    """Canaries for `privfl attack audit` (docs/auditing.md); their secrets never enter the config.

    canaries: m, each included with probability 1/2 from OS entropy (0: none). kind: "gradient"
    (Dirac per-sample gradients, record level: mode dp, fedavg, central) or "client" (clients with
    random update directions, user level: mode user-dp, fedavg); "auto" picks gradient for dp and
    central, client for user-dp and fedavg. norm: a gradient canary's norm (default dp.max_grad_norm,
    the clip bound C) or a client canary's update norm (default dp.clip_norm, the clip bound S).
    """

    canaries: int = 0
    kind: str = "auto"
    norm: float | None = None

    def validate(self) -> None:
        _choice("audit.kind", self.kind, CANARY_KINDS)
        if self.canaries < 0:
            raise ConfigError(f"audit.canaries must be >= 0, got {self.canaries}; e.g. --canaries 500")
        if self.norm is not None and not self.norm > 0:
            raise ConfigError(f"audit.norm must be > 0, got {self.norm}; or leave it unset")


# --- CKKS secure aggregation ------------------------------------------------------------------
# total coefficient modulus (bits, all primes including the special one) for each ring degree N.
HE_STANDARD_128_MAX_BITS: dict[int, int] = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}

PRECISION_TARGET_BITS = 20  # 2^-20 ~ 1e-6 relative


def _noise_bits(poly_modulus_degree: int, n_clients: int) -> float:
    """log2 of the slot error of a sum of n fresh encryptions, in units of the scale (measured:
    fresh max ~1.1 N at N=4096 and ~1.4 N at N=8192; independent noises add like sqrt(n))."""
    return math.log2(poly_modulus_degree) + 1.0 + 0.5 * math.log2(max(n_clients, 1))


@dataclass(frozen=True)
class CkksParams:
    """CKKS parameters and the public packing policy (docs/secure-aggregation.md).

    poly_modulus_degree: ring degree N; N/2 values per ciphertext.
    coeff_mod_bit_sizes: prime sizes; all but the last (the special prime) carry data. One data
        prime is enough for addition: (50, 50) at N=4096 gives ~29 bytes per parameter.
    global_scale_bits: log2 of the CKKS scale; with range packing it only fixes C = data bits - 2
        - scale bits, the headroom above the packed values.
    insecure: allow a modulus larger than the 128-bit standard allows (tests only; the TenSEAL
        build itself still enforces 128-bit SEAL parameters).
    max_clients: contributions per round; each client clamps |x_i| to 2^(b-1)/max_clients, so the
        sum of any max_clients honest contributions cannot wrap.
    bound_bits, weight_bound_bits: round 0's public bounds, |sum of vectors| < 2^(bound_bits-1) and
        sum of weights < 2^(weight_bound_bits-1).
    adapt_bounds: later rounds take both bounds from the previous released sum,
        ceil(log2 max|sum|) + ceil(log2 max_clients) + margin_bits (the key holder's choice).
    """

    # addition only, so no rescaling primes: one 50-bit data prime + the special prime fit N=4096
    # at 128-bit security and upload ~29 bytes per parameter (docs/secure-aggregation.md)
    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (50, 50)
    global_scale_bits: int = 46
    insecure: bool = False
    max_clients: int = 16
    bound_bits: int = 16
    weight_bound_bits: int = 20
    adapt_bounds: bool = True
    margin_bits: int = 5

    @property
    def data_bits(self) -> int:
        """Bits of the modulus ciphertexts are encrypted at (all primes but the special one)."""
        return int(sum(self.coeff_mod_bit_sizes[:-1]))

    def headroom_bits(self) -> int:
        """Bits an adapted bound keeps above the previous sum: room for max_clients and growth."""
        return math.ceil(math.log2(max(self.max_clients, 1))) + self.margin_bits

    def precision_bits(self) -> float:
        """Bits of precision of an adapted round's sum relative to its largest value."""
        return (
            self.data_bits
            - 2
            - _noise_bits(self.poly_modulus_degree, self.max_clients)
            - self.headroom_bits()
        )

    def next_bounds(self, bounds: tuple[int, int], peak: float, weight: float) -> tuple[int, int]:
        """The next round's (vector, weight) bounds from a released sum's max|value| and weight;
        unchanged without adapt_bounds or where the sum is 0."""
        if not self.adapt_bounds:
            return bounds
        b, bw = bounds
        if peak > 0 and math.isfinite(peak):
            b = max(-900, min(math.frexp(peak)[1] + self.headroom_bits(), 900))
        if weight > 0 and math.isfinite(weight):
            bw = max(-900, min(math.frexp(weight)[1] + self.headroom_bits(), 900))
        return b, bw

    def validate(self) -> CkksParams:
        """Check security (HE standard table), moduli, scale and precision; returns self."""
        n = self.poly_modulus_degree
        if n not in HE_STANDARD_128_MAX_BITS:
            raise ConfigError(
                f"poly_modulus_degree={n} is not one of {sorted(HE_STANDARD_128_MAX_BITS)}; use 4096 or 8192"
            )
        bits = tuple(self.coeff_mod_bit_sizes)
        if len(bits) < 2:
            raise ConfigError(
                f"coeff_mod_bit_sizes={bits} needs at least two primes (the data prime(s) and the special "
                "prime TenSEAL keeps for key switching), e.g. (50, 50)"
            )
        for i, b in enumerate(bits):
            if not isinstance(b, int) or not 20 <= b <= 60:
                raise ConfigError(
                    f"coeff_mod_bit_sizes[{i}]={b!r} is outside the 20..60 bits SEAL can generate"
                )
        total, limit = sum(bits), HE_STANDARD_128_MAX_BITS[n]
        if total > limit:
            fits = [d for d, m in sorted(HE_STANDARD_128_MAX_BITS.items()) if m >= total]
            msg = (
                f"coeff_mod_bit_sizes={bits} totals {total} bits, above the {limit} bits the "
                f"HomomorphicEncryption.org standard allows at poly_modulus_degree={n} for 128-bit security"
            )
            if not self.insecure:
                fix = f"raise poly_modulus_degree to {fits[0]}" if fits else "use fewer or smaller primes"
                raise ConfigError(
                    f"{msg}; drop or shrink primes, {fix}, or pass insecure=True (--insecure-he) for tests"
                )
            log.warning("%s; insecure=True, continuing below 128-bit security", msg)
        s = self.global_scale_bits
        if not isinstance(s, int) or not 20 <= s <= self.data_bits - 2:
            raise ConfigError(
                f"global_scale_bits={s!r} must be in 20..{self.data_bits - 2}: the packed values need 2 bits "
                f"below the {self.data_bits}-bit data modulus (all primes but the last)"
            )
        if not isinstance(self.max_clients, int) or not 1 <= self.max_clients <= 65535:
            raise ConfigError(f"max_clients={self.max_clients!r} must be an integer in 1..65535")
        if not isinstance(self.margin_bits, int) or not 1 <= self.margin_bits <= 16:
            raise ConfigError(f"margin_bits={self.margin_bits!r} must be an integer in 1..16 (default 5)")
        for name in ("bound_bits", "weight_bound_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or abs(value) > 900:
                raise ConfigError(f"{name}={value!r} must be an integer within +-900 (default 16 and 20)")
        precision = self.precision_bits()
        if precision < PRECISION_TARGET_BITS:
            raise ConfigError(
                f"these parameters leave {precision:.1f} bits of precision relative to an adapted round's "
                f"sum at max_clients={self.max_clients} (need >= {PRECISION_TARGET_BITS}, i.e. 1e-6): use a "
                "larger data prime (e.g. coeff_mod_bit_sizes=(50, 50)), fewer clients per round, or a "
                "smaller margin_bits"
            )
        return self


# --- SecAgg+ masking ---------------------------------------------------------------------------
MIN_BITS, MAX_BITS = 16, 62


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point encoding of reals into Z_M, M = 2^bits, safe for sums of up to max_clients values.

    bits: log2 of the masking group's modulus. value_range R: each encoded coordinate is clipped to
    [-R, R]. frac_bits f: the scale 2^f, derived so that max_clients sums never wrap.
    """

    bits: int
    value_range: float
    max_clients: int

    def __post_init__(self) -> None:
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ConfigError(
                f"secure.modulus_bits = {self.bits}: expected {MIN_BITS}..{MAX_BITS} (the masked sum is "
                "held in int64 once decoded); 62 is the default"
            )
        if not (self.value_range > 0 and math.isfinite(self.value_range)):
            raise ConfigError(f"secure.value_range = {self.value_range}: expected a positive finite number")
        if self.max_clients < 1:
            raise ConfigError(f"max_clients = {self.max_clients}: expected >= 1")
        if self.frac_bits < 0:
            raise ConfigError(
                f"secure.modulus_bits = {self.bits} cannot hold sums of {self.max_clients} values in "
                f"[-{self.value_range:g}, {self.value_range:g}] (it needs "
                f"{1 + self.headroom_bits} bits before any fraction): raise secure.modulus_bits or "
                "lower secure.value_range"
            )

    @property
    def headroom_bits(self) -> int:
        """Integer bits a sum of max_clients values in [-R, R] needs: ceil(log2(K (R + 1)))."""
        return math.ceil(math.log2(self.max_clients * (self.value_range + 1.0)))

    @property
    def frac_bits(self) -> int:
        return self.bits - 1 - self.headroom_bits

    @property
    def step(self) -> float:
        """The quantisation step Delta = 2^-f."""
        return math.ldexp(1.0, -self.frac_bits)

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    @property
    def dtype(self) -> type:
        """What one masked coordinate travels as: uint32 up to 32 bits, else uint64."""
        return np.uint32 if self.bits <= 32 else np.uint64

    def sum_error_bound(self, count: int) -> float:
        """Largest |decoded sum - true sum| per coordinate for `count` clients (rounding only)."""
        return count * self.step / 2.0

    def encode(self, x: np.ndarray, *, clip: bool = True) -> tuple[np.ndarray, int]:
        """float [n] -> (uint64 [n] in Z_M, coordinates clipped to [-R, R]).

        clip=False wraps values beyond the range mod M instead (user-level DP: clipping a noised
        value would change the mechanism; wrapping is a function of the noised sum).
        """
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("cannot encode a vector with NaN or infinite values")
        clipped = 0
        if clip:
            over = np.abs(x) > self.value_range
            clipped = int(over.sum())
            if clipped:
                x = np.clip(x, -self.value_range, self.value_range)
        q = np.rint(np.ldexp(x, self.frac_bits))  # exact scaling, one rounding
        return self.reduce(q.astype(np.int64).view(np.uint64)), clipped

    def reduce(self, values: np.ndarray) -> np.ndarray:
        """uint64 values mod M (M divides 2^64, so uint64 wrap-around arithmetic is already mod 2^64)."""
        return values & np.uint64(self.modulus - 1)

    def decode(self, q: np.ndarray) -> np.ndarray:
        """uint64 [n] in Z_M -> float64 [n], reading [M/2, M) as negative."""
        q = self.reduce(np.asarray(q, dtype=np.uint64))
        signed = q.astype(np.int64)  # bits <= 62: every residue and M itself fit in int64
        signed = np.where(q >= np.uint64(1 << (self.bits - 1)), signed - np.int64(self.modulus), signed)
        return np.ldexp(signed.astype(np.float64), -self.frac_bits)


def round_shares(clients: int, neighbours: int | None, threshold: float) -> tuple[int, int]:
    """(ring size n, threshold t) for a round of `clients`: n = neighbours (odd, itself included) or
    all; t = floor(threshold * n) + 1, a strict majority when threshold >= 0.5."""
    n = clients if neighbours is None or neighbours >= clients else neighbours | 1
    n = min(n, clients)
    return n, min(int(threshold * n) + 1, n)


@dataclass(frozen=True)
class SecureConfig:
    """Encrypted aggregation of client updates (TenSEAL CKKS); defaults are CkksParams's own."""

    scheme: str = "none"
    poly_modulus_degree: int = CkksParams.poly_modulus_degree
    coeff_mod_bit_sizes: tuple[int, ...] = CkksParams.coeff_mod_bit_sizes
    global_scale_bits: int = CkksParams.global_scale_bits
    insecure_he: bool = False  # allow parameters below 128-bit security (tests only)
    debug_check: bool = False  # log decrypted-vs-plaintext error (computed outside the aggregator)
    # the key holder releases a round's sum only with this many verified clients; None: 3 where the
    # clients per round allow it, else 2 (a one-client sum is that client's update)
    min_clients: int | None = None
    # public packing, fixed before each round by the key holder (never by the server): round 0 packs
    # |sum| < 2^(bound_bits-1) and sum of weights < 2^(weight_bound_bits-1); later rounds adapt to the
    # previous released sum plus margin_bits, unless adapt_bounds is false (docs/secure-aggregation.md)
    bound_bits: int = CkksParams.bound_bits
    weight_bound_bits: int = CkksParams.weight_bound_bits
    margin_bits: int = CkksParams.margin_bits
    adapt_bounds: bool = CkksParams.adapt_bounds
    # the key holder: "" = the built-in engine starts `privfl keyholder serve` as a child process;
    # "host:port" = connect to one started apart (deployment). keyholder_key: the key holder's
    # Ed25519 public key (hex) that clients pin; "" only with a spawned key holder.
    keyholder: str = ""
    keyholder_key: str = ""
    # SecAgg+ masking (scheme "secaggplus", no key holder; docs/secure-aggregation.md): each
    # contribution coordinate is clipped to [-value_range, value_range] and encoded in fixed point in
    # Z_(2^modulus_bits), with as many fraction bits as a round's sum leaves (privfl.fl.secure.masking);
    # each client shares its secrets with `neighbours` ring neighbours (odd, itself included; unset:
    # every client of the round), t = floor(threshold * n) + 1 of them rebuild one; rounds must
    # survive max_dropout of their clients dropping; a round that cannot is skipped or stops the run
    modulus_bits: int = 62
    value_range: float = 65536.0
    neighbours: int | None = None
    threshold: float = 0.5
    max_dropout: float = 0.2
    on_abort: str = "skip"

    def ckks_params(self, max_clients: int) -> CkksParams:
        """The CKKS parameters and packing policy these settings give, for rounds of up to
        `max_clients` contributions (config.clients_per_round)."""
        return CkksParams(
            poly_modulus_degree=self.poly_modulus_degree,
            coeff_mod_bit_sizes=tuple(self.coeff_mod_bit_sizes),
            global_scale_bits=self.global_scale_bits,
            insecure=self.insecure_he,
            max_clients=max_clients,
            bound_bits=self.bound_bits,
            weight_bound_bits=self.weight_bound_bits,
            adapt_bounds=self.adapt_bounds,
            margin_bits=self.margin_bits,
        )

    def validate(self) -> None:
        _choice("secure.scheme", self.scheme, SECURE_SCHEMES)
        if self.min_clients is not None and self.min_clients < 2:
            raise ConfigError(
                f"secure.min_clients = {self.min_clients}: the key holder refuses sums of fewer than 2 "
                "clients (a one-client sum is that client's update); use 2 or more, or leave it unset"
            )
        if self.keyholder_key:
            try:
                ok = len(bytes.fromhex(self.keyholder_key)) == 32
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(
                    f"secure.keyholder_key = {self.keyholder_key!r} is not a 64-hex-digit Ed25519 public "
                    "key; copy the key `privfl keyholder serve` prints"
                )
        if self.keyholder and ":" not in self.keyholder:
            raise ConfigError(f"secure.keyholder = {self.keyholder!r} must be host:port, e.g. 10.0.0.5:7710")
        _choice("secure.on_abort", self.on_abort, SECAGG_ON_ABORT)
        if not 0.5 <= self.threshold < 1.0:
            raise ConfigError(
                f"secure.threshold = {self.threshold}: expected 0.5 <= threshold < 1 (t = "
                "floor(threshold * n) + 1 must be a majority of a client's n neighbours, or a server "
                "could rebuild both its secrets)"
            )
        if not 0.0 <= self.max_dropout < 0.5:
            raise ConfigError(
                f"secure.max_dropout = {self.max_dropout}: expected 0 <= max_dropout < 0.5 (a majority "
                "threshold cannot survive half of the clients dropping)"
            )
        if self.neighbours is not None and self.neighbours < 3:
            raise ConfigError(
                f"secure.neighbours = {self.neighbours}: expected >= 3 (or unset: every client)"
            )


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines a run; same config and seed give the same numbers."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    secure: SecureConfig = field(default_factory=SecureConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)

    def validate(self) -> ExperimentConfig:
        """Check every field and cross-field rule; returns self so calls can chain."""
        for section in (self.data, self.model, self.train, self.dp, self.secure, self.audit):
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
        if self.train.mode == "dp" and self.train.class_weights != "none":
            raise ConfigError(
                f"train.class_weights {self.train.class_weights!r} weights each utterance's loss by its "
                "client's class counts, so one record changes the others' gradients, which DP-SGD's "
                "per-record accounting does not cover; use train.class_weights = 'none' with --mode dp"
            )
        if self.train.mode == "dp" and self.data.normalize in ("speaker", "global"):
            # Statistics over many records feed every record's features: one record moves its
            # speaker's (or the training set's) mean and variance and so every other record's input,
            # which per-sample clipping does not bound.
            raise ConfigError(
                f"data.normalize {self.data.normalize!r} normalises each utterance with statistics of "
                f"{'its speaker' if self.data.normalize == 'speaker' else 'the whole training set'}, so "
                "one record changes the others' features, which DP-SGD's per-record accounting does not "
                "cover; use data.normalize = 'utterance' (the paper's features) or 'none' with --mode dp"
            )
        if self.train.mode == "user-dp" and (
            self.data.normalize == "global"
            or (self.data.normalize == "speaker" and self.data.partition != "by-speaker")
        ):
            # User-level DP covers one client's data; a statistic pooled over clients (the training
            # set's, or a speaker's spread over several clients by iid/dirichlet) reaches the others.
            what = (
                "statistics of the whole training set, pooled across clients"
                if self.data.normalize == "global"
                else f"each speaker's statistics, and partition {self.data.partition!r} spreads a speaker "
                "over several clients"
            )
            raise ConfigError(
                f"data.normalize {self.data.normalize!r} with --mode user-dp uses {what}, so one client's "
                "data changes the others' features, which the user-level accounting does not cover; use "
                "data.normalize = 'utterance', or 'speaker' with --partition by-speaker"
            )
        if self.train.mode == "dp" and self.train.lr_schedule != "constant":
            raise ConfigError(
                f"train.lr_schedule {self.train.lr_schedule!r} is not implemented for DP-SGD clients "
                "(--mode dp); use train.lr_schedule = 'constant'"
            )
        if self.train.mode == "dp" and self.model.name == "lstm" and self.model.pooling != "paper":
            raise ConfigError(
                f"model.pooling {self.model.pooling!r} with the LSTM under --mode dp: the DP-SGD engines "
                "mirror the paper LSTM's mean pooling; use model.pooling = 'paper', or the CNN"
            )
        if self.train.mode == "central" and self.secure.scheme != "none":
            raise ConfigError("mode 'central' has no clients to aggregate: drop --secure-agg")
        if self.secure.scheme != "none" and self.train.mode == "user-dp" and self.train.fraction < 1.0:
            # Any secure scheme releases only sums of at least secure.min_clients (>= 2) clients.
            # Under Poisson sampling with rate q < 1, a round draws fewer than that with probability
            # (1-q)^K + Kq(1-q)^(K-1) + ... (K = 3, q = 0.67: 25 % below 2), and whether it does
            # depends on whether the protected client was sampled: skipping such rounds would
            # release a data-dependent event the DP-FedAvg (Poisson) accounting does not cover.
            # With q = 1 every client takes part in every round, so no round falls short by sampling
            # and the accountant charges q = 1.
            raise ConfigError(
                f"--mode user-dp with --secure-agg {self.secure.scheme} and train.fraction = "
                f"{self.train.fraction}: secure aggregation releases only sums of at least "
                "secure.min_clients (>= 2) clients, and under user-dp's Poisson client sampling whether a "
                "round reaches that depends on who was sampled, which the DP-FedAvg accounting does not "
                "cover; use --fraction 1 (every client every round, accounted at q = 1), --mode dp with "
                f"--secure-agg {self.secure.scheme}, or --mode user-dp without secure aggregation"
            )
        if self.secure.scheme != "none" and self.train.mode == "user-dp":
            # q = 1: every round sums all K clients. The neighbouring population without one client
            # must still reach the scheme's minimum, or whether a round is released would depend on
            # that client's presence (a jump the sensitivity S does not cover).
            needed = min_clients(self) if self.secure.scheme == "ckks" else 2
            if self.train.clients - 1 < needed:
                raise ConfigError(
                    f"--mode user-dp with --secure-agg {self.secure.scheme} and train.clients = "
                    f"{self.train.clients}: without one of its clients a round would sum "
                    f"{self.train.clients - 1}, fewer than the {needed} the scheme releases, so whether a "
                    f"round is released would depend on that client; use --clients {needed + 1} or more"
                )
        if self.audit.canaries:
            self._validate_canaries()
        if self.secure.scheme == "secaggplus":
            check_secaggplus(self)
        if self.secure.scheme == "ckks":
            self.secure.ckks_params(clients_per_round(self)).validate()
            per_round, needed = clients_per_round(self), min_clients(self)
            if per_round < needed:
                raise ConfigError(
                    f"secure.min_clients = {needed}, but a round samples at most {per_round} client(s) "
                    f"(train.clients = {self.train.clients}, train.fraction = {self.train.fraction}): the "
                    "key holder would refuse every round; sample more clients per round (at least 2)"
                )
        return self

    def _validate_canaries(self) -> None:
        kind, mode = canary_kind(self), self.train.mode
        allowed = {"dp": ("gradient",), "central": ("gradient",), "user-dp": ("client",)}
        if kind not in allowed.get(mode, ("gradient", "client")):
            raise ConfigError(
                f"audit.kind {kind!r} with --mode {mode}: {kind} canaries test a guarantee this mode "
                f"does not give; use --set audit.kind={allowed[mode][0]} (or auto)"
            )
        if self.train.engine != "builtin" or self.secure.scheme != "none":
            raise ConfigError(
                f"--canaries {self.audit.canaries} needs the built-in engine without secure aggregation "
                f"(got engine {self.train.engine!r}, secure.scheme {self.secure.scheme!r}): the canaries "
                "are inserted in-process; drop --engine/--secure-agg for an audit run"
            )
        if kind == "gradient" and mode == "dp" and self.dp.grad_sample_mode == "ghost":
            raise ConfigError(
                "gradient canaries join the per-sample gradients, which dp.grad_sample_mode 'ghost' never "
                "forms; use --set dp.grad_sample_mode=microbatch"
            )

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


def clients_per_round(cfg: ExperimentConfig) -> int:
    """The most clients a round can hold: round(C*K) (at least 1); user-dp's Poisson sampling: K."""
    t = cfg.train
    if t.mode == "user-dp":
        return t.clients
    return max(int(round(t.fraction * t.clients)), 1)


def canary_kind(cfg: ExperimentConfig) -> str:
    """audit.kind resolved: gradient canaries for dp and central, client canaries for user-dp and fedavg."""
    if cfg.audit.kind != "auto":
        return cfg.audit.kind
    return "gradient" if cfg.train.mode in ("dp", "central") else "client"


def canary_norm(cfg: ExperimentConfig) -> float:
    """audit.norm, or the clip bound of the canaries' kind: C (gradient) or S (client)."""
    if cfg.audit.norm is not None:
        return cfg.audit.norm
    return cfg.dp.max_grad_norm if canary_kind(cfg) == "gradient" else cfg.dp.clip_norm


def check_secaggplus(cfg: ExperimentConfig) -> None:
    """SecAgg+ settings against the round size: the encoding fits, the threshold survives max_dropout."""
    s, k = cfg.secure, clients_per_round(cfg)
    FixedPoint(s.modulus_bits, s.value_range, k)  # raises ConfigError when the sum cannot fit
    if k < 2:
        raise ConfigError(
            f"secure.scheme 'secaggplus' needs >= 2 clients per round, but a round samples {k} "
            f"(train.clients = {cfg.train.clients}, train.fraction = {cfg.train.fraction})"
        )
    n, t = round_shares(k, s.neighbours, s.threshold)
    drops = math.floor(s.max_dropout * k)  # up to this many of a round's k clients may drop
    if t > n - drops:
        raise ConfigError(
            f"secure.max_dropout = {s.max_dropout}: {drops} of {k} clients dropping can leave a client "
            f"{n - drops} live neighbours of its {n}, fewer than t = {t}; lower secure.max_dropout or "
            "secure.threshold, or use more neighbours"
        )


def min_clients(cfg: ExperimentConfig) -> int:
    """secure.min_clients, or its default: 3 where a round holds 3 or more clients, else 2."""
    if cfg.secure.min_clients is not None:
        return cfg.secure.min_clients
    return 3 if clients_per_round(cfg) >= 3 else 2


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
    "normalize": "data.normalize",
    "folds": "data.folds",
    "fold": "data.fold",
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
    "server_lr": "train.server_lr",
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
    "canaries": "audit.canaries",
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


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested dict (e.g. ExperimentConfig.to_dict()) as {dotted key: value}."""
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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


# --- speed perturbation factors (privfl.data.augment applies them) --------------------------------
MIN_FACTOR = 0.5
MAX_FACTOR = 2.0

_MAX_RATE_TERM = 1000  # a resampling ratio p/q with larger terms needs a huge sinc kernel


def validate_speed_factor(factor: float, sample_rate: int = 16_000) -> tuple[int, int]:
    """Check `factor` and return the reduced resampling ratio (source, target) it implies at `sample_rate`.

    The factor is rounded to a whole number of Hz (factor * sample_rate); ConfigError if it is not
    a finite number in [MIN_FACTOR, MAX_FACTOR] or needs an impractically fine ratio.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ConfigError(f"sample_rate must be a positive whole number of Hz, got {sample_rate!r}")
    if isinstance(factor, bool) or not isinstance(factor, (int, float, np.floating, np.integer)):
        raise ConfigError(f"speed factor must be a number, got {factor!r}")
    factor = float(factor)
    if not math.isfinite(factor) or factor <= 0:
        raise ConfigError(f"speed factor must be a positive finite number, got {factor!r} (1.0 = unchanged)")
    if not MIN_FACTOR <= factor <= MAX_FACTOR:
        raise ConfigError(
            f"speed factor {factor} is outside [{MIN_FACTOR}, {MAX_FACTOR}]; "
            "speed perturbation uses factors near 1, e.g. 0.9, 1.0, 1.1"
        )
    # torchaudio.functional.speed computes int(factor * rate), which truncates 1.15 * 16000 to 18399
    # and turns a 23/20 ratio into a 18399/16000 one; round instead.
    source, target = round(factor * int(sample_rate)), int(sample_rate)
    gcd = math.gcd(source, target)
    source, target = source // gcd, target // gcd
    if max(source, target) > _MAX_RATE_TERM:
        raise ConfigError(
            f"speed factor {factor} at {sample_rate} Hz needs resampling by {source}/{target}, "
            "which is too fine to compute; use a factor with at most two decimals, e.g. 0.95"
        )
    return source, target


def validate_speed_factors(factors: Iterable[float], sample_rate: int = 16_000) -> tuple[float, ...]:
    """Check a list of speed factors (e.g. from the config) and return it as a tuple without repeats."""
    try:
        values = tuple(float(f) if not isinstance(f, bool) else f for f in factors)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"speed factors must be a list of numbers like [0.9, 1.0, 1.1], got {factors!r}"
        ) from exc
    if not values:
        raise ConfigError("speed factors must not be empty; use [1.0] for no perturbation")
    for factor in values:
        validate_speed_factor(factor, sample_rate)
    if len(set(values)) != len(values):
        raise ConfigError(f"speed factors {list(values)} repeat a value; list each factor once")
    return values
