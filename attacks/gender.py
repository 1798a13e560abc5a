"""Gender (attribute) inference from client updates, after Feng et al. 2021 (arXiv 2112.13416).

The server attacks every recorded round a client took part in. For each round it takes w_t,
trains shadow clients on its own auxiliary speakers (known genders, disjoint from training; each
speaker also speed-perturbed, 0.9 / 1.0 / 1.1, which moves pitch and formants as a new speaker
would) with the run's own recipe, and fits a classifier from the shadow updates' features to the
shadow speaker's gender. It applies the classifier to each real client's update of that round and
averages a client's log-odds over all its rounds. Feature sets (see `views`):
  fc-profile: the column norms of the first fully connected layer's update, one value
      per input unit (for the CNN: channel x Mel-band pair after the max-pool over time). That
      update is a sum of outer products (upstream gradient x pooled activation), so its column
      norms follow the client's band-wise activation profile: its spectral make-up.
  first-layer: the update of the layer that sees the log-Mel input (`conv.*`, LSTM input weights).
  all-layers: the whole update.
Each feature vector is scaled to unit L2 norm (client sizes differ). A view (feature set, k) with
k > 0 classifies only the top k principal directions of the round's real client features (the
server holds every update of the round), each population centred on its own mean: the directions
along which the clients actually differ, so that a classifier fitted on a handful of auxiliary
speakers does not lean on their idiosyncrasies. The attack fits one classifier per view and round
and averages the views' log-odds.

The probe view (`probe`) fits nothing: the server runs each client's locally trained model w_t + delta_k
(its classifier head, on the global model's features) on its own auxiliary utterances; a model fine-tuned
on one speaker's voice improves more on voices of that speaker's gender (`probe_scores`). With classifier
views, each client's mean log-odds and mean probe score are rank-averaged over the clients.

The pitch view (`pitch`) reads no gender label: shadow clients of one auxiliary speaker at different speeds
differ only in pitch and formant scale, so a ridge regression of their fc-profile features on log speed,
centred within each speaker, learns the direction of a higher voice from contrasts that carry no speaker
idiosyncrasy; each real client's projection on it is its score (female voices are higher). It reuses the
classifier views' shadow clients and is rank-averaged with the other views (`pitch_scores`).

The activation-pitch view (`activation-pitch`) learns the same direction where it is measured directly: the
fc-profile's values are indexed by the classifier head's inputs (fc1's input units), so the server runs the
global model w_t on its auxiliary utterances at every speed and regresses their head inputs on log speed
within each auxiliary speaker (hundreds of utterances, not a dozen shadow updates). Each real client's
fc-profile is projected on that direction. It trains no shadow client and reads no gender label
(`activation_pitch_scores`).

The reconstruction view (`reconstruction`) inverts fc1's update: for a linear layer with bias,
dW^T db / |db|^2 is a weighted mean of the client's own head inputs (weights summing to one), so the
server gets an estimate of the client's mean head input and scores it with a classifier of gender fitted
on its auxiliary utterances' head inputs under w_t (`reconstruction_scores`). It needs no sign-free
feature, so it is the view for the paper LSTM, whose head inputs (mean tanh states) are signed.

Default views: fc-profile at k = 3, the probe and the activation-pitch view (DEFAULT_VIEWS), chosen on the
CNN; on the LSTM they find nothing and `--views reconstruction` is the one to use (docs/attacks.md).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from privfl.attacks.observe import ObservedRun, check_data_matches, unobserved_row
from privfl.attacks.result import AttackResult, AttackRow, scored_row
from privfl.attacks.shadow import (
    SPEED_MARK,
    auxiliary_speech,
    check_auxiliary,
    client_trainer,
    local_updates,
    sample_shadow_clients,
    shadow_client_data,
)
from privfl.config import validate_speed_factors
from privfl.data.dataset import PreparedData, SpeechSet
from privfl.errors import AttackError, ConfigError
from privfl.models import build_model, canonical_parameters, layer_slices, set_flat
from privfl.parallel import PerThread, thread_map

FEATURE_SETS = ("fc-profile", "first-layer", "all-layers")
PROBE = "probe"
"""The view that fits nothing: it evaluates each client's model on the auxiliary voices (`probe_scores`)."""
PITCH = "pitch"
"""The view that learns the direction of a higher voice in fc-profile space from the shadow clients of each
auxiliary speaker at different speeds, and reads no gender label (`pitch_scores`)."""
PITCH_PROFILE = "fc-profile"
"""The feature set the pitch view reads (all its values: no client subspace)."""
PITCH_RIDGE = 0.1
"""The pitch view's ridge penalty, relative to the mean eigenvalue of the centred shadow features' Gram
matrix."""
ACTIVATION_PITCH = "activation-pitch"
"""The view that learns the direction of a higher voice in the classifier head's input space from the
auxiliary utterances' head inputs under w_t at different speeds, and projects each client's fc-profile on
it; it trains no shadow client and reads no gender label (`activation_pitch_scores`)."""
RECONSTRUCTION = "reconstruction"
"""The view that reconstructs each client's mean head input from fc1's update (`reconstructed_inputs`) and
scores it with a classifier of gender fitted on the auxiliary utterances' head inputs
(`reconstruction_scores`)."""
RANKED_VIEWS = (PROBE, PITCH, ACTIVATION_PITCH, RECONSTRUCTION)
"""Views that score clients by a statistic of their own, rank-averaged with the classifier views' log-odds."""
CLASSIFIERS = ("logreg", "mlp")
POSITIVE = "female"
"""The class a score of 1 means; the AUC does not depend on which gender is called positive."""

Progress = Callable[[str, int, int], None]

DEFAULT_VIEWS: tuple[tuple[str, int], ...] = (("fc-profile", 3), (PROBE, 0), (ACTIVATION_PITCH, 0))
"""(feature set, client-subspace size k) pairs whose per-round log-odds the attack averages, and the ranked
views (probe, activation-pitch), whose per-client scores are rank-averaged with theirs. Default:
fc-profile:3, the probe and the activation-pitch view, chosen on eight RAVDESS development splits (seeds
5-12) before the test splits were run (docs/attacks.md, where the test figures are). It replaced the
shadow-update pitch view (`pitch`), which estimates the same direction from 12 shadow updates a round.
ENSEMBLE_VIEWS (--views fc-profile:2-5,first-layer:2-3) beat fc-profile:3 on two development splits and
not on three test splits, so it is an option, not the default."""

DEFAULT_VIEWS_FEW_SPEEDS: tuple[tuple[str, int], ...] = tuple(
    v for v in DEFAULT_VIEWS if v[0] != ACTIVATION_PITCH
)
"""The default views where the auxiliary speech has one speed only: the activation-pitch view needs two."""

MIN_SPEEDS = {PITCH: 3, ACTIVATION_PITCH: 2}
"""Speeds each auxiliary speaker needs for the pitch views: two for a direction; the shadow pitch view's
control (a target per voice orthogonal to speed) needs a third."""

ENSEMBLE_VIEWS: tuple[tuple[str, int], ...] = (
    ("fc-profile", 2),
    ("fc-profile", 3),
    ("fc-profile", 4),
    ("fc-profile", 5),
    ("first-layer", 2),
    ("first-layer", 3),
)


def parse_views(text: str) -> tuple[tuple[str, int], ...]:
    """'fc-profile:2-5,first-layer:2-3' -> ((fc-profile, 2), ..., (first-layer, 3)); k = 0: no subspace.
    'probe' -> (probe, 0): the model-behaviour probe; 'pitch' -> (pitch, 0) and 'activation-pitch' ->
    (activation-pitch, 0): the pitch directions; 'reconstruction' -> (reconstruction, 0) (none of these
    has a subspace)."""
    views: list[tuple[str, int]] = []
    for item in (t.strip() for t in text.split(",")):
        if item in RANKED_VIEWS or item in (f"{v}:0" for v in RANKED_VIEWS):
            views.append((item.partition(":")[0], 0))
            continue
        name, _, ks = item.partition(":")
        lo, _, hi = ks.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            a, b = -1, -1
        if name not in FEATURE_SETS or a < 0 or b < a:
            raise ConfigError(
                f"gender view {item!r} is not FEATURES:K or FEATURES:K1-K2 with FEATURES one of "
                f"{', '.join(FEATURE_SETS)} and 0 <= K1 <= K2, nor one of {', '.join(RANKED_VIEWS)}; "
                "e.g. --views fc-profile:2-5,first-layer:2-3 or --views fc-profile:3,probe"
            )
        views += [(name, k) for k in range(a, b + 1)]
    return tuple(dict.fromkeys(views))


