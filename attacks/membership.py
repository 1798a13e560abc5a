"""Membership inference: was this utterance in the training data (of that client)?

Three attacks, all scored on balanced, seeded member / non-member sets:
  loss threshold (Yeom et al. 2018): a member has lower loss under the final global model;
      score = -loss, threshold = the mean client training loss of the last round (which clients report).
  update alignment: local SGD moves w_t along minus the sum of its members' gradients, so the
      gradient of a member of client k at w_t points along -delta_k more than a non-member's does;
      score = cos(grad loss(w_t; x, y), -delta_k). Also against the aggregate w_{t+1} - w_t, the
      only update the server sees under secure aggregation (membership in the round's federation).
  LiRA (Carlini et al. 2022), behind a flag: shadow federations trained on random halves of a
      candidate pool give, per utterance, Gaussians of its logit-scaled confidence when IN and OUT;
      score = the likelihood ratio of the target model's confidence.
Members are training utterances; non-members are utterances of held-out speakers (validation,
test and auxiliary speakers) - so the attacks also see a speaker shift, which docs/attacks.md discusses.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from privfl.attacks.observe import ObservedRun, Privacy, check_data_matches, unobserved_row
from privfl.attacks.result import AttackResult, AttackRow, scored_row
from privfl.data.dataset import ClientData, PreparedData, SpeechSet
from privfl.errors import AttackError, ConfigError
from privfl.evaluate import Evaluator
from privfl.models import build_model, canonical_parameters, set_flat
from privfl.parallel import PerThread, thread_map

METHODS = ("speaker", "loss", "alignment", "lira")

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class MembershipAttackConfig:
    """Knobs of the membership attacks; `seed` seeds every sample drawn and the bootstrap."""

    methods: tuple[str, ...] = ("speaker", "loss", "alignment")
    rounds: tuple[int, ...] = ()  # alignment: empty means up to max_rounds recorded rounds, evenly spaced
    max_rounds: int = 3
    candidates: int = 40  # alignment: member utterances per client and round (and as many non-members)
    lira_shadows: int = 8  # LiRA: shadow federations (only with "lira" in methods)
    lira_candidates: int = 100  # LiRA: members and as many non-members scored
    speaker_rounds: int = 10  # speaker alignment: recorded rounds, evenly spaced (0: all)
    speaker_utterances: int = 0  # speaker alignment: utterances per speaker in its gradient (0: all)
    bootstrap: int = 1000
    seed: int = 0

    def validate(self) -> MembershipAttackConfig:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"membership method(s) {unknown or '(none)'} not among {', '.join(METHODS)}")
        if self.candidates < 1 or self.lira_candidates < 1 or self.max_rounds < 1:
            raise ConfigError(
                f"candidates, lira_candidates and max_rounds must be >= 1, got {self.candidates}, "
                f"{self.lira_candidates}, {self.max_rounds}"
            )
        if "lira" in self.methods and (self.lira_shadows < 2 or self.lira_shadows % 2):
            raise ConfigError(
                f"LiRA needs an even number >= 2 of shadow federations (half IN, half OUT per utterance), "
                f"got {self.lira_shadows}; e.g. --lira-shadows 8"
            )
        if min(self.bootstrap, self.seed, self.speaker_rounds, self.speaker_utterances) < 0:
            raise ConfigError(
                "bootstrap, seed, speaker_rounds and speaker_utterances must be >= 0, got "
                f"{self.bootstrap}, {self.seed}, {self.speaker_rounds}, {self.speaker_utterances}"
            )
        return self


# --- pure pieces ----------------------------------------------------------------------------------
def heldout_pool(data: PreparedData) -> SpeechSet:
    """Non-members: every utterance of the validation, test and auxiliary speakers."""
    parts = [s for s in (data.val, data.test, data.aux) if len(s)]
    return SpeechSet.concat(parts)


def balanced_sets(
    members: SpeechSet, nonmembers: SpeechSet, rng: np.random.Generator, limit: int = 0
) -> tuple[SpeechSet, np.ndarray]:
    """Equal numbers of members and non-members (at most `limit` each if > 0), drawn with rng.

    Returns the candidates (members first) and labels (1 = member).
    """
    n = min(len(members), len(nonmembers))
    if limit > 0:
        n = min(n, limit)
    if n == 0:
        raise AttackError(f"need members and non-members, got {len(members)} and {len(nonmembers)}")
    mi = np.sort(rng.choice(len(members), size=n, replace=False))
    ni = np.sort(rng.choice(len(nonmembers), size=n, replace=False))
    cands = SpeechSet.concat([members.take(mi), nonmembers.take(ni)])
    return cands, np.r_[np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)]


def gradient_cosines(
    model: nn.Module,
    weights: np.ndarray,
    data: SpeechSet | ClientData,
    directions: np.ndarray,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """cos(grad of the cross-entropy at `weights` for each sample, each direction): float64 [n, k].

    The per-sample gradient is computed one sample at a time (the models slice by the batch's
    longest utterance, which rules out vmap), samples in parallel on one model copy per core, and
    only its dot products are kept, so memory stays [k, P] per core whatever n is.
    """
    set_flat(model, weights)
    model.eval()
    replicas = PerThread(lambda: copy.deepcopy(model))
    d = torch.from_numpy(np.asarray(directions, dtype=np.float32))
    d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-30)

    def one(i: int) -> np.ndarray:
        m = replicas.get()
        frames = int(data.lengths[i])
        logits = m(data.x[i : i + 1, :frames], data.lengths[i : i + 1])
        params = [p for _, p in canonical_parameters(m)]
        grads = torch.autograd.grad(nn.functional.cross_entropy(logits, data.y[i : i + 1]), params)
        g = torch.cat([t.reshape(-1) for t in grads])
        return (d @ g / g.norm().clamp_min(1e-30)).double().numpy()

    n = int(data.y.shape[0])
    return np.stack(thread_map(one, n, progress)) if n else np.zeros((0, d.shape[0]), dtype=np.float64)


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """LiRA's statistic: log(p_y / (1 - p_y)) of the true class, computed stably from logits [n, c]."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    zy = z[np.arange(len(y)), y]
    others = z.copy()
    others[np.arange(len(y)), y] = -np.inf
    m = others.max(axis=1)
    return zy - (m + np.log(np.exp(others - m[:, None]).sum(axis=1)))


