"""Gender (attribute) inference from client updates, after Feng et al. 2021 (arXiv 2112.13416).

For an observed round the attacker takes w_t, trains shadow clients on a public auxiliary corpus
with known speaker genders (speakers disjoint from training), and fits a classifier from the
shadow updates' features to the shadow speaker's gender. It then applies the classifier to each
real client's update. Features: the first layer's update (the layer that sees the log-Mel input,
`conv.*` for the CNN, `lstm.weight_ih_l0`/`lstm.bias_ih_l0` for the LSTM) or all layers, each update
scaled to unit L2 norm (client sizes differ) and then standardised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from privfl.attacks.observe import NOT_OBSERVED, ObservedRun, check_data_matches
from privfl.attacks.result import AttackResult, AttackRow, scored_row
from privfl.attacks.shadow import (
    check_auxiliary,
    client_trainer,
    local_updates,
    sample_shadow_clients,
    shadow_client_data,
)
from privfl.data.dataset import PreparedData
from privfl.errors import AttackError, ConfigError
from privfl.models import build_model, canonical_parameters, layer_slices

FEATURE_SETS = ("first-layer", "all-layers")
CLASSIFIERS = ("logreg", "mlp")
POSITIVE = "female"
"""The class a score of 1 means; the AUC does not depend on which gender is called positive."""

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class GenderAttackConfig:
    """Knobs of the gender attack; `seed` seeds shadow sampling, classifiers, control and bootstrap."""

    rounds: tuple[int, ...] = ()  # empty: up to max_rounds recorded rounds, evenly spaced, first and last
    max_rounds: int = 3
    shadow_clients: int = 32  # per attacked round, genders alternating
    shadow_size: int = 0  # utterances per shadow client; 0: the real clients' median, capped by the aux data
    features: str = "first-layer"
    classifier: str = "logreg"
    control_repeats: int = 20  # shuffled-label relabellings per round for the control
    bootstrap: int = 1000
    seed: int = 0

    def validate(self) -> GenderAttackConfig:
        if self.features not in FEATURE_SETS:
            raise ConfigError(f"gender features {self.features!r} is not one of {', '.join(FEATURE_SETS)}")
        if self.classifier not in CLASSIFIERS:
            raise ConfigError(f"gender classifier {self.classifier!r} is not one of {', '.join(CLASSIFIERS)}")
        if self.shadow_clients < 4:
            raise ConfigError(
                f"shadow_clients must be >= 4 (two per gender at least), got {self.shadow_clients}"
            )
        if self.control_repeats < 1:
            raise ConfigError(f"control_repeats must be >= 1, got {self.control_repeats}")
        if self.shadow_size < 0 or self.max_rounds < 1 or self.bootstrap < 0 or self.seed < 0:
            raise ConfigError(
                "shadow_size, bootstrap and seed must be >= 0 and max_rounds >= 1, got "
                f"{self.shadow_size}, {self.bootstrap}, {self.seed}, {self.max_rounds}"
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


def feature_columns(model: nn.Module, which: str) -> np.ndarray:
    """Indices into the flat parameter vector that the attack reads (int64 [F])."""
    slices = layer_slices(model)
    if which == "all-layers":
        return np.arange(sum(s.stop - s.start for s in slices.values()), dtype=np.int64)
    if which == "first-layer":
        return np.concatenate([np.arange(slices[n].start, slices[n].stop) for n in first_layer_names(model)])
    raise ConfigError(f"feature set {which!r} is not one of {', '.join(FEATURE_SETS)}")


def update_features(deltas: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """[k, P] updates -> [k, F] float64 features, each row scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(deltas, dtype=np.float64)[:, columns]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


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