@dataclass(frozen=True)
class GenderAttackConfig:
    """Knobs of the gender attack; `seed` seeds shadow sampling, classifiers, control and bootstrap."""

    rounds: tuple[int, ...] = ()  # empty: every recorded round (or max_rounds of them, evenly spaced)
    max_rounds: int = 0  # 0: all recorded rounds
    shadow_clients: int = 12  # per attacked round, genders alternating over the aux voices
    shadow_size: int = 0  # utterances per shadow client; 0: the real clients' median, capped by the aux data
    speeds: tuple[float, ...] = (0.9, 1.0, 1.1)  # speed perturbation of the auxiliary speech
    # the pitch view's direction for an attacked round also reads the shadow clients of this many attacked
    # rounds before and after it (pitch_window_scores); 0: the round's own shadow clients only. Default 1:
    # chosen on RAVDESS development splits (docs/attacks.md)
    pitch_window: int = 1
    # (feature set, k) pairs: one classifier per view and round, in the top-k principal directions of
    # the round's client features (k = 0: all features); the views' log-odds are averaged
    views: tuple[tuple[str, int], ...] = DEFAULT_VIEWS
    classifier: str = "logreg"
    control_repeats: int = 20  # shuffled-label relabellings for the control
    bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        # the activation-pitch view regresses on the speed within each auxiliary speaker, which takes two
        # speeds or more; with one (--speeds 1.0) the default views go without it, while views that name it
        # otherwise are refused by validate()
        if tuple(self.views) == DEFAULT_VIEWS and len(set(self.speeds)) < MIN_SPEEDS[ACTIVATION_PITCH]:
            object.__setattr__(self, "views", DEFAULT_VIEWS_FEW_SPEEDS)

    def validate(self) -> GenderAttackConfig:
        if not self.views:
            raise ConfigError("gender views are empty; give at least one, e.g. --views fc-profile:3")
        for name, k in self.views:
            if name in RANKED_VIEWS and k == 0:
                continue
            if name not in FEATURE_SETS or not isinstance(k, int) or k < 0:
                raise ConfigError(
                    f"gender view ({name!r}, {k!r}) needs a feature set among {', '.join(FEATURE_SETS)} and "
                    f"a subspace size k >= 0, or (VIEW, 0) with VIEW one of {', '.join(RANKED_VIEWS)}; "
                    "e.g. --views fc-profile:2-5,first-layer:2-3"
                )
        if self.classifier not in CLASSIFIERS:
            raise ConfigError(f"gender classifier {self.classifier!r} is not one of {', '.join(CLASSIFIERS)}")
        if self.shadow_clients < 4:
            raise ConfigError(
                f"shadow_clients must be >= 4 (two per gender at least), got {self.shadow_clients}"
            )
        if self.control_repeats < 1:
            raise ConfigError(f"control_repeats must be >= 1, got {self.control_repeats}")
        if self.pitch_window < 0:
            raise ConfigError(
                f"pitch_window must be >= 0 (attacked rounds on each side whose shadow clients also shape a "
                f"round's pitch direction; 0: the round's own), got {self.pitch_window}"
            )
        if self.shadow_size < 0 or self.max_rounds < 0 or self.bootstrap < 0 or self.seed < 0:
            raise ConfigError(
                "shadow_size, max_rounds, bootstrap and seed must be >= 0, got "
                f"{self.shadow_size}, {self.max_rounds}, {self.bootstrap}, {self.seed}"
            )
        if not self.speeds or 1.0 not in self.speeds:
            raise ConfigError(
                f"speeds {list(self.speeds)} must include 1.0 (the auxiliary speech as recorded), "
                "e.g. --speeds 0.9,1.0,1.1 or --speeds 1.0 for none"
            )
        validate_speed_factors(self.speeds)
        for view, why in (
            (
                PITCH,
                "it regresses the shadow updates on the speed within each speaker, and its control on a "
                "target orthogonal to the speed",
            ),
            (
                ACTIVATION_PITCH,
                "it regresses the auxiliary utterances' head inputs on the speed within each speaker",
            ),
        ):
            if (view, 0) in self.views and len(set(self.speeds)) < MIN_SPEEDS[view]:
                raise ConfigError(
                    f"the {view!r} gender view needs each auxiliary speaker at "
                    f"{('two', 'three')[MIN_SPEEDS[view] - 2]} speeds or "
                    f"more ({why}), got speeds {list(self.speeds)}; e.g. --speeds 0.9,1.0,1.1, or leave "
                    f"the {view} view out: --views fc-profile:3,probe"
                )
        return self


# --- features and classifier (pure) ---------------------------------------------------------------
def first_layer_names(model: nn.Module) -> tuple[str, ...]:
    """Parameters of the layer that sees the input: its input-side weights for an LSTM."""
    names = [n for n, _ in canonical_parameters(model)]
    module = names[0].rpartition(".")[0]
    first = [n for n in names if n.rpartition(".")[0] == module]
    input_side = [n for n in first if "_ih_" in n]  # LSTM: the recurrent weights never see the features
    return tuple(input_side or first)