def lira_score(target: np.ndarray, conf: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Online LiRA with one global variance per side (Carlini et al. 2022, for few shadows).

    target [n]: statistic under the attacked model; conf [s, n]: under each shadow model;
    inside [s, n]: whether the utterance was in that shadow's training data.
    """
    conf = np.asarray(conf, dtype=np.float64)
    inside = np.asarray(inside, dtype=bool)
    mu_in = np.array([conf[inside[:, j], j].mean() for j in range(conf.shape[1])])
    mu_out = np.array([conf[~inside[:, j], j].mean() for j in range(conf.shape[1])])
    sd_in = max(float(np.std(conf[inside] - np.broadcast_to(mu_in, conf.shape)[inside])), 1e-6)
    sd_out = max(float(np.std(conf[~inside] - np.broadcast_to(mu_out, conf.shape)[~inside])), 1e-6)
    log_in = -0.5 * ((target - mu_in) / sd_in) ** 2 - np.log(sd_in)
    log_out = -0.5 * ((target - mu_out) / sd_out) ** 2 - np.log(sd_out)
    return log_in - log_out


# --- the attacks on a run -------------------------------------------------------------------------
def membership_attack(
    observed: ObservedRun,
    data: PreparedData,
    config: MembershipAttackConfig | None = None,
    progress: Progress | None = None,
) -> AttackResult:
    """The configured membership attacks: one row per attack variant, plus the mismatched-update control."""
    config = (config or MembershipAttackConfig()).validate()
    started = time.perf_counter()
    rounds = membership_preflight(observed, data, config)
    pool = heldout_pool(data)
    privacy = observed.privacy
    result = AttackResult(
        "membership",
        str(observed.run.path),
        observed.observed,
        {**asdict(config), "rounds": rounds},
        config.seed,
    )
    result.notes.append(
        f"members: training utterances; non-members: utterances of the {len(set(pool.speakers))} held-out "
        "speakers (val, test, aux), never trained on; sets balanced and drawn with the attack seed"
    )
    if privacy is not None:
        result.notes.append(
            f"the run claims ({privacy.epsilon:.3g}, {privacy.delta:.3g})-DP "
            f"({privacy.unit or privacy.mode}); "
            "rows it covers are checked against TPR <= e^eps FPR + delta"
        )
    if "speaker" in config.methods:
        result.rows.extend(_speaker_rows(observed, data, pool, config, privacy, progress))
    if "loss" in config.methods:
        result.rows.append(_loss_row(observed, data, pool, config, privacy))
    if "alignment" in config.methods:
        result.rows.extend(_alignment_rows(observed, data, pool, rounds, config, privacy, progress))
    if "lira" in config.methods:
        result.rows.append(_lira_row(observed, data, pool, config, privacy, progress))
    result.seconds = time.perf_counter() - started
    return result


def membership_preflight(
    observed: ObservedRun, data: PreparedData, config: MembershipAttackConfig
) -> list[int]:
    """Every check the membership attacks need, before they compute anything; returns the alignment rounds."""
    if "alignment" in config.methods and not observed.rounds:
        raise AttackError(
            f"{observed.run.path} has no recorded client updates, which the alignment attack reads; retrain "
            "with --record-updates, or run only the loss attack (--method loss)"
        )
    if "lira" in config.methods and observed.config.train.mode == "user-dp":
        raise AttackError(
            "LiRA's shadow federations reproduce client training but not user-level DP's server-side "
            "clipping and noise; run it on fedavg or dp runs, or drop --lira"
        )
    if len(data.val) + len(data.test) + len(data.aux) == 0:
        raise AttackError("the run has no held-out speakers (val, test, aux) to draw non-members from")
    rounds = observed.select_rounds(config.rounds, config.max_rounds) if "alignment" in config.methods else []
    if observed.rounds:
        check_data_matches(observed, data, rounds[0] if rounds else observed.rounds[0])
    return rounds


# --- speaker-level membership: was this speaker one of the clients? ---------------------------------
def speaker_groups(
    members: SpeechSet, nonmembers: SpeechSet
) -> tuple[list[SpeechSet], np.ndarray, list[str]]:
    """One SpeechSet per speaker (training speakers first, then held-out ones), labels 1 = a client's."""
    sets, labels, names = [], [], []
    for label, pool in ((1, members), (0, nonmembers)):
        speakers = np.asarray(pool.speakers)
        for s in sorted(set(pool.speakers)):
            sets.append(pool.take(np.flatnonzero(speakers == s)))
            labels.append(label)
            names.append(s)
    return sets, np.array(labels, dtype=np.int64), names


def speaker_gradients(model: nn.Module, weights: np.ndarray, speakers: list[SpeechSet]) -> np.ndarray:
    """Gradient of each speaker's mean cross-entropy at `weights`: float32 [speakers, P].

    Speakers run in parallel, one per core, each worker on its own copy of the model (torch
    single-threaded there, so a speaker's gradient is the same whichever worker computes it).
    """
    set_flat(model, weights)
    model.eval()
    replicas = PerThread(lambda: copy.deepcopy(model))

    def one(i: int) -> np.ndarray:
        m = replicas.get()
        params = [p for _, p in canonical_parameters(m)]
        s = speakers[i]
        loss = nn.functional.cross_entropy(m(s.x, s.lengths), s.y)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).numpy()

    return np.stack(thread_map(one, len(speakers)))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos of every row of a [n, P] with every row of b [k, P]: float64 [n, k]."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-30)
    return a @ b.T