# --- the attack on a run --------------------------------------------------------------------------
def gender_preflight(observed: ObservedRun, data: PreparedData, config: GenderAttackConfig) -> list[int]:
    """Every check the gender attack needs, before it computes anything; returns the rounds to attack."""
    rounds = observed.select_rounds(config.rounds, config.max_rounds)
    _check_gender_labels(observed, rounds)
    check_auxiliary(data.aux)
    batch = observed.config.train.batch_size
    size = config.shadow_size or _default_shadow_size(observed, rounds, data)
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
    """The shadow-client gender attack on the selected rounds: per-client, control and aggregate rows."""
    config = (config or GenderAttackConfig()).validate()
    started = time.perf_counter()
    cfg = observed.config
    rounds = gender_preflight(observed, data, config)
    model = build_model(cfg.model, data.n_mels)
    columns = feature_columns(model, config.features)
    privacy = observed.summary.get("privacy")
    size = config.shadow_size or _default_shadow_size(observed, rounds, data)

    per_client: list[tuple[int, int, float, int, bool]] = []  # round, client, score, label, mixed
    controls: list[tuple[int, int, float, int, bool, int]] = []  # the same, plus the relabelling index
    per_round_agg: list[dict] = []
    for j, r in enumerate(rounds):
        obs, truth = observed.observe(r)
        rng = np.random.default_rng([config.seed, r, 0x6E0D])
        shadows = sample_shadow_clients(data.aux, config.shadow_clients, size, rng)
        report = (
            (lambda d, t, j=j: progress("gender: shadow clients", j * t + d, len(rounds) * t))
            if progress
            else None
        )
        clients = shadow_client_data(data.aux, shadows)
        trainer = client_trainer(cfg, data, clients, privacy)
        s_deltas = local_updates(trainer, clients, obs.weights, r, report)
        xs = update_features(s_deltas, columns)
        ys = np.array([int(s.gender == POSITIVE) for s in shadows])
        clf = fit_classifier(xs, ys, config.classifier, config.seed)
        if obs.deltas is not None and len(obs.deltas):  # user-dp's Poisson sampling can pick nobody
            xr = update_features(obs.deltas, columns)
            truths = [client_label(g) for g in truth.genders]
            ids = truth.client_ids.tolist()
            p = clf.predict_proba(xr)[:, 1]
            per_client += [
                (r, c, float(a), lab, mix) for c, a, (lab, mix) in zip(ids, p, truths, strict=True)
            ]
            # randomised-label control: same features, labels independent of gender and of speaker;
            # several relabellings, because one classifier direction per round is a single random draw
            speakers = np.array([s.speaker for s in shadows])
            for k in range(config.control_repeats):
                control = fit_classifier(
                    xs, shuffled_labels(ys, rng, strata=speakers), config.classifier, config.seed
                )
                pc = control.predict_proba(xr)[:, 1]
                controls += [
                    (r, c, float(a), lab, mix, k) for c, a, (lab, mix) in zip(ids, pc, truths, strict=True)
                ]
        if obs.aggregate is not None and len(truth.client_ids):
            pa = float(clf.predict_proba(update_features(obs.aggregate[None, :], columns))[0, 1])
            labels = [client_label(g)[0] for g in truth.genders]
            n = obs.num_samples.astype(np.float64)
            known = np.array([lab >= 0 for lab in labels], dtype=bool)
            share = float(np.sum(n[known] * np.array(labels)[known]) / max(n[known].sum(), 1.0))
            per_round_agg.append({"round": r, "score": pa, "female_share": share, "clients": len(labels)})

    result = AttackResult(
        "gender",
        str(observed.run.path),
        observed.observed,
        {**asdict(config), "shadow_size": size, "feature_count": int(columns.size), "rounds": rounds},
        config.seed,
    )
    if observed.secure:
        result.rows.append(
            AttackRow(
                "gender: per-client update",
                observed.observed,
                reason=NOT_OBSERVED,
            )
        )
    else:
        result.rows.extend(_per_client_rows(per_client, controls, config, observed.observed))
    result.rows.append(_aggregate_row(per_round_agg, config))
    result.notes.append(
        f"attacker data: {len(set(data.aux.speakers))} auxiliary speakers ({len(data.aux)} utterances), "
        "disjoint "
        f"from training; {config.shadow_clients} shadow clients of {size} utterances per round; "
        f"features: {config.features} ({columns.size} values), classifier: {config.classifier}"
    )
    result.seconds = time.perf_counter() - started
    return result


def _per_client_rows(
    per_client: list, controls: list, config: GenderAttackConfig, observed: str
) -> list[AttackRow]:
    mixed = sorted({row[1] for row in per_client if row[4]})
    undecided = sorted({row[1] for row in per_client if row[3] < 0})
    notes = []
    if mixed:
        notes.append(f"clients {mixed} hold speakers of both genders: labelled by majority (flagged)")
    if undecided:
        notes.append(f"clients {undecided} have no majority gender (tie or unknown) and are left out")

    def row(name: str, items: list, control: bool, row_notes: list[str]) -> AttackRow:
        items = [t for t in items if t[3] >= 0]
        rounds, groups, scores, labels = (np.array([t[k] for t in items]) for k in range(4))
        out = scored_row(
            name,
            observed,
            scores,
            labels,
            threshold=0.5,
            groups=groups,
            bootstrap=config.bootstrap,
            seed=config.seed,
            control=control,
            notes=row_notes,
        )
        out.per_round = _per_round(rounds, scores, labels)
        return out

    single = _single_relabelling_aucs(controls)
    spread = (
        f"; single relabellings give AUC {np.mean(single):.2f} +- {np.std(single):.2f} (mean +- sd of "
        f"{len(single)}), a spread the client bootstrap interval does not include"
        if single
        else ""
    )
    return [
        row("gender: per-client update", per_client, False, notes + ["threshold: P(female) >= 0.5"]),
        row(
            "gender: shuffled shadow labels (control)",
            controls,
            True,
            [
                f"{config.control_repeats} relabellings per round, each independent of gender and speaker: "
                f"AUC should be about 0.5{spread}"
            ],
        ),
    ]


def _single_relabelling_aucs(controls: list) -> list[float]:
    """AUC of each (round, relabelling) on its own: how far one random classifier direction strays."""
    from sklearn.metrics import roc_auc_score

    out = []
    for key in sorted({(t[0], t[5]) for t in controls}):
        items = [t for t in controls if (t[0], t[5]) == key and t[3] >= 0]
        labels = np.array([t[3] for t in items])
        if labels.size and labels.min() != labels.max():
            out.append(float(roc_auc_score(labels, [t[2] for t in items])))
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


def _default_shadow_size(observed: ObservedRun, rounds: list[int], data: PreparedData) -> int:
    sizes = np.concatenate([observed.run.load_updates(r)["num_samples"] for r in rounds])
    per_speaker = min(int(np.sum(np.asarray(data.aux.speakers) == s)) for s in set(data.aux.speakers))
    cap = max(1, (3 * per_speaker) // 4)  # leave room to draw different subsets of one speaker
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