def profile_layer(model: nn.Module) -> str:
    """The weight of the first fully connected layer (`fc1.weight` in both paper models)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            return f"{name}.weight"
    raise ConfigError(f"{type(model).__name__} has no fully connected layer for the fc-profile features")


def feature_columns(model: nn.Module, which: str) -> np.ndarray:
    """Indices into the flat parameter vector that the attack reads (int64 [F])."""
    slices = layer_slices(model)
    if which == "all-layers":
        return np.arange(sum(s.stop - s.start for s in slices.values()), dtype=np.int64)
    if which == "first-layer":
        return np.concatenate([np.arange(slices[n].start, slices[n].stop) for n in first_layer_names(model)])
    if which == "fc-profile":
        s = slices[profile_layer(model)]
        return np.arange(s.start, s.stop, dtype=np.int64)
    raise ConfigError(f"feature set {which!r} is not one of {', '.join(FEATURE_SETS)}")


@dataclass(frozen=True)
class FeatureMap:
    """Which values of a flat update the attack reads, and how: `rows` > 0 takes the column norms of
    those values seen as a [rows, F / rows] matrix (a fully connected layer's weight, out x in)."""

    columns: np.ndarray
    rows: int = 0

    @classmethod
    def of(cls, model: nn.Module, which: str) -> FeatureMap:
        columns = feature_columns(model, which)
        if which == "fc-profile":
            return cls(columns, int(dict(model.named_parameters())[profile_layer(model)].shape[0]))
        return cls(columns)

    @property
    def size(self) -> int:
        return int(self.columns.size // self.rows) if self.rows else int(self.columns.size)

    def __call__(self, deltas: np.ndarray) -> np.ndarray:
        """[k, P] updates -> [k, size] float64 features, each row of unit L2 norm."""
        if not self.rows:
            return update_features(deltas, self.columns)
        x = np.asarray(deltas, dtype=np.float64)[:, self.columns].reshape(len(deltas), self.rows, -1)
        return update_features(np.linalg.norm(x, axis=1), np.arange(x.shape[2]))


def update_features(deltas: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """[k, P] updates -> [k, F] float64 features, each row scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(deltas, dtype=np.float64)[:, columns]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def client_subspace(real: np.ndarray, k: int) -> np.ndarray | None:
    """The top-k principal directions [F, k] of one round's client features [n, F] (None if k = 0).

    The server holds every update of the round, so it sees along which directions its clients
    differ; k is capped at n - 1 (n centred points span at most n - 1 directions).
    """
    k = min(k, len(real) - 1)
    if k < 1:
        return None
    _, _, vt = np.linalg.svd(real - real.mean(axis=0), full_matrices=False)
    return vt[:k].T


def project(features: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    """Centre a population on its own mean and project it on `basis` (unchanged if None)."""
    if basis is None:
        return features
    return (features - features.mean(axis=0)) @ basis


def fit_classifier(features: np.ndarray, labels: np.ndarray, kind: str = "logreg", seed: int = 0) -> Pipeline:
    """Standardise, then logistic regression or a small MLP; labels 1 = POSITIVE."""
    if kind == "logreg":
        head = LogisticRegression(C=1.0, max_iter=5000)
    elif kind == "mlp":
        head = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3, max_iter=1000, random_state=seed)
    else:
        raise ConfigError(f"classifier {kind!r} is not one of {', '.join(CLASSIFIERS)}")
    return make_pipeline(StandardScaler(), head).fit(features, labels)


def shuffled_labels(
    labels: np.ndarray, rng: np.random.Generator, strata: np.ndarray | None = None
) -> np.ndarray:
    """Random 0/1 labels that carry no information about `labels` or `strata` (the control's labels).

    Within each stratum (default: each true class; the attack passes the shadow speaker) half of
    the items get label 1, and the strata's odd ones out are split in half as well, so the new
    labels are uncorrelated with the truth and with speaker identity, and both labels occur. A
    plain permutation of a few dozen labels agrees with the truth (or with one speaker) by chance
    often enough that a strong signal leaks through.
    """
    labels = np.asarray(labels)
    groups = labels if strata is None else np.asarray(strata)
    out = np.zeros_like(labels)
    odd: list[int] = []
    for value in np.unique(groups):
        idx = rng.permutation(np.flatnonzero(groups == value))
        half = len(idx) // 2
        out[idx[:half]] = 1
        if len(idx) % 2:
            odd.append(int(idx[-1]))
    # the odd ones out of every stratum are split half and half too, so both labels always occur
    odd_idx = rng.permutation(np.array(odd, dtype=np.int64))
    out[odd_idx[: (len(odd_idx) + int(rng.integers(2))) // 2]] = 1
    return out


def client_label(genders: tuple[str, ...]) -> tuple[int, bool]:
    """(1 female / 0 male / -1 undecided, mixed?) for a client's speakers, by majority of known genders."""
    known = [g for g in genders if g in ("female", "male")]
    mixed = len(set(known)) > 1
    n_f = sum(g == "female" for g in known)
    if not known or 2 * n_f == len(known):
        return -1, mixed
    return int(2 * n_f > len(known)), mixed


# --- the model-behaviour probe (pure) ---------------------------------------------------------------
def _probe_head(model: nn.Module, view: str = PROBE) -> tuple[nn.Linear, nn.Linear]:
    """The classifier head fc1 -> ReLU -> fc2 that both paper models end with (`view`: who needs it)."""
    fc1, fc2 = getattr(model, "fc1", None), getattr(model, "fc2", None)
    if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)):
        raise ConfigError(
            f"the {view!r} gender view reads a classifier head fc1 -> ReLU -> fc2, which "
            f"{type(model).__name__} does not have; use the paper CNN or LSTM, or drop {view!r} from --views"
        )
    return fc1, fc2


def head_inputs(
    model: nn.Module, weights: np.ndarray, speech: SpeechSet, batch_size: int = 8
) -> torch.Tensor:
    """What the classifier head (fc1) gets for every utterance under `weights`: float32 [n, fc1 inputs].

    Utterances are batched in order of length, so that most batches hold one length and the model
    skips masking padded frames (the features are the same; this halves the time on RAVDESS).
    Batches run in parallel, one per core, each worker on its own copy of the model.
    """
    fc1, _ = _probe_head(model)
    set_flat(model, weights)
    model.eval()
    if not len(speech):
        return torch.zeros(0, fc1.in_features)

    def replica() -> tuple[nn.Module, list[torch.Tensor]]:
        copy_ = copy.deepcopy(model)
        seen: list[torch.Tensor] = []
        _probe_head(copy_)[0].register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
        return copy_, seen

    replicas = PerThread(replica)
    order = torch.from_numpy(np.argsort(speech.lengths.numpy(), kind="stable"))
    starts = range(0, len(speech), batch_size)

    def one(b: int) -> torch.Tensor:
        m, seen = replicas.get()
        idx = order[starts[b] : starts[b] + batch_size]
        with torch.inference_mode():
            m(speech.x[idx], speech.lengths[idx])
        return seen.pop()

    out = torch.empty(len(speech), fc1.in_features)
    out[order] = torch.cat(thread_map(one, len(starts)))
    return out


def probe_loss_drops(
    model: nn.Module,
    speech: SpeechSet,
    weights: np.ndarray,
    deltas: np.ndarray,
    inputs: torch.Tensor | None = None,
) -> np.ndarray:
    """[k, n] loss drop of each utterance from w_t to each client's model w_t + delta_k (head only).

    The server holds w_t and each update, so it can run the client's locally trained model on its own
    auxiliary speech. The layers below the head are taken at w_t (one forward pass per round, not one
    per client): the head sees the pooled features the global model computes, and the client's head
    is what its local steps on its own voice changed. Loss: cross-entropy with the utterance's emotion.
    `inputs`: `head_inputs(model, weights, speech)` where the caller has them already.
    """
    z = head_inputs(model, weights, speech) if inputs is None else inputs
    deltas = np.asarray(deltas, dtype=np.float32)
    replicas = PerThread(lambda: copy.deepcopy(model))

    def losses(k: int) -> np.ndarray:  # k = -1: the global model's head, else client k's
        m = replicas.get()
        set_flat(m, weights if k < 0 else weights + deltas[k])
        fc1, fc2 = _probe_head(m)
        with torch.inference_mode():
            logits = fc2(torch.relu(fc1(z)))
            return nn.functional.cross_entropy(logits, speech.y, reduction="none").double().numpy()

    base, *clients = thread_map(lambda i: losses(i - 1), len(deltas) + 1)  # clients in parallel
    return np.stack([base - own for own in clients]) if clients else np.zeros((0, len(speech)))


def probe_scores(drops: np.ndarray, female: np.ndarray, voices: np.ndarray) -> np.ndarray:
    """One round's probe score per client [k] from its loss drops [k, n] on labelled voices.

    A model fine-tuned on one speaker improves more on voices of that speaker's gender. Each voice's
    mean loss drop is standardised over the round's clients (so no voice's scale dominates and what
    every client shares drops out), the score is the mean over female voices minus the mean over male
    voices, standardised again over the round's clients. `female` is 1/0 per utterance and must be
    one label per voice (the control splits each voice into two pseudo-voices, see `probe_control_labels`);
    positive scores lean female.
    """
    drops = np.asarray(drops, dtype=np.float64)
    female, voices = np.asarray(female), np.asarray(voices)
    names = list(dict.fromkeys(voices.tolist()))
    per_voice = np.stack([drops[:, voices == v].mean(axis=1) for v in names], axis=1)  # [k, voices]
    is_female = np.array([bool(female[voices == v][0]) for v in names])
    if any(len(set(female[voices == v].tolist())) > 1 for v in names):
        raise AttackError(
            "the probe's labels must be one per voice; split a voice into pseudo-voices instead"
        )
    if is_female.all() or not is_female.any():
        raise AttackError(
            f"the probe needs voices of both labels, got {int(is_female.sum())} of {len(names)} female"
        )
    per_voice = _standardise(per_voice)
    return _standardise(per_voice[:, is_female].mean(axis=1) - per_voice[:, ~is_female].mean(axis=1))


def probe_control_labels(voices: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The probe's control: (labels, pseudo-voices) per utterance. Half of each voice's utterances, at
    random, are called female: the labels carry nothing about gender, speaker or speed, and each voice
    becomes two pseudo-voices, one per label, so the probe compares halves of the same voices."""
    voices = np.asarray(voices)
    labels = shuffled_labels(np.zeros(len(voices), dtype=np.int64), rng, strata=voices)
    return labels, np.array([f"{v}|{lab}" for v, lab in zip(voices.tolist(), labels.tolist(), strict=True)])


# --- the pitch direction (pure) -------------------------------------------------------------------
def voice_speed(voice: str) -> tuple[str, float]:
    """(auxiliary speaker, speed factor) of a voice name: 'a@speed1.1' -> ('a', 1.1), 'a' -> ('a', 1.0)."""
    speaker, mark, factor = voice.partition(SPEED_MARK)
    return speaker, float(factor) if mark else 1.0


def speakers_and_log_speeds(voices) -> tuple[np.ndarray, np.ndarray]:
    """([n] auxiliary speakers, [n] log speed factors) of n voice names (`voice_speed` of each)."""
    speakers, speeds = zip(*map(voice_speed, voices), strict=True)
    return np.array(speakers), np.log(np.array(speeds, dtype=np.float64))


def _centre_within(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each group's rows centred on the group's own mean (float64 copy)."""
    x = np.array(x, dtype=np.float64)
    for g in np.unique(groups):
        m = groups == g
        x[m] -= x[m].mean(axis=0)
    return x


def _one_speed_per_speaker(n_shadow: int) -> AttackError:
    return AttackError(
        f"the {PITCH!r} view needs shadow clients of one auxiliary speaker at two speeds or more in "
        f"every round; this round's {n_shadow} shadow clients hold one speed per speaker: raise "
        "--shadow-clients to the number of auxiliary voices (speakers x speeds)"
    )


def pitch_direction(
    features: np.ndarray, target: np.ndarray, speakers: np.ndarray, ridge: float = PITCH_RIDGE
) -> np.ndarray:
    """[F] ridge regression weights of `target` [n] on the shadow clients' `features` [n, F], both centred
    within each auxiliary speaker: speaker fixed effects removed, so only contrasts between the voices of
    one speaker (for the attack: the same speech at different speeds) shape the direction, never what
    tells one auxiliary speaker from another. Dual form (n << F); the penalty is `ridge` times the mean
    eigenvalue of the centred Gram matrix. A `target` [n, m] gives [F, m], one direction per column from
    one solve (the attack's target and its control's). Raises AttackError if no speaker's targets vary."""
    speakers = np.asarray(speakers)
    target = np.asarray(target, dtype=np.float64)
    x = _centre_within(features, speakers)
    t = _centre_within(target.reshape(len(target), -1), speakers)
    if not np.any(np.abs(t) > 1e-12):
        raise _one_speed_per_speaker(len(t))
    gram = x @ x.T
    penalty = ridge * max(float(np.trace(gram)) / x.shape[1], 1e-12)
    w = x.T @ np.linalg.solve(gram + penalty * np.eye(len(t)), t)
    return w if target.ndim > 1 else w[:, 0]


def pitch_scores(
    shadow: np.ndarray, log_speed: np.ndarray, speakers: np.ndarray, real: np.ndarray
) -> np.ndarray:
    """One round's pitch score per client [k]: each real client's features [k, F] projected on the
    direction of a higher voice (`pitch_direction` of the shadow features [n, F] on log speed), standardised
    over the round's clients ([k, m] for targets [n, m] in place of the log speed). Speed perturbation by
    f scales pitch and formants by f, and female voices are higher than male ones (about an octave in F0,
    15-20 % in formants), so positive scores lean female; no gender label enters."""
    return _standardise(np.asarray(real, dtype=np.float64) @ pitch_direction(shadow, log_speed, speakers))


def pitch_control_targets(values: np.ndarray, log_speed: np.ndarray, speakers: np.ndarray) -> np.ndarray:
    """The pitch view's control targets: arbitrary `values` per shadow client, centred within each auxiliary
    speaker and made orthogonal there to the centred log speed, so they carry nothing about speed (hence
    pitch), speaker or gender; all zero where a speaker has fewer than three speeds."""
    speakers = np.asarray(speakers)
    v = _centre_within(np.asarray(values, dtype=np.float64)[:, None], speakers)[:, 0]
    t = _centre_within(np.asarray(log_speed, dtype=np.float64)[:, None], speakers)[:, 0]
    for g in np.unique(speakers):
        m = speakers == g
        tt = float(t[m] @ t[m])
        if tt > 1e-24:
            v[m] -= (v[m] @ t[m]) / tt * t[m]
    return v


def activation_pitch_scores(
    inputs: np.ndarray, voices: np.ndarray, real: np.ndarray, target: np.ndarray | None = None
) -> np.ndarray:
    """One round's activation-pitch score per client [k]. `inputs` [n, F]: the head inputs (fc1's inputs) of
    the auxiliary utterances under the round's global model w_t, `voices` [n] their voice names
    (speaker@speedF), `real` [k, F]: the clients' fc-profiles, whose values are indexed by the same head
    inputs. The direction of a higher voice is the ridge regression of the inputs on log speed within each
    auxiliary speaker (`pitch_direction`: the same speech at different speeds, so nothing that tells one
    speaker from another enters); each fc-profile is projected on it and standardised over the clients.
    An fc-profile follows the client's own head inputs (fc1's update is a sum of upstream gradient x input
    outer products), so a client whose voice sits higher scores higher: positive leans female.
    `target` [n] replaces the log speed (the control's targets, `pitch_control_targets`); [n, m] scores m
    targets at the cost of one (one solve): [k, m]."""
    speakers, log_speed = speakers_and_log_speeds(np.asarray(voices).tolist())
    return pitch_scores(inputs, log_speed if target is None else target, speakers, real)


def reconstructed_inputs(deltas: np.ndarray, weight: slice, bias: slice, out_features: int) -> np.ndarray:
    """[k, F] each client's mean head input, reconstructed from its update of a linear layer with bias
    (`weight`, `bias`: that layer's slices of the flat update; `out_features` its rows). Every local step
    adds -lr x (upstream gradient g_i) x (input a_i)^T to the weight and -lr x g_i to the bias, momentum
    only rescaling the steps, so dW = sum_i g_i a_i^T and db = sum_i g_i with the same coefficients, and
    dW^T db / |db|^2 = sum_i w_i a_i with w_i = g_i . db / |db|^2, which sum to one: a weighted mean of the
    client's own inputs (exactly its input if it holds one utterance or all its inputs are equal). A
    client with db = 0 gets zeros."""
    deltas = np.asarray(deltas, dtype=np.float64)
    dw = deltas[:, weight].reshape(len(deltas), out_features, -1)
    db = deltas[:, bias]
    norm = (db**2).sum(axis=1, keepdims=True)
    return np.einsum("kof,ko->kf", dw, db) / np.where(norm > 0, norm, 1.0)


def _reconstruction_layer(model: nn.Module) -> tuple[slice, slice, int]:
    """fc1's weight and bias slices of the flat update and its output size, for `reconstructed_inputs`."""
    fc1, _ = _probe_head(model, RECONSTRUCTION)
    if fc1.bias is None:
        raise ConfigError(
            f"the {RECONSTRUCTION!r} gender view reads the update of fc1's bias, and "
            f"{type(model).__name__}'s fc1 has none; use the paper CNN or LSTM, or drop {RECONSTRUCTION!r} "
            "from --views"
        )
    name = next(n for n, m in model.named_modules() if m is fc1)
    at = layer_slices(model)
    return at[f"{name}.weight"], at[f"{name}.bias"], fc1.out_features


def reconstruction_scores(
    inputs: np.ndarray, female: np.ndarray, reconstructed: np.ndarray, seed: int = 0
) -> np.ndarray:
    """One round's reconstruction score per client [k]: a logistic regression of `female` (1/0 per auxiliary
    utterance of known gender) on those utterances' head inputs [n, F] under w_t, applied to each client's
    reconstructed mean head input [k, F] (`reconstructed_inputs`); log-odds standardised over the round's
    clients, positive leaning female."""
    classifier = fit_classifier(np.asarray(inputs, dtype=np.float64), np.asarray(female), "logreg", seed)
    return _standardise(log_odds(classifier, np.asarray(reconstructed, dtype=np.float64)))


def pitch_window_scores(
    shadow: list[np.ndarray],
    targets: list[np.ndarray | None],
    speakers: list[np.ndarray],
    real: list[np.ndarray],
    window: int,
) -> list[np.ndarray | None]:
    """Per attacked round j, its clients' pitch scores: `real[j]` [k, F] projected on the `pitch_direction` of
    the shadow clients of rounds j - window .. j + window stacked (`shadow[i]` [n, F] with `targets[i]`),
    each round's auxiliary speakers a group of their own (centred within speaker and round, so nothing that
    differs between rounds or speakers shapes the direction), standardised over the round's clients.
    window = 0 is `pitch_scores` of each round alone. The model moves little from one round to the next,
    and one round has only a few shadow clients per speaker: neighbouring rounds' contrasts are more
    samples of nearly the same direction, at no extra shadow training. A round whose targets are None or
    all zero gets None; its neighbours leave its shadow clients out where its targets are None."""
    n = len(shadow)
    if not len(targets) == len(speakers) == len(real) == n:
        raise AttackError(
            f"pitch_window_scores needs one entry per round in every list, got {n} shadow, {len(targets)} "
            f"target, {len(speakers)} speaker and {len(real)} real entries"
        )
    out: list[np.ndarray | None] = []
    for j in range(n):
        t = targets[j]
        if t is None or not np.any(np.abs(t) > 1e-12):
            out.append(None)
            continue
        near = [i for i in range(max(0, j - window), min(n, j + window + 1)) if targets[i] is not None]
        x = np.concatenate([shadow[i] for i in near])
        target = np.concatenate([targets[i] for i in near])
        groups = np.concatenate([np.array([f"{sp}#{i}" for sp in speakers[i]]) for i in near])
        out.append(pitch_scores(x, target, groups, real[j]))
    return out


def _standardise(x: np.ndarray) -> np.ndarray:
    """Centre and scale along axis 0 (the round's clients); a constant column becomes 0."""
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def _rank01(x: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (ties averaged); one item gets 0.5."""
    from scipy.stats import rankdata

    x = np.asarray(x, dtype=np.float64)
    return (rankdata(x) - 1) / (len(x) - 1) if len(x) > 1 else np.full(len(x), 0.5)


def combine_scores(*parts: np.ndarray | None) -> np.ndarray:
    """Scores in [0, 1] (1: female) of one population of clients from the classifier views' log-odds and the
    ranked views' scores (None: that view is absent): P(female) = sigmoid of one alone;
    with several, the mean of their ranks among the clients (they are on different scales; the rank
    average weighs them equally)."""
    present = [np.asarray(p, dtype=np.float64) for p in parts if p is not None]
    if not present:
        raise AttackError("combine_scores needs at least one view's scores, got none")
    if len(present) == 1:
        return _sigmoid(present[0])
    return np.mean([_rank01(p) for p in present], axis=0)


# --- the attack on a run --------------------------------------------------------------------------
@dataclass(frozen=True)
class ControlLabels:
    """The shuffled-label control's relabellings, one per repeat, each drawn once and kept over all rounds
    as the true labels are, none carrying anything about gender, speaker or speed:
    voices: a label per (pseudo-)speaker voice, balanced within each auxiliary speaker (classifier views);
    probe: (labels, pseudo-voices) per utterance of known gender (`probe_control_labels`);
    pitch: a random value per voice, made orthogonal to the log speed within each auxiliary speaker every
        round (`pitch_control_targets`, the shadow pitch view);
    activation_pitch: a random target per auxiliary utterance, orthogonal to the log speed within each
        auxiliary speaker. Each kind has a generator of its own, seeded by the attack's seed."""

    voices: list[dict[str, int]]
    probe: list[tuple[np.ndarray, np.ndarray]]
    pitch: list[dict[str, float]]
    activation_pitch: list[np.ndarray]

    @classmethod
    def draw(cls, aux: SpeechSet, repeats: int, seed: int) -> ControlLabels:
        voices = sorted(set(aux.speakers))
        voice_gender = dict(zip(aux.speakers, aux.genders, strict=True))
        truth_of_voice = np.array([int(voice_gender[v] == POSITIVE) for v in voices])
        base = np.array([v.split(SPEED_MARK)[0] for v in voices])
        crng = np.random.default_rng([seed, 0xC0A7])
        relabel = [
            dict(zip(voices, shuffled_labels(truth_of_voice, crng, strata=base).tolist(), strict=True))
            for _ in range(repeats)
        ]
        known = np.array(aux.speakers)[np.isin(aux.genders, ("female", "male"))]
        prng = np.random.default_rng([seed, 0xC0A7, 0x9B0E])
        probe = [probe_control_labels(known, prng) for _ in range(repeats)]
        trng = np.random.default_rng([seed, 0xC0A7, 0x917C])
        pitch = [
            dict(zip(voices, trng.standard_normal(len(voices)).tolist(), strict=True)) for _ in range(repeats)
        ]
        arng = np.random.default_rng([seed, 0xC0A7, 0xAC7])
        speaker, log_speed = speakers_and_log_speeds(aux.speakers)
        act = [
            pitch_control_targets(arng.standard_normal(len(aux)), log_speed, speaker) for _ in range(repeats)
        ]
        return cls(relabel, probe, pitch, act)


class Scored(NamedTuple):
    """One client's scores in one attacked round; nan where that view is not used."""

    round: int
    client: int
    odds: float  # the classifier views' mean log-odds
    probe: float
    pitch: float
    activation_pitch: float
    reconstruction: float
    label: int  # 1 female, 0 male, -1 left out (tie or unknown)
    mixed: bool  # the client holds speakers of both genders
    relabelling: int = -1  # the control's relabelling; -1: the attack


SCORE_FIELDS = ("odds", "probe", "pitch", "activation_pitch", "reconstruction")
"""The per-view scores of a `Scored` item, in the order `combine_scores` takes them."""


def gender_preflight(observed: ObservedRun, data: PreparedData, config: GenderAttackConfig) -> list[int]:
    """Every check the gender attack needs, before it computes anything; returns the rounds to attack."""
    rounds = observed.select_rounds(config.rounds, config.max_rounds)
    _check_gender_labels(observed, rounds)
    check_auxiliary(data.aux)
    if len(config.speeds) > 1 and data.corpus is None:
        raise AttackError(
            "speed-perturbed auxiliary speech needs the corpus's audio, and this data has none; "
            "pass speeds=(1.0,) (--speeds 1.0)"
        )
    batch = observed.config.train.batch_size
    size = config.shadow_size or _default_shadow_size(observed, rounds, data, config)
    if observed.config.train.mode == "dp" and size < batch:
        raise AttackError(
            f"shadow clients of {size} utterances are smaller than the run's batch size {batch}, which "
            f"DP-SGD's sample rate B/n does not allow; pass --shadow-size {batch} or more (the auxiliary "
            "speakers need that many utterances each)"
        )
    check_data_matches(observed, data, rounds[0])
    return rounds


def gender_attack(
    observed: ObservedRun,
    data: PreparedData,
    config: GenderAttackConfig | None = None,
    progress: Progress | None = None,
) -> AttackResult:
    """The gender attack over every selected round: per-client scores combined over the rounds, single
    rounds, the shuffled-label control and the aggregate. Classifier views train shadow clients; the
    probe view evaluates each client's model on the auxiliary voices; the pitch views project each client's
    fc-profile on the direction of a higher voice; the reconstruction view classifies each client's mean head
    input recovered from fc1's update; with several, their ranks are averaged."""
    config = (config or GenderAttackConfig()).validate()
    started = time.perf_counter()
    cfg = observed.config
    rounds = gender_preflight(observed, data, config)
    model = build_model(cfg.model, data.n_mels)
    views = tuple(v for v in config.views if v[0] not in RANKED_VIEWS)  # the classifier views
    use_probe = (PROBE, 0) in config.views
    use_pitch = (PITCH, 0) in config.views
    use_act = (ACTIVATION_PITCH, 0) in config.views
    use_recon = (RECONSTRUCTION, 0) in config.views
    shadowed = bool(views) or use_pitch  # views that train shadow clients
    # views that read the head's inputs; each refuses a model without fc1 -> ReLU -> fc2 before anything runs
    reads_head = use_probe or use_act or use_recon
    for view, on in ((PROBE, use_probe), (ACTIVATION_PITCH, use_act)):
        if on:
            _probe_head(model, view)
    recon_layer = _reconstruction_layer(model) if use_recon else None  # checks the head and fc1's bias
    names = [n for n, _ in views] + ([PITCH_PROFILE] if use_pitch or use_act else [])
    maps = {name: FeatureMap.of(model, name) for name in dict.fromkeys(names)}
    privacy = observed.summary.get("privacy")
    size = config.shadow_size or _default_shadow_size(observed, rounds, data, config)
    aux = auxiliary_speech(data, cfg, config.speeds)
    aux_voice = np.array(aux.speakers)
    aux_female = np.array([int(g == POSITIVE) for g in aux.genders])
    known_voice = np.isin(aux.genders, ("female", "male"))  # the probe reads voices of known gender
    aux_log_speed = speakers_and_log_speeds(aux.speakers)[1]
    relabelled = ControlLabels.draw(aux, config.control_repeats, config.seed)

    single: list[Scored] = []  # the attack's scores per round and client
    controls: list[Scored] = []  # the same per relabelling
    per_round_agg: list[dict] = []
    # the pitch view: per attacked round with clients, (shadow features, log speed, shadow speakers, real
    # features), where its clients' items start in `single`, its control targets per relabelling and where
    # each relabelling's items start in `controls`
    pitch_in: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    pitch_at: list[int] = []
    pitch_control: list[list[np.ndarray]] = [[] for _ in relabelled.voices]
    control_at: dict[tuple[int, int], int] = {}
    for j, r in enumerate(rounds):
        obs, truth = observed.observe(r)
        has_clients = obs.deltas is not None and len(obs.deltas)  # user-dp's Poisson sampling can pick nobody
        xs: dict[str, np.ndarray] = {}
        if shadowed:
            rng = np.random.default_rng([config.seed, r, 0x6E0D])
            shadows = sample_shadow_clients(aux, config.shadow_clients, size, rng)
            report = (
                (lambda d, t, j=j: progress("gender: shadow clients", j * t + d, len(rounds) * t))
                if progress
                else None
            )
            clients = shadow_client_data(aux, shadows)
            trainer = client_trainer(cfg, data, clients, privacy)
            deltas = local_updates(trainer, clients, obs.weights, r, report)
            xs = {name: fmap(deltas) for name, fmap in maps.items()}
            ys = np.array([int(s.gender == POSITIVE) for s in shadows])
            shadow_speaker, log_speed = speakers_and_log_speeds([s.speaker for s in shadows])
        elif progress:
            progress("gender: auxiliary voices", j + 1, len(rounds))
        if has_clients:
            truths = [client_label(g) for g in truth.genders]
            ids = truth.client_ids.tolist()
            nan = np.full(len(ids), np.nan)
            real = {n: f(obs.deltas) for n, f in maps.items()}
            projected = project_views(xs, real, views) if views else []
            # the auxiliary utterances' head inputs under w_t: one forward pass a round for the probe, the
            # activation-pitch and the reconstruction view
            inputs = head_inputs(model, obs.weights, aux) if reads_head else None
            z = inputs.double().numpy() if use_act or use_recon else None
            rec = reconstructed_inputs(obs.deltas, *recon_layer) if use_recon else None
            drops = (
                probe_loss_drops(model, aux, obs.weights, obs.deltas, inputs)[:, known_voice]
                if use_probe
                else None
            )
            act = (  # column 0: the attack (log speed); column 1 + k: the control's relabelling k
                activation_pitch_scores(
                    z,
                    aux_voice,
                    real[PITCH_PROFILE],
                    np.column_stack([aux_log_speed, *relabelled.activation_pitch]),
                )
                if use_act
                else None
            )
            scores = {
                "odds": view_log_odds(projected, ys, config) if views else nan,
                "probe": (
                    probe_scores(drops, aux_female[known_voice], aux_voice[known_voice]) if use_probe else nan
                ),
                "pitch": nan,  # the pitch view's scores are filled in after the loop (pitch_window_scores)
                "activation_pitch": act[:, 0] if use_act else nan,
                "reconstruction": (
                    reconstruction_scores(z[known_voice], aux_female[known_voice], rec, config.seed)
                    if use_recon
                    else nan
                ),
            }
            if use_pitch:
                pitch_at.append(len(single))
                pitch_in.append((xs[PITCH_PROFILE], log_speed, shadow_speaker, real[PITCH_PROFILE]))
            single += _scored(r, ids, scores, truths)
            for k, labels_k in enumerate(relabelled.voices):
                ctrl = dict.fromkeys(SCORE_FIELDS, nan)
                if use_pitch:
                    tc = pitch_control_targets(
                        np.array([relabelled.pitch[k][s.speaker] for s in shadows]), log_speed, shadow_speaker
                    )
                    pitch_control[k].append(tc)
                if views:
                    yc = np.array([labels_k[s.speaker] for s in shadows])
                    if yc.min() == yc.max():
                        continue  # this round's shadows hold one control label only: nothing to fit
                    ctrl["odds"] = view_log_odds(projected, yc, config)
                if use_probe:
                    ctrl["probe"] = probe_scores(drops, *relabelled.probe[k])
                if use_act:
                    ctrl["activation_pitch"] = act[:, 1 + k]
                if use_recon:  # the probe's relabelling: a random half of every voice's utterances
                    ctrl["reconstruction"] = reconstruction_scores(
                        z[known_voice], relabelled.probe[k][0], rec, config.seed
                    )
                if use_pitch:
                    if not np.any(np.abs(tc) > 1e-12):
                        continue  # no speaker at three speeds this round: no target orthogonal to speed
                    control_at[(len(pitch_in) - 1, k)] = len(controls)
                controls += _scored(r, ids, ctrl, truths, k)
        if views and obs.aggregate is not None and len(truth.client_ids):
            pa = _aggregate_score(
                xs, ys, {n: maps[n] for n, _ in _views_by_set(views)}, obs.aggregate, config
            )
            labels = [client_label(g)[0] for g in truth.genders]
            n = obs.num_samples.astype(np.float64)
            known = np.array([lab >= 0 for lab in labels], dtype=bool)
            share = float(np.sum(n[known] * np.array(labels)[known]) / max(n[known].sum(), 1.0))
            per_round_agg.append({"round": r, "score": pa, "female_share": share, "clients": len(labels)})

    if use_pitch and pitch_in:
        _fill_pitch_scores(
            single, controls, pitch_in, pitch_at, pitch_control, control_at, config.pitch_window
        )

    result = AttackResult(
        "gender",
        str(observed.run.path),
        observed.observed,
        {
            **asdict(config),
            "shadow_size": size,
            "feature_count": {name: fmap.size for name, fmap in maps.items()},
            "rounds": rounds,
            "speeds": list(config.speeds),
        },
        config.seed,
    )
    if observed.secure:
        result.rows.append(unobserved_row("gender: per-client updates, all rounds combined", observed))
    else:
        result.rows.extend(_per_client_rows(single, controls, config, observed.observed))
    used = [n for n in RANKED_VIEWS if (n, 0) in config.views]
    if views:
        result.rows.append(_aggregate_row(per_round_agg, config))
    else:
        result.rows.append(
            AttackRow(
                "gender: aggregate update",
                "aggregate",
                reason=f"the {' and '.join(repr(n) for n in used)} "
                f"view{'s rank' if len(used) > 1 else ' ranks'} a round's clients against each "
                "other, and a round has one aggregate; add a classifier view (e.g. --views "
                "fc-profile:3,probe) to attack the aggregate",
            )
        )
    result.notes.append(
        _attacker_note(config, data, aux, known_voice, maps, views, size if shadowed else 0, len(rounds))
    )
    if cfg.model.name == "lstm" and not use_recon:
        result.notes.append(
            "the LSTM's head inputs (mean tanh states) are signed, which the fc-profile views read as column "
            "norms: on RAVDESS they and the probe found nothing in its updates where the reconstruction "
            f"view did (docs/attacks.md); --views {RECONSTRUCTION}"
        )
    result.seconds = time.perf_counter() - started
    return result


def _fill_pitch_scores(
    single: list[Scored],
    controls: list[Scored],
    pitch_in: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    pitch_at: list[int],
    pitch_control: list[list[np.ndarray]],
    control_at: dict[tuple[int, int], int],
    window: int,
) -> None:
    """Set the shadow pitch view's scores of the attack's and the control's items in place, once every round
    is in (`pitch_window_scores` reads the neighbouring rounds). `pitch_in`: per attacked round with clients,
    (shadow features, log speed, shadow speakers, real features); `pitch_at`: where that round's items start
    in `single`; `pitch_control[k]`: relabelling k's targets per round; `control_at[(round j, k)]`: where
    they start in `controls` (absent: that relabelling scored nothing that round)."""
    shadow_x, speeds_in, speakers_in, real_in = (list(v) for v in zip(*pitch_in, strict=True))
    scores = pitch_window_scores(shadow_x, speeds_in, speakers_in, real_in, window)
    for j, (start, sc) in enumerate(zip(pitch_at, scores, strict=True)):
        if sc is None:  # every speaker of the round's shadow clients at one speed
            raise _one_speed_per_speaker(len(speeds_in[j]))
        part = single[start : start + len(sc)]
        single[start : start + len(sc)] = [t._replace(pitch=float(v)) for t, v in zip(part, sc, strict=True)]
    for k, targets in enumerate(pitch_control):
        scores = pitch_window_scores(shadow_x, targets, speakers_in, real_in, window)
        for j, sc in enumerate(scores):
            if (j, k) in control_at:
                start = control_at[(j, k)]
                part = controls[start : start + len(sc)]
                controls[start : start + len(sc)] = [
                    t._replace(pitch=float(v)) for t, v in zip(part, sc, strict=True)
                ]


def _attacker_note(
    config: GenderAttackConfig,
    data: PreparedData,
    aux: SpeechSet,
    known_voice: np.ndarray,
    maps: dict[str, FeatureMap],
    views: tuple[tuple[str, int], ...],
    shadow_size: int,
    n_rounds: int,
) -> str:
    """The result's note on what the attacker (the server) held and how each view scored; shadow_size 0:
    no view trained shadow clients."""
    use_probe, use_pitch, use_act, use_recon = (
        (v, 0) in config.views for v in (PROBE, PITCH, ACTIVATION_PITCH, RECONSTRUCTION)
    )
    aux_voice = np.array(aux.speakers)
    n_voices = len(set(aux_voice[known_voice]))
    ranked = [
        n
        for n, on in (
            ("the classifier views'", views),
            ("the probe's", use_probe),
            ("the pitch view's", use_pitch),
            ("the activation-pitch view's", use_act),
            ("the reconstruction view's", use_recon),
        )
        if on
    ]
    described = [f"{name} ({maps[name].size} values): k = {ks}" for name, ks in _views_by_set(views)]
    if use_probe:
        described.append(
            f"{PROBE} (each client's model w_t + delta_k, head only, on the {int(known_voice.sum())} "
            f"auxiliary utterances of {n_voices} voices: loss drop from w_t, female voices minus male)"
        )
    if use_pitch:
        described.append(
            f"{PITCH} (all {maps[PITCH_PROFILE].size} {PITCH_PROFILE} values: ridge regression of the shadow "
            "features on log speed within each auxiliary speaker"
            + (
                f" and round, over the round and the {config.pitch_window} attacked "
                f"round{'s' if config.pitch_window > 1 else ''} on each side of it"
                if config.pitch_window
                else ""
            )
            + ", the real clients projected on it; higher voice = female, no gender labels)"
        )
    if use_act:
        described.append(
            f"{ACTIVATION_PITCH} (the {len(aux)} auxiliary utterances' head inputs under w_t regressed on "
            f"log speed within each auxiliary speaker, each client's {PITCH_PROFILE} "
            f"({maps[PITCH_PROFILE].size} values) projected on it; higher voice = female, no gender labels)"
        )
    if use_recon:
        described.append(
            f"{RECONSTRUCTION} (each client's mean head input reconstructed from fc1's update, dW^T db / "
            f"|db|^2, scored by a logistic regression of gender on the {int(known_voice.sum())} auxiliary "
            "utterances' head inputs under w_t)"
        )
    return (
        f"attacker (the server): {len(set(data.aux.speakers))} auxiliary speakers ({len(data.aux)} "
        f"utterances), disjoint from training, at speeds {', '.join(f'{f:g}' for f in config.speeds)} "
        f"({len(set(aux.speakers))} voices); "
        + (
            f"{config.shadow_clients} shadow clients of {shadow_size} utterances per round, "
            if shadow_size
            else "no shadow clients, "
        )
        + f"{n_rounds} rounds; views (feature set: top-k client directions per round, 0 = all values; "
        "log-odds averaged over the classifier views"
        + (
            "; the probe's and the classifier views' per-client scores rank-averaged"
            if ranked == ["the classifier views'", "the probe's"]
            else f"; {', '.join(ranked[:-1])} and {ranked[-1]} per-client scores rank-averaged"
            if len(ranked) > 1
            else ""
        )
        + "): "
        + ", ".join(described)
        + (f"; classifier: {config.classifier}" if views else "")
    )


def _scored(
    r: int,
    ids: list[int],
    scores: dict[str, np.ndarray],
    truths: list[tuple[int, bool]],
    relabelling: int = -1,
) -> list[Scored]:
    """One round's `Scored` items: client i gets the i-th value of each view's scores."""
    return [
        Scored(r, c, *(float(scores[f][i]) for f in SCORE_FIELDS), lab, mix, relabelling)
        for i, (c, (lab, mix)) in enumerate(zip(ids, truths, strict=True))
    ]


def project_views(
    shadow: dict[str, np.ndarray], real: dict[str, np.ndarray], views: tuple[tuple[str, int], ...]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(shadow, real) features of one round for every view (feature set, k): projected on the top k
    principal directions of the round's real features (k = 0: unchanged), each population centred."""
    out = []
    for name in dict.fromkeys(n for n, _ in views):
        ks = [k for n, k in views if n == name]
        top = client_subspace(
            real[name], max(ks)
        )  # one SVD per feature set; a smaller k is its first columns
        for k in ks:
            basis = None if k == 0 or top is None else top[:, :k]
            out.append((project(shadow[name], basis), project(real[name], basis)))
    return out


def view_log_odds(
    views: list[tuple[np.ndarray, np.ndarray]], labels: np.ndarray, config: GenderAttackConfig
) -> np.ndarray:
    """Mean over the views of the real clients' log-odds from a classifier fitted on the shadows' labels."""
    return np.mean(
        [log_odds(fit_classifier(ps, labels, config.classifier, config.seed), pr) for ps, pr in views], axis=0
    )


def _aggregate_score(
    shadow: dict[str, np.ndarray],
    labels: np.ndarray,
    maps: dict[str, FeatureMap],
    aggregate: np.ndarray,
    config: GenderAttackConfig,
) -> float:
    """P(female) of one round's aggregate update [P]: one update has no client population to take a
    subspace from, so one classifier per feature set on all its values, their log-odds averaged."""
    odds = [
        log_odds(fit_classifier(shadow[name], labels, config.classifier, config.seed), fmap(aggregate[None]))
        for name, fmap in maps.items()
    ]
    return float(_sigmoid(np.mean(odds)))  # each entry holds the one aggregate's log-odds


def _views_by_set(views: tuple[tuple[str, int], ...]) -> list[tuple[str, list[int]]]:
    return [(name, [k for n, k in views if n == name]) for name in dict.fromkeys(n for n, _ in views)]


def log_odds(classifier: Pipeline, features: np.ndarray) -> np.ndarray:
    """log P(female) - log P(male) of each row, clipped to +-30 (a sure classifier gives +-inf)."""
    p = np.clip(classifier.predict_proba(features)[:, 1], 1e-13, 1 - 1e-13)
    return np.log(p) - np.log1p(-p)


def client_scores(items: list[Scored]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(client ids, score in [0, 1], label) from `Scored` items: each view's score averaged over the
    client's rounds, then `combine_scores` (all-nan views: absent)."""
    ids = sorted({t.client for t in items})
    parts = []
    for field in SCORE_FIELDS:
        mean = np.array([np.mean([getattr(t, field) for t in items if t.client == c]) for c in ids])
        parts.append(None if np.isnan(mean).all() else mean)
    label = np.array([next(t.label for t in items if t.client == c) for c in ids])
    return np.array(ids), combine_scores(*parts), label


def _score_note(single: list[Scored]) -> str:
    present = (
        [not np.isnan(getattr(single[0], f)) for f in SCORE_FIELDS]
        if single
        else [True] + [False] * (len(SCORE_FIELDS) - 1)
    )
    names = [
        n
        for n, on in zip(
            (
                "the classifier views' mean log-odds",
                "the probe's mean score",
                "the pitch view's mean score",
                "the activation-pitch view's mean score",
                "the reconstruction view's mean score",
            ),
            present,
            strict=True,
        )
        if on
    ]
    if len(names) > 1:
        listed = ", ".join(names[:-1]) + " and " + names[-1]
        return (
            f"score: the mean of {('two', 'three', 'four', 'five')[len(names) - 2]} ranks among the clients "
            f"(scaled to [0, 1]): {listed} over the client's rounds; threshold 0.5 (the median client)"
        )
    if not present[0]:
        return f"score: sigmoid of {names[0]} over the client's rounds; threshold 0.5 (the mean)"
    return "score: P(female) from the mean log-odds over the client's rounds; threshold 0.5"


def _per_client_rows(
    single: list[Scored], controls: list[Scored], config: GenderAttackConfig, observed: str
) -> list[AttackRow]:
    mixed = sorted({t.client for t in single if t.mixed})
    undecided = sorted({t.client for t in single if t.label < 0})
    notes = []
    if mixed:
        notes.append(f"clients {mixed} hold speakers of both genders: labelled by majority (flagged)")
    if undecided:
        notes.append(f"clients {undecided} have no majority gender (tie or unknown) and are left out")
    known = [t for t in single if t.label >= 0]
    ids, score, label = client_scores(known)
    n_rounds = len({t.round for t in known})
    combined = scored_row(
        "gender: per-client updates, all rounds combined",
        observed,
        score,
        label,
        threshold=0.5,
        bootstrap=config.bootstrap,
        seed=config.seed,
        notes=notes + [f"{_score_note(known)}; {n_rounds} rounds; one score per client"],
        party="server",
    )
    rounds, groups, scores, labels = [], [], [], []
    for r in sorted({t.round for t in known}):
        ids_r, score_r, label_r = client_scores([t for t in known if t.round == r])
        rounds += [r] * len(ids_r)
        groups += ids_r.tolist()
        scores += score_r.tolist()
        labels += label_r.tolist()
    rounds, groups, scores, labels = (np.array(v) for v in (rounds, groups, scores, labels))
    per_round = scored_row(
        "gender: per-client update, single rounds",
        observed,
        scores,
        labels,
        threshold=0.5,
        groups=groups,
        bootstrap=config.bootstrap,
        seed=config.seed,
        notes=["one score per client and round; the bootstrap resamples clients"],
        party="server",
    )
    per_round.per_round = _per_round(rounds, scores, labels)
    combined.per_round = per_round.per_round
    ctrl = [t for t in controls if t.label >= 0]
    cscore, clabel, cgroup = [], [], []
    for k in sorted({t.relabelling for t in ctrl}):  # each relabelling combined on its own, then pooled
        ids_k, score_k, label_k = client_scores([t for t in ctrl if t.relabelling == k])
        cscore += score_k.tolist()
        clabel += label_k.tolist()
        cgroup += ids_k.tolist()
    spread = _single_relabelling_aucs(ctrl)
    control = scored_row(
        "gender: shuffled shadow labels (control)",
        observed,
        np.array(cscore),
        np.array(clabel),
        threshold=0.5,
        groups=np.array(cgroup),
        bootstrap=config.bootstrap,
        seed=config.seed,
        control=True,
        notes=[
            f"{config.control_repeats} relabellings, each independent of gender and speaker and kept over "
            "all rounds, scored as the attack (classifier views: the shadow voices relabelled, balanced "
            "within each auxiliary speaker, and the classifiers refitted; probe: a random half of every "
            "auxiliary voice's utterances called female"
            + (
                "; pitch: a random target per voice, made orthogonal to the log speed within each auxiliary "
                "speaker, and the direction refitted"
                if any(not np.isnan(t.pitch) for t in single[:1])
                else ""
            )
            + (
                "; activation-pitch: a random target per auxiliary utterance, made orthogonal to the log "
                "speed within each auxiliary speaker, and the direction refitted"
                if any(not np.isnan(t.activation_pitch) for t in single[:1])
                else ""
            )
            + "): AUC should be about 0.5"
            + (
                f"; single relabellings give AUC {np.mean(spread):.2f} +- {np.std(spread):.2f} (mean +- sd "
                f"of {len(spread)}), a spread the client bootstrap interval does not include"
                if spread
                else ""
            )
        ],
        party="server",
    )
    return [combined, per_round, control]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, dtype=np.float64), -30, 30)))


def _single_relabelling_aucs(controls: list[Scored]) -> list[float]:
    """AUC of each relabelling on its own (combined over rounds): one random direction's stray."""
    from sklearn.metrics import roc_auc_score

    out = []
    for k in sorted({t.relabelling for t in controls}):
        _, score, labels = client_scores([t for t in controls if t.relabelling == k])
        if labels.size and labels.min() != labels.max():
            out.append(float(roc_auc_score(labels, score)))
    return out


def _per_round(rounds: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> list[dict]:
    """AUC and balanced accuracy (at P >= 0.5) of each attacked round on its own."""
    from sklearn.metrics import roc_auc_score

    from privfl.attacks.metrics import balanced_accuracy

    out = []
    for r in np.unique(rounds):
        m = rounds == r
        both = labels[m].min() != labels[m].max()
        out.append(
            {
                "round": int(r),
                "n": int(m.sum()),
                "auc": float(roc_auc_score(labels[m], scores[m])) if both else None,
                "balanced_accuracy": balanced_accuracy(scores[m] >= 0.5, labels[m]) if both else None,
            }
        )
    return out


def _aggregate_row(per_round: list[dict], config: GenderAttackConfig) -> AttackRow:
    name = "gender: aggregate update"
    if not per_round:
        return AttackRow(name, "aggregate", reason="w_{t+1} of the attacked rounds was not recorded")
    labels = np.array([int(p["female_share"] > 0.5) for p in per_round])
    scores = np.array([p["score"] for p in per_round])
    row = scored_row(
        name,
        "aggregate",
        scores,
        labels,
        threshold=0.5,
        bootstrap=config.bootstrap,
        seed=config.seed,
        notes=[
            "one score per round: the classifier applied to w_{t+1} - w_t; label: the participants' "
            "majority gender (by samples)"
        ],
    )
    if row.metrics is None:
        row.reason = (
            "every attacked round's participants have the same majority gender, so the aggregate carries one "
            "label; per-round scores and female shares are listed"
        )
    row.per_round = per_round
    return row


def _default_shadow_size(
    observed: ObservedRun, rounds: list[int], data: PreparedData, config: GenderAttackConfig
) -> int:
    sizes = np.concatenate([observed.run.load_updates(r)["num_samples"] for r in rounds])
    per_speaker = min(int(np.sum(np.asarray(data.aux.speakers) == s)) for s in set(data.aux.speakers))
    # one speed: leave room to draw different subsets of one speaker; several: the voices differ already
    cap = per_speaker if len(config.speeds) > 1 else max(1, (3 * per_speaker) // 4)
    return int(max(1, min(np.median(sizes), cap))) if sizes.size else cap


def _check_gender_labels(observed: ObservedRun, rounds: list[int]) -> None:
    seen: list[tuple[str, ...]] = []
    for r in rounds:
        seen.extend(observed.observe(r)[1].genders)
    if seen and all(client_label(g)[0] < 0 for g in seen):
        genders = sorted({g for gs in seen for g in gs})
        if {"female", "male"} & set(genders):
            # the labels exist, but every client holds as many female as male speakers' utterances
            raise AttackError(
                f"no client of {observed.run.path} has a gender to infer: each holds as many female as "
                f"male speakers (data.partition = {observed.config.data.partition!r}); the gender "
                "attack needs clients of one speaker each, e.g. privfl train --partition by-speaker "
                "--record-updates ..."
            )
        raise AttackError(
            f"the corpus of {observed.run.path} ({observed.config.data.dataset}) has no usable gender labels "
            "for "
            f"its clients (genders seen: {', '.join(genders) or 'none'}); the gender attack needs a corpus "
            "with female/male speakers, e.g. the built-in synthetic corpus, IEMOCAP or CREMA-D"
        )