def _speaker_rows(observed, data, pool, config, privacy, progress) -> list[AttackRow]:
    """Speaker-level membership from the final model, the first and final models, the aggregates and the
    per-client updates: the unit user-level DP protects when every client holds one speaker."""
    from privfl.models import initial_weights

    speakers, labels, names = speaker_groups(data.train, pool)
    evaluator = Evaluator(observed.config, data.n_mels)
    final = observed.final_weights()
    w0 = initial_weights(observed.config.model, data.n_mels, observed.config.seed)
    loss_final = np.array([evaluator.predict(final, s)[1].mean() for s in speakers])
    loss_first = np.array([evaluator.predict(w0, s)[1].mean() for s in speakers])
    one_each = all(len(c.speakers) <= 1 for c in data.clients)
    covered = privacy is not None and (privacy.mode == "user-dp" and one_each)
    dp = (privacy.epsilon, privacy.delta) if covered else None
    dp_note = []
    if privacy is not None and not covered:
        dp_note = [
            "the run's DP unit is not a speaker (a speaker is many records, or a client holds several "
            "speakers): no bound is checked on this row"
        ]
    common = dict(bootstrap=config.bootstrap, seed=config.seed)
    n_in, n_out = int(labels.sum()), int((1 - labels).sum())
    who = f"{n_in} training speakers (members) against {n_out} held-out speakers (val, test, aux)"
    rows = [
        scored_row(
            "membership: speaker, final model loss",
            "final global model",
            -loss_final,
            labels,
            dp=dp,
            notes=[f"score: minus the speaker's mean loss under the final model; {who}"] + dp_note,
            party="reader of the released model",
            **common,
        ),
        scored_row(
            "membership: speaker, loss drop from w_0",
            "first and final global model",
            loss_first - loss_final,
            labels,
            dp=dp,
            notes=[
                "score: the speaker's mean loss under w_0 (the server's initial model) minus under the "
                f"final model: a member's drops more, whatever its own difficulty; {who}"
            ]
            + dp_note,
            **common,
        ),
    ]
    model = build_model(observed.config.model, data.n_mels)
    agg, own = [], []
    rounds = observed.select_rounds((), config.speaker_rounds) if observed.rounds else []
    rng = np.random.default_rng([config.seed, 0x5BEA])
    cap = config.speaker_utterances
    probes = [
        s.take(np.sort(rng.choice(len(s), size=cap, replace=False))) if 0 < cap < len(s) else s
        for s in speakers
    ]
    for j, r in enumerate(rounds):
        obs, _ = observed.observe(r)
        if obs.aggregate is None and (obs.deltas is None or not len(obs.deltas)):
            continue
        grads = -speaker_gradients(model, obs.weights, probes)  # the direction SGD moves for them
        if obs.aggregate is not None:
            agg.append(_cosines(grads, obs.aggregate[None, :])[:, 0])
        if obs.deltas is not None and len(obs.deltas):
            own.append(_cosines(grads, obs.deltas).max(axis=1))
        if progress is not None:
            progress("membership: speaker gradients", j + 1, len(rounds))
    if agg:
        rows.append(
            scored_row(
                "membership: speaker, aggregate alignment",
                "aggregate",
                np.mean(agg, axis=0),
                labels,
                dp=dp,
                notes=[
                    f"score: mean over {len(agg)} rounds of cos(-grad of the speaker's mean loss on up to "
                    f"{cap or 'all'} of its utterances at w_t, w_(t+1) - w_t); {who}"
                ]
                + dp_note,
                **common,
            )
        )
    if observed.secure:
        rows.append(unobserved_row("membership: speaker, per-client update alignment", observed))
    elif own:
        rows.append(
            scored_row(
                "membership: speaker, per-client update alignment",
                observed.observed,
                np.mean(own, axis=0),
                labels,
                notes=[
                    f"score: mean over {len(own)} rounds of the largest cos(-grad of the speaker's mean "
                    f"loss at w_t, delta_k) over the round's clients; {who}"
                ]
                + (
                    ["user-level DP noises at the server: the updates it receives are not covered"]
                    if dp
                    else []
                ),
                **common,
            )
        )
    return rows


def _dp_for(privacy: Privacy | None, per_client: bool) -> tuple[float, float] | None:
    """The (eps, delta) a row's observation is covered by, if any.

    Record-level DP-SGD noises each client's update on the client, so it covers everything the
    server sees. User-level DP-FedAvg clips and noises at the server: it covers the aggregate and
    the model, but not the individual updates an honest-but-curious server receives before noising.
    """
    if privacy is None:
        return None
    if privacy.record_level or not per_client:
        return privacy.epsilon, privacy.delta
    return None


def _loss_row(observed, data, pool, config, privacy) -> AttackRow:
    rng = np.random.default_rng([config.seed, 0x1055])
    cands, labels = balanced_sets(data.train, pool, rng)
    weights = observed.final_weights()
    _, losses = Evaluator(observed.config, data.n_mels).predict(weights, cands)
    metrics = observed.run.metrics()
    tau = float(metrics[-1]["train_loss"]) if metrics and "train_loss" in metrics[-1] else None
    return scored_row(
        "membership: loss threshold (final model)",
        "final global model",
        -losses,
        labels,
        threshold=None if tau is None else -tau,
        bootstrap=config.bootstrap,
        seed=config.seed,
        dp=_dp_for(privacy, per_client=False),
        party="reader of the released model",
        notes=[
            f"threshold: loss <= {tau:.4g}, the clients' mean training loss in the last round (Yeom et al.)"
            if tau is not None
            else "threshold: oracle (no training loss recorded)"
        ],
    )


def _alignment_rows(observed, data, pool, rounds, config, privacy, progress) -> list[AttackRow]:
    model = build_model(observed.config.model, data.n_mels)
    own: list[tuple[int, int, float, int]] = []  # round, client, score, label
    other: list[tuple[int, int, float, int]] = []
    agg: list[tuple[int, float, int]] = []
    for j, r in enumerate(rounds):
        obs, _ = observed.observe(r)
        rng = np.random.default_rng([config.seed, r, 0xA119])
        ids = obs.client_ids.tolist()
        if not ids:  # user-dp's Poisson sampling can pick nobody: nothing to be a member of
            continue
        member_sets = []
        for cid in ids:
            c = data.clients[cid]
            pick = np.sort(
                rng.choice(c.num_samples, size=min(config.candidates, c.num_samples), replace=False)
            )
            member_sets.append(SpeechSet(c.x[pick], c.lengths[pick], c.y[pick], (), (), ()))
        n_pool = min(len(pool), max(len(m) for m in member_sets) * 4)
        pool_idx = np.sort(rng.choice(len(pool), size=n_pool, replace=False))
        nonmembers = pool.take(pool_idx)
        directions = []
        if obs.deltas is not None:
            directions.append(-obs.deltas)
        if obs.aggregate is not None:
            directions.append(-obs.aggregate[None, :])
        if not directions:
            continue
        dirs = np.concatenate(directions)
        everything = _concat_xy(member_sets + [nonmembers])
        report = (
            (lambda d, t, j=j: progress("membership: per-sample gradients", j * t + d, len(rounds) * t))
            if progress
            else None
        )
        cos = gradient_cosines(model, obs.weights, everything, dirs, report)
        offsets = np.cumsum([0] + [len(m) for m in member_sets])
        non_cos = cos[offsets[-1] :]
        k = len(ids)
        for i, cid in enumerate(ids):
            mem = cos[offsets[i] : offsets[i + 1]]
            nn_pick = rng.choice(len(nonmembers), size=len(mem), replace=False)
            if obs.deltas is not None:
                own += [(r, cid, s, 1) for s in mem[:, i]] + [(r, cid, s, 0) for s in non_cos[nn_pick, i]]
                if k > 1:
                    o = (i + 1) % k  # the next client's update: same round, same model, other data
                    other += [(r, cid, s, 1) for s in mem[:, o]] + [
                        (r, cid, s, 0) for s in non_cos[nn_pick, o]
                    ]
        if obs.aggregate is not None:
            all_mem = cos[: offsets[-1], -1]
            n = min(len(all_mem), len(non_cos))
            agg += [(r, s, 1) for s in rng.choice(all_mem, size=n, replace=False)]
            agg += [(r, s, 0) for s in rng.choice(non_cos[:, -1], size=n, replace=False)]
    rows = []
    name = "membership: update alignment (per-client update)"
    if observed.secure:
        rows.append(unobserved_row(name, observed))
    else:
        per_client_dp = _dp_for(privacy, per_client=True)
        notes = [
            f"score: cos(grad at w_t, -delta_k); up to {config.candidates} members of client k per round and "
            "as many held-out utterances"
        ]
        if privacy is not None and per_client_dp is None:
            notes.append(
                "user-level DP noises at the server: the per-client updates the server sees are not covered"
            )
        rows.append(_rows_from(name, observed.observed, own, config, per_client_dp, notes))
        if other:
            rows.append(
                _rows_from(
                    "membership: alignment with another client's update (control)",
                    observed.observed,
                    other,
                    config,
                    None,
                    [
                        "client k's members and non-members scored against client k+1's update: what is "
                        "left is "
                        "federation-level and speaker-shift signal, not client k's membership"
                    ],
                    control=True,
                )
            )
    if agg:
        rows.append(
            _rows_from(
                "membership: update alignment (aggregate update)",
                "aggregate",
                [(r, -1, s, lab) for r, s, lab in agg],
                config,
                _dp_for(privacy, per_client=False),
                [
                    "score: cos(grad at w_t, -(w_{t+1} - w_t)); members: any participant's utterances of "
                    "that round"
                ],
                grouped=False,
            )
        )
    else:
        rows.append(
            AttackRow(
                "membership: update alignment (aggregate update)",
                "aggregate",
                reason="w_{t+1} of the attacked rounds was not recorded",
            )
        )
    return rows


def _rows_from(name, observed, items, config, dp, notes, control=False, grouped=True) -> AttackRow:
    rounds = np.array([t[0] for t in items])
    groups = np.array([t[1] for t in items])
    scores = np.array([t[2] for t in items])
    labels = np.array([t[3] for t in items])
    row = scored_row(
        name,
        observed,
        scores,
        labels,
        groups=groups if grouped else None,
        bootstrap=config.bootstrap,
        seed=config.seed,
        dp=dp,
        control=control,
        notes=notes,
    )
    row.per_round = _per_round_auc(rounds, scores, labels)
    return row


def _per_round_auc(rounds, scores, labels) -> list[dict]:
    from sklearn.metrics import roc_auc_score

    out = []
    for r in np.unique(rounds):
        m = rounds == r
        ok = labels[m].min() != labels[m].max()
        out.append(
            {
                "round": int(r),
                "n": int(m.sum()),
                "auc": float(roc_auc_score(labels[m], scores[m])) if ok else None,
            }
        )
    return out


def _concat_xy(parts: list[SpeechSet]) -> SpeechSet:
    return SpeechSet(
        torch.cat([p.x for p in parts]),
        torch.cat([p.lengths for p in parts]),
        torch.cat([p.y for p in parts]),
        (),
        (),
        (),
    )


def _lira_row(observed, data, pool, config, privacy, progress) -> AttackRow:
    from privfl.attacks.shadow import shadow_federation

    rng = np.random.default_rng([config.seed, 0x11AA])
    cands, labels = balanced_sets(data.train, pool, rng, limit=config.lira_candidates)
    evaluator = Evaluator(observed.config, data.n_mels)
    target_logits, _ = evaluator.predict(observed.final_weights(), cands)
    target = logit_confidence(target_logits, cands.y.numpy())
    # shadow population: the candidates plus the rest of the train and held-out utterances
    population = SpeechSet.concat([data.train, pool])
    cand_ids = {u: i for i, u in enumerate(cands.ids)}
    in_pop = np.array([cand_ids.get(u, -1) for u in population.ids])
    s = config.lira_shadows
    # each candidate is IN for exactly half of the shadows (balanced, as Carlini et al. do)
    inside = np.zeros((s, len(cands)), dtype=bool)
    for j in range(len(cands)):
        inside[rng.permutation(s)[: s // 2], j] = True
    conf = np.zeros((s, len(cands)))
    for k in range(s):
        keep = np.flatnonzero((in_pop < 0) & (rng.random(len(population)) < 0.5))
        keep = np.union1d(keep, np.flatnonzero((in_pop >= 0) & inside[k, np.maximum(in_pop, 0)]))
        report = (
            (lambda d, t, k=k: progress("membership: LiRA shadow federations", k * t + d, s * t))
            if progress
            else None
        )
        w = shadow_federation(
            observed.config,
            data,
            population.take(keep),
            seed=config.seed * 1000 + k + 1,
            privacy=observed.summary.get("privacy"),
            progress=report,
        )
        logits, _ = evaluator.predict(w, cands)
        conf[k] = logit_confidence(logits, cands.y.numpy())
    scores = lira_score(target, conf, inside)
    return scored_row(
        f"membership: LiRA ({s} shadow federations)",
        "final global model",
        scores,
        labels,
        bootstrap=config.bootstrap,
        seed=config.seed,
        dp=_dp_for(privacy, per_client=False),
        notes=[
            f"online LiRA, global variances; {len(cands) // 2} members and as many non-members; shadow "
            "federations replay the run's recipe on random halves of train + held-out utterances",
            _lira_power(len(cands) // 2, s),
        ],
        party="reader of the released model",
    )


def _lira_power(n_negative: int, shadows: int) -> str:
    """Whether TPR at 0.1 % FPR means anything with this many non-members and shadow models."""
    floor = 1.0 / n_negative
    if n_negative >= 1000 and shadows >= 64:
        return f"TPR at 0.1 % FPR is resolved: the smallest FPR step is {floor:.2g}"
    return (
        f"underpowered at 0.1 % FPR: {n_negative} non-members make the smallest FPR step {floor:.2g} and "
        f"{shadows} shadow models give rough per-utterance Gaussians; report TPR at 0.1 % FPR only with "
        ">= 1000 non-members (--lira-candidates 1000) and >= 64 shadows (Carlini et al. use 64-256)"
    )
