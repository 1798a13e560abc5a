"""The membership attack's rows on a stand-in observed run, exactly: each row's scores recomputed from
its definition with a tiny CNN, its labels (training speakers and utterances 1, held-out ones 0), the
party it names, its DP claim, which rows appear under secure aggregation and without recorded
updates, the refusals, the per-round AUCs and the progress reports.

The stand-in is a real ObservedRun over an in-memory run directory (records, checkpoint, metrics),
and scored_row is replaced by a recorder, so each row's exact scores and arguments are compared
(scored_row itself is tested in tests/attacks/test_attack_metrics*.py)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from privfl.attacks import membership, shadow
from privfl.attacks.membership import (
    MembershipAttackConfig,
    _lira_power,
    heldout_pool,
    lira_score,
    logit_confidence,
)
from privfl.attacks.observe import AGGREGATE_ONLY, NOT_OBSERVED, PER_CLIENT, ObservedRun
from privfl.attacks.result import AttackRow
from privfl.config import ExperimentConfig
from privfl.data.dataset import ClientData, PreparedData, SpeechSet
from privfl.errors import AttackError, ConfigError
from privfl.models import build_model, canonical_parameters, count_parameters, initial_weights, set_flat
from privfl.parallel import torch_threads
from tests.attacks.conftest import make_speech_set

N_MELS = 8
TINY = {"model.conv_channels": 2, "model.fc_hidden": 4, "seed": 3}
EPS, DELTA = 2.5, 1e-4


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def config_of(mode: str = "fedavg", scheme: str = "none") -> ExperimentConfig:
    extra = {"dp.noise_multiplier": 1.0} if mode in ("dp", "user-dp") else {}
    return ExperimentConfig().override({**TINY, "train.mode": mode, "secure.scheme": scheme, **extra})


def utterances(counts: dict[str, int], seed: int) -> SpeechSet:
    """counts[s] utterances of each speaker s, random features, labels cycling through the classes."""
    per = max(counts.values(), default=1)
    full = make_speech_set(dict.fromkeys(counts, "female"), per_speaker=per, seed=seed)
    keep = [i for i in range(len(full)) if i % per < counts[full.speakers[i]]]
    return full.take(np.array(keep, dtype=np.int64))


def prepared(
    clients=(("a",), ("b",), ("c",)),
    train: dict | None = None,
    val: dict | None = None,
    test: dict | None = None,
    aux: dict | None = None,
) -> PreparedData:
    """Training speakers held by the given clients; held-out speakers v (val), t (test), x (aux)."""
    train = train or {s: 3 for c in clients for s in c}
    sets = {
        "train": utterances(train, seed=1),
        "val": utterances({"v": 2} if val is None else val, seed=2),
        "test": utterances({"t": 2} if test is None else test, seed=3),
        "aux": utterances({"x": 3} if aux is None else aux, seed=4),
    }
    tr = sets["train"]
    parts = []
    for k, held in enumerate(clients):
        c = tr.take(np.flatnonzero(np.isin(np.asarray(tr.speakers), held)))
        parts.append(ClientData(k, c.x, c.lengths, c.y, tuple(held), ("female",) * len(held)))
    return PreparedData(None, None, tr, sets["val"], sets["test"], sets["aux"], parts, N_MELS)


class RunRecords:
    """An in-memory run directory: config, summary, recorded rounds, checkpoint and metrics."""

    path = Path("runs/fake")

    def __init__(self, cfg, records: dict, checkpoint: dict, metrics: list, privacy: dict | None) -> None:
        self._cfg, self._records, self._checkpoint = cfg, records, checkpoint
        self._metrics, self._privacy = metrics, privacy

    def config(self):
        return self._cfg

    def summary(self) -> dict:
        return {"privacy": self._privacy} if self._privacy else {}

    def recorded_rounds(self) -> list[int]:
        return sorted(self._records)

    def load_updates(self, r: int) -> dict:
        return self._records[r]

    def load_checkpoint(self) -> dict:
        return self._checkpoint

    def metrics(self) -> list:
        return self._metrics


def observed_run(
    data: PreparedData,
    mode: str = "fedavg",
    scheme: str = "none",
    rounds=(1, 2, 3),
    last: int = 3,
    ids: dict | None = None,
    metrics=None,
    privacy: dict | None = None,
) -> ObservedRun:
    """Recorded rounds with random w_t and client updates; the checkpoint is round `last`."""
    cfg = config_of(mode, scheme)
    n_params = count_parameters(build_model(cfg.model, N_MELS))
    rng = np.random.default_rng(11)
    records = {}
    for r in rounds:
        cids = np.arange(len(data.clients)) if ids is None or r not in ids else np.asarray(ids[r])
        records[r] = {
            "weights": (0.5 * rng.normal(size=n_params)).astype(np.float32),
            "client_ids": cids.astype(np.int64),
            "num_samples": np.array([data.clients[c].num_samples for c in cids], dtype=np.int64),
            "deltas": (0.05 * rng.normal(size=(len(cids), n_params))).astype(np.float32),
            "speakers": np.array(["|".join(data.clients[c].speakers) for c in cids]),
            "genders": np.array(["|".join(data.clients[c].genders) for c in cids]),
        }
    final = (0.5 * rng.normal(size=n_params)).astype(np.float32)
    metrics = (
        [
            {"round": 1, "train_loss": 1.5},
            {"round": 2, "train_loss": 0.9},
            {"round": 3, "train_loss": 0.123456},
        ]
        if metrics is None
        else metrics
    )
    return ObservedRun(RunRecords(cfg, records, {"round": last, "weights": final}, metrics, privacy))


def dp_summary(unit: str = "utterance") -> dict:
    return {"epsilon": EPS, "delta": DELTA, "unit": unit, "noise": "os"}


# --- independent arithmetic: the tiny CNN by hand -----------------------------------------------------
def model_at(weights: np.ndarray) -> nn.Module:
    model = build_model(config_of().model, N_MELS)
    set_flat(model, weights)
    return model.eval()


def losses_at(weights: np.ndarray, s: SpeechSet) -> np.ndarray:
    with torch.no_grad():
        return nn.functional.cross_entropy(model_at(weights)(s.x, s.lengths), s.y, reduction="none").numpy()


def logits_at(weights: np.ndarray, s: SpeechSet) -> np.ndarray:
    with torch.no_grad():
        return model_at(weights)(s.x, s.lengths).numpy()


def flat_grad(model: nn.Module, loss: torch.Tensor) -> np.ndarray:
    params = [p for _, p in canonical_parameters(model)]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).double().numpy()


def mean_loss_gradient(weights: np.ndarray, s: SpeechSet) -> np.ndarray:
    model = model_at(weights)
    return flat_grad(model, nn.functional.cross_entropy(model(s.x, s.lengths), s.y))


def sample_gradients(weights: np.ndarray, s: SpeechSet) -> np.ndarray:
    model = model_at(weights)
    return np.stack(
        [
            flat_grad(
                model,
                nn.functional.cross_entropy(model(s.x[i : i + 1], s.lengths[i : i + 1]), s.y[i : i + 1]),
            )
            for i in range(len(s))
        ]
    )


def cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


# --- the recorder in place of scored_row -----------------------------------------------------------
@pytest.fixture()
def scored(monkeypatch):
    """Every scored_row call: (name, observed, scores, labels, keyword arguments)."""
    calls = []

    def record(name, observed, scores, labels, **kw):
        calls.append(
            SimpleNamespace(
                name=name, observed=observed, scores=np.asarray(scores), labels=np.asarray(labels), kw=kw
            )
        )
        return AttackRow(name, observed, notes=list(kw.get("notes", [])), party=kw.get("party", "server"))

    monkeypatch.setattr(membership, "scored_row", record)
    return calls


def without(kw: dict, *keys: str) -> dict:
    return {k: v for k, v in kw.items() if k not in keys}


WHO = "3 training speakers (members) against 3 held-out speakers (val, test, aux)"


# --- speaker rows ------------------------------------------------------------------------------------
def speaker_expectations(observed, data, rounds, probes=None):
    """Per speaker (a, b, c, then t, v, x): final loss, loss drop, aggregate and per-client alignment."""
    pool = heldout_pool(data)
    order = [("a", data.train), ("b", data.train), ("c", data.train), ("t", pool), ("v", pool), ("x", pool)]
    speakers = [src.take(np.flatnonzero(np.asarray(src.speakers) == s)) for s, src in order]
    probes = probes or speakers
    final = observed.final_weights()
    w0 = initial_weights(observed.config.model, N_MELS, 3)
    loss_final = np.array([losses_at(final, s).mean() for s in speakers])
    loss_first = np.array([losses_at(w0, s).mean() for s in speakers])
    agg, own = [], []
    for r in rounds:
        obs, _ = observed.observe(r)
        grads = [-mean_loss_gradient(obs.weights, p) for p in probes]
        if obs.aggregate is not None:
            agg.append([cos(g, obs.aggregate.astype(np.float64)) for g in grads])
        if obs.deltas is not None:
            own.append([max(cos(g, d.astype(np.float64)) for d in obs.deltas) for g in grads])
    return (
        loss_final,
        loss_first,
        np.mean(agg, axis=0) if agg else None,
        np.mean(own, axis=0) if own else None,
    )


def test_speaker_rows_score_each_speaker_from_the_final_model_w0_and_the_updates(scored) -> None:
    data = prepared()
    # rounds 1, 2, 3 recorded, the checkpoint is round 4: round 3 has no w_(t+1), so no aggregate
    observed = observed_run(data, last=4)
    config = MembershipAttackConfig(speaker_rounds=2, bootstrap=17, seed=5)
    progress = []
    rows = membership._speaker_rows(
        observed, data, heldout_pool(data), config, None, lambda *a: progress.append(a)
    )
    # rounds 1 and 3 (two of three, evenly spaced); only round 1 has an aggregate
    loss_final, loss_first, agg, own = speaker_expectations(observed, data, [1, 3])
    assert [c.name for c in scored] == [
        "membership: speaker, final model loss",
        "membership: speaker, loss drop from w_0",
        "membership: speaker, aggregate alignment",
        "membership: speaker, per-client update alignment",
    ]
    assert [r.name for r in rows] == [c.name for c in scored]
    assert [c.observed for c in scored] == [
        "final global model",
        "first and final global model",
        "aggregate",
        PER_CLIENT,
    ]
    for c in scored:
        assert c.labels.tolist() == [1, 1, 1, 0, 0, 0]
    np.testing.assert_allclose(scored[0].scores, -loss_final, rtol=1e-5)
    np.testing.assert_allclose(scored[1].scores, loss_first - loss_final, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(scored[2].scores, agg, atol=1e-5)
    np.testing.assert_allclose(scored[3].scores, own, atol=1e-5)
    common = {"bootstrap": 17, "seed": 5}
    assert scored[0].kw == {
        **common,
        "dp": None,
        "notes": [f"score: minus the speaker's mean loss under the final model; {WHO}"],
        "party": "reader of the released model",
    }
    assert scored[1].kw == {
        **common,
        "dp": None,
        "notes": [
            "score: the speaker's mean loss under w_0 (the server's initial model) minus under the final "
            f"model: a member's drops more, whatever its own difficulty; {WHO}"
        ],
    }
    assert scored[2].kw == {
        **common,
        "dp": None,
        "notes": [
            "score: mean over 1 rounds of cos(-grad of the speaker's mean loss on up to all of its "
            f"utterances at w_t, w_(t+1) - w_t); {WHO}"
        ],
    }
    assert scored[3].kw == {
        **common,
        "notes": [
            "score: mean over 2 rounds of the largest cos(-grad of the speaker's mean loss at w_t, delta_k) "
            f"over the round's clients; {WHO}"
        ],
    }
    assert progress == [("membership: speaker gradients", 1, 2), ("membership: speaker gradients", 2, 2)]


def test_speaker_rows_under_secure_aggregation_score_the_aggregate_and_name_who_could_read_an_update(
    scored,
) -> None:
    data = prepared()
    # secure: no per-client update; round 2 has neither an update nor an aggregate (no w_3) and is
    # skipped; rounds 1, 4 and 5 (the checkpoint's) have one
    observed = observed_run(data, scheme="ckks", rounds=(1, 2, 4, 5), last=5)
    progress = []
    config = MembershipAttackConfig(speaker_rounds=0, bootstrap=0)
    rows = membership._speaker_rows(
        observed, data, heldout_pool(data), config, None, lambda *a: progress.append(a)
    )
    _, _, agg, _ = speaker_expectations(observed, data, [1, 2, 4, 5])
    assert [c.name for c in scored][2:] == ["membership: speaker, aggregate alignment"]
    assert scored[2].observed == "aggregate" and "mean over 3 rounds" in scored[2].kw["notes"][0]
    np.testing.assert_allclose(scored[2].scores, agg, atol=1e-5)
    last = rows[-1]
    assert (last.name, last.observed, last.party, last.metrics) == (
        "membership: speaker, per-client update alignment",
        AGGREGATE_ONLY,
        "server",
        None,
    )
    assert last.reason.startswith(f"{NOT_OBSERVED}; under ckks a single update is readable by the key holder")
    assert len(rows) == 4
    # rounds 1, 4 and 5 report; round 2 had nothing to read
    assert progress == [("membership: speaker gradients", j, 4) for j in (1, 3, 4)]


def test_speaker_rows_of_a_run_without_records_are_the_two_model_rows(scored) -> None:
    data = prepared()
    observed = observed_run(data, rounds=())
    rows = membership._speaker_rows(observed, data, heldout_pool(data), MembershipAttackConfig(), None, None)
    assert [r.name for r in rows] == [
        "membership: speaker, final model loss",
        "membership: speaker, loss drop from w_0",
    ]


@pytest.mark.parametrize("cap", [1, 2])
def test_speaker_rows_probe_a_seeded_subset_of_each_speakers_utterances(scored, cap) -> None:
    # cap 2: speaker a has exactly the cap (all of it, no draw); b and c have more and are sampled
    data = prepared(train={"a": 2, "b": 4, "c": 3})
    observed = observed_run(data, rounds=(2,), last=2)
    config = MembershipAttackConfig(speaker_utterances=cap, seed=9, bootstrap=0)
    membership._speaker_rows(observed, data, heldout_pool(data), config, None, None)
    rng = np.random.default_rng([9, 0x5BEA])
    pool = heldout_pool(data)
    probes = []
    for s, src in [
        ("a", data.train),
        ("b", data.train),
        ("c", data.train),
        ("t", pool),
        ("v", pool),
        ("x", pool),
    ]:
        one = src.take(np.flatnonzero(np.asarray(src.speakers) == s))
        probes.append(
            one.take(np.sort(rng.choice(len(one), size=cap, replace=False))) if len(one) > cap else one
        )
    assert [len(p) for p in probes] == [cap] * 6
    loss_final, _, agg, own = speaker_expectations(observed, data, [2], probes)
    np.testing.assert_allclose(scored[0].scores, -loss_final, rtol=1e-5)  # the model rows use every utterance
    np.testing.assert_allclose(scored[2].scores, agg, atol=1e-5)
    np.testing.assert_allclose(scored[3].scores, own, atol=1e-5)
    assert f"on up to {cap} of its utterances" in scored[2].kw["notes"][0]


@pytest.mark.parametrize(
    ("mode", "clients", "covered"),
    [
        ("user-dp", (("a",), ("b",), ("c",)), True),  # one speaker per client: the unit is a speaker
        ("user-dp", (("a", "b"), ("c",)), False),  # a client holds two speakers
        ("dp", (("a",), ("b",), ("c",)), False),  # record-level: a speaker is many records
    ],
)
def test_speaker_rows_check_dp_only_when_a_client_is_one_speaker_under_user_level_dp(
    scored, mode, clients, covered
) -> None:
    data = prepared(clients=clients)
    observed = observed_run(data, mode=mode, rounds=(2,), last=2, privacy=dp_summary())
    privacy = observed.privacy
    membership._speaker_rows(
        observed, data, heldout_pool(data), MembershipAttackConfig(bootstrap=0), privacy, None
    )
    assert len(scored) == 4
    not_a_speaker = (
        "the run's DP unit is not a speaker (a speaker is many records, or a client holds several speakers): "
        "no bound is checked on this row"
    )
    for c in scored[:3]:
        assert c.kw["dp"] == ((EPS, DELTA) if covered else None)
        assert c.kw["notes"][1:] == ([] if covered else [not_a_speaker])
    assert "dp" not in scored[3].kw  # the server sees each update before user-level DP's noise
    assert scored[3].kw["notes"][1:] == (
        ["user-level DP noises at the server: the updates it receives are not covered"] if covered else []
    )


# --- the loss row -------------------------------------------------------------------------------------
def test_the_loss_row_scores_minus_the_final_models_loss_at_the_last_training_loss(scored) -> None:
    data = prepared()
    observed = observed_run(data, mode="user-dp", privacy=dp_summary("speaker"))
    config = MembershipAttackConfig(seed=4, bootstrap=13)
    row = membership._loss_row(observed, data, heldout_pool(data), config, observed.privacy)
    cands, labels = membership.balanced_sets(
        data.train, heldout_pool(data), np.random.default_rng([4, 0x1055])
    )
    assert len(cands) == 14 and set(cands.ids[:7]) <= set(data.train.ids)
    (c,) = scored
    assert (row.name, c.name, c.observed) == (
        c.name,
        "membership: loss threshold (final model)",
        "final global model",
    )
    assert c.labels.tolist() == labels.tolist() == [1] * 7 + [0] * 7
    np.testing.assert_allclose(c.scores, -losses_at(observed.final_weights(), cands), rtol=1e-5)
    assert c.kw == {
        "threshold": -0.123456,
        "bootstrap": 13,
        "seed": 4,
        "dp": (EPS, DELTA),  # user-level DP covers the released model
        "party": "reader of the released model",
        "notes": [
            "threshold: loss <= 0.1235, the clients' mean training loss in the last round (Yeom et al.)"
        ],
    }


@pytest.mark.parametrize(
    "metrics", [[], [{"round": 1, "train_loss": 0.5}, {"round": 2, "train_loss": 0.4}, {"round": 3}]]
)
def test_the_loss_row_without_a_last_training_loss_uses_the_oracle_threshold(scored, metrics) -> None:
    data = prepared()
    observed = observed_run(data, metrics=metrics)
    membership._loss_row(observed, data, heldout_pool(data), MembershipAttackConfig(), None)
    assert scored[0].kw["threshold"] is None and scored[0].kw["dp"] is None
    assert scored[0].kw["notes"] == ["threshold: oracle (no training loss recorded)"]


# --- the alignment rows -------------------------------------------------------------------------------
def alignment_expectations(observed, data, rounds, config):
    """Per round the draws the attack documents (seeded with [seed, round, 0xA119]): up to `candidates`
    members of each client, up to 4x as many held-out utterances, as many of them per client, and for
    the aggregate as many of all members as of those non-members; cosines by hand."""
    pool = heldout_pool(data)
    own, other, agg = [], [], []
    for r in rounds:
        obs, _ = observed.observe(r)
        rng = np.random.default_rng([config.seed, r, 0xA119])
        ids = obs.client_ids.tolist()
        if not ids:
            continue
        picks = [
            np.sort(
                rng.choice(
                    data.clients[c].num_samples,
                    size=min(config.candidates, data.clients[c].num_samples),
                    replace=False,
                )
            )
            for c in ids
        ]
        n_pool = min(len(pool), 4 * max(len(p) for p in picks))
        nonmembers = pool.take(np.sort(rng.choice(len(pool), size=n_pool, replace=False)))
        dirs = []
        if obs.deltas is not None:
            dirs += [-d for d in obs.deltas.astype(np.float64)]
        if obs.aggregate is not None:
            dirs.append(-obs.aggregate.astype(np.float64))
        if not dirs:
            continue
        g_non = sample_gradients(obs.weights, nonmembers)
        non = np.array([[cos(g, d) for d in dirs] for g in g_non])
        mems = []
        for i, c in enumerate(ids):
            cd = data.clients[c]
            s = SpeechSet(cd.x[picks[i]], cd.lengths[picks[i]], cd.y[picks[i]], (), (), ())
            mem = np.array([[cos(g, d) for d in dirs] for g in sample_gradients(obs.weights, s)])
            mems.append(mem)
            pick = rng.choice(len(nonmembers), size=len(mem), replace=False)
            if obs.deltas is not None:
                own += [(r, c, v, 1) for v in mem[:, i]] + [(r, c, v, 0) for v in non[pick, i]]
                if len(ids) > 1:
                    o = (i + 1) % len(ids)
                    other += [(r, c, v, 1) for v in mem[:, o]] + [(r, c, v, 0) for v in non[pick, o]]
        if obs.aggregate is not None:
            every = np.concatenate(mems)[:, -1]
            n = min(len(every), len(non))
            agg += [(r, -1, v, 1) for v in rng.choice(every, size=n, replace=False)]
            agg += [(r, -1, v, 0) for v in rng.choice(non[:, -1], size=n, replace=False)]
    return own, other, agg


def assert_items(call, items) -> None:
    """The row scored exactly these (round, group, score, label) items."""
    assert call.labels.tolist() == [t[3] for t in items]
    np.testing.assert_allclose(call.scores, [t[2] for t in items], atol=1e-5)


def per_round(items) -> list[dict]:
    from sklearn.metrics import roc_auc_score

    out = []
    for r in sorted({t[0] for t in items}):
        sel = [t for t in items if t[0] == r]
        labels = [t[3] for t in sel]
        auc = float(roc_auc_score(labels, [t[2] for t in sel])) if len(set(labels)) == 2 else None
        out.append({"round": r, "n": len(sel), "auc": auc})
    return out


def test_alignment_rows_score_each_clients_members_against_its_own_update_and_the_next_clients(
    scored,
) -> None:
    # client 1 has 4 utterances: 3 are drawn; 8 held-out utterances, 12 allowed: all of them
    data = prepared(train={"a": 3, "b": 4, "c": 2}, val={"v": 3}, test={"t": 2}, aux={"x": 3})
    observed = observed_run(data, rounds=(1, 2, 3), last=4, privacy=dp_summary(), mode="dp")
    config = MembershipAttackConfig(candidates=3, seed=6, bootstrap=11)
    progress = []
    rows = membership._alignment_rows(
        observed, data, heldout_pool(data), [1, 3], config, observed.privacy, lambda *a: progress.append(a)
    )
    own, other, agg = alignment_expectations(observed, data, [1, 3], config)
    assert [c.name for c in scored] == [
        "membership: update alignment (per-client update)",
        "membership: alignment with another client's update (control)",
        "membership: update alignment (aggregate update)",
    ]
    assert [r.name for r in rows] == [c.name for c in scored]
    assert [c.observed for c in scored] == [PER_CLIENT, PER_CLIENT, "aggregate"]
    assert len(own) == 2 * 2 * (3 + 3 + 2) and len(agg) == 2 * 8  # round 1 only: 8 members, 8 held out
    assert_items(scored[0], own)
    assert_items(scored[1], other)
    assert_items(scored[2], agg)
    np.testing.assert_array_equal(scored[0].kw["groups"], [t[1] for t in own])
    np.testing.assert_array_equal(scored[1].kw["groups"], [t[1] for t in other])
    assert scored[2].kw["groups"] is None
    common = {"bootstrap": 11, "seed": 6}
    assert without(scored[0].kw, "groups") == {
        **common,
        "dp": (EPS, DELTA),  # record-level DP covers what the server sees of each client
        "control": False,
        "notes": [
            "score: cos(grad at w_t, -delta_k); up to 3 members of client k per round and as many held-out "
            "utterances"
        ],
    }
    assert without(scored[1].kw, "groups") == {
        **common,
        "dp": None,
        "control": True,
        "notes": [
            "client k's members and non-members scored against client k+1's update: what is left is "
            "federation-level and speaker-shift signal, not client k's membership"
        ],
    }
    assert without(scored[2].kw, "groups") == {
        **common,
        "dp": (EPS, DELTA),
        "control": False,
        "notes": [
            "score: cos(grad at w_t, -(w_{t+1} - w_t)); members: any participant's utterances of that round"
        ],
    }
    assert rows[0].per_round == per_round(own) and [p["round"] for p in rows[0].per_round] == [1, 3]
    assert rows[1].per_round == per_round(other)
    assert rows[2].per_round == per_round(agg) == [{"round": 1, "n": 16, "auc": per_round(agg)[0]["auc"]}]
    # one report per sample: round 1 and round 3 each score 8 members and 8 held-out utterances
    assert progress == [("membership: per-sample gradients", d, 32) for d in range(1, 33)]


def test_alignment_under_user_level_dp_leaves_the_per_client_view_unchecked(scored) -> None:
    data = prepared(clients=(("a",), ("b",)))
    observed = observed_run(data, mode="user-dp", rounds=(1, 2), last=2, privacy=dp_summary("speaker"))
    # one member per client: 4 of the 7 held-out utterances are drawn
    config = MembershipAttackConfig(candidates=1, bootstrap=0)
    membership._alignment_rows(observed, data, heldout_pool(data), [2], config, observed.privacy, None)
    own, other, agg = alignment_expectations(observed, data, [2], config)
    assert len(heldout_pool(data)) == 7 and len(own) == 2 * 2 and len(agg) == 2 * 2
    assert_items(scored[0], own)
    assert_items(scored[2], agg)
    assert scored[0].kw["dp"] is None and scored[0].kw["notes"][1:] == [
        "user-level DP noises at the server: the per-client updates the server sees are not covered"
    ]
    assert scored[2].kw["dp"] == (EPS, DELTA)


def test_alignment_of_one_client_has_no_control_and_a_round_of_nobody_is_skipped(scored) -> None:
    data = prepared(clients=(("a",), ("b",)), val={"v": 2}, test={"t": 1}, aux={"x": 1})
    # round 1: nobody sampled (user-dp's Poisson sampling); round 2: client 1 alone; no w_(t+1) for it
    observed = observed_run(data, rounds=(1, 2), last=5, ids={1: [], 2: [1]})
    config = MembershipAttackConfig(candidates=10, seed=2, bootstrap=0)
    rows = membership._alignment_rows(observed, data, heldout_pool(data), [1, 2], config, None, None)
    own, other, agg = alignment_expectations(observed, data, [2], config)
    assert other == [] and len(own) == 2 * 3
    assert [c.name for c in scored] == ["membership: update alignment (per-client update)"]
    assert_items(scored[0], own)
    assert scored[0].kw["notes"] == [
        "score: cos(grad at w_t, -delta_k); up to 10 members of client k per round and as many held-out "
        "utterances"
    ]
    last = rows[-1]
    assert (last.name, last.observed, last.reason, last.metrics) == (
        "membership: update alignment (aggregate update)",
        "aggregate",
        "w_{t+1} of the attacked rounds was not recorded",
        None,
    )
    assert len(rows) == 2


def test_alignment_under_secure_aggregation_scores_only_the_aggregate(scored) -> None:
    data = prepared(clients=(("a",), ("b",)))
    # rounds 1 and 4 have w_2 and w_5 and are scored; round 2 has neither an update nor w_3 and is skipped
    observed = observed_run(data, scheme="secaggplus", rounds=(1, 2, 4, 5), last=5)
    config = MembershipAttackConfig(candidates=2, seed=1, bootstrap=0)
    progress = []
    rows = membership._alignment_rows(
        observed, data, heldout_pool(data), [1, 2, 4], config, None, lambda *a: progress.append(a)
    )
    _, _, agg = alignment_expectations(observed, data, [1, 2, 4], config)
    assert [t[0] for t in agg] == [1] * 8 + [4] * 8
    assert [c.name for c in scored] == ["membership: update alignment (aggregate update)"]
    assert_items(scored[0], agg)
    assert rows[0].name == "membership: update alignment (per-client update)"
    assert (rows[0].observed, rows[0].party, rows[0].metrics) == (AGGREGATE_ONLY, "server", None)
    assert rows[0].reason.startswith(
        f"{NOT_OBSERVED}; under secaggplus a single update is readable by no single party"
    )
    assert len(rows) == 2 and rows[1].per_round == per_round(agg)
    # rounds 1 and 4 (the first and third) score 4 members and all 7 held-out; round 2 no gradient
    assert progress == [
        ("membership: per-sample gradients", j * 11 + d, 3 * 11) for j in (0, 2) for d in range(1, 12)
    ]


# --- LiRA -----------------------------------------------------------------------------------------------
def test_lira_scores_the_final_model_against_shadows_trained_with_each_candidate_in_half(
    scored, monkeypatch
) -> None:
    data = prepared()
    observed = observed_run(data, mode="dp", privacy=dp_summary())
    calls = []

    def fake_shadow(cfg, d, utterances, seed, privacy=None, progress=None):
        calls.append((cfg, d, utterances.ids, seed, privacy))
        if progress is not None:
            progress(1, 2)
            progress(2, 2)
        return shadow_weights(observed, seed)

    monkeypatch.setattr(shadow, "shadow_federation", fake_shadow)
    config = MembershipAttackConfig(methods=("lira",), lira_shadows=4, lira_candidates=3, seed=3, bootstrap=9)
    progress = []
    row = membership._lira_row(
        observed, data, heldout_pool(data), config, observed.privacy, lambda *a: progress.append(a)
    )
    pool = heldout_pool(data)
    rng = np.random.default_rng([3, 0x11AA])
    cands, labels = membership.balanced_sets(data.train, pool, rng, limit=3)
    population = SpeechSet.concat([data.train, pool])
    inside = np.zeros((4, 6), dtype=bool)
    for j in range(6):
        inside[rng.permutation(4)[:2], j] = True
    kept = []
    for k in range(4):
        others = [
            u
            for u, coin in zip(population.ids, rng.random(len(population)) < 0.5, strict=True)
            if u not in cands.ids and coin
        ]
        kept.append(
            tuple(
                u for u in population.ids if u in others or (u in cands.ids and inside[k, cands.ids.index(u)])
            )
        )
    assert [c[2] for c in calls] == kept
    assert inside[:, 0].tolist() != inside[:, 1].tolist()  # the first candidate's draw is its own
    assert [c[3] for c in calls] == [3001, 3002, 3003, 3004]
    assert all(c[0] is observed.config and c[1] is data and c[4] == dp_summary() for c in calls)
    for j, u in enumerate(cands.ids):  # each candidate is in exactly half of the shadows' data
        assert sum(u in k for k in kept) == 2
        assert [u in k for k in kept] == inside[:, j].tolist()
    y = cands.y.numpy()
    target = logit_confidence(logits_at(observed.final_weights(), cands), y)
    conf = np.array([logit_confidence(logits_at(shadow_weights(observed, c[3]), cands), y) for c in calls])
    (c,) = scored
    assert (row.name, c.name, c.observed) == (
        c.name,
        "membership: LiRA (4 shadow federations)",
        "final global model",
    )
    assert c.labels.tolist() == labels.tolist() == [1, 1, 1, 0, 0, 0]
    np.testing.assert_allclose(c.scores, lira_score(target, conf, inside), rtol=1e-4, atol=1e-4)
    assert c.kw == {
        "bootstrap": 9,
        "seed": 3,
        "dp": (EPS, DELTA),
        "party": "reader of the released model",
        "notes": [
            "online LiRA, global variances; 3 members and as many non-members; shadow federations replay the "
            "run's recipe on random halves of train + held-out utterances",
            _lira_power(3, 4),
        ],
    }
    assert progress == [("membership: LiRA shadow federations", d, 8) for d in range(1, 9)]


def test_lira_without_progress_hands_the_shadows_no_progress_report(scored, monkeypatch) -> None:
    data = prepared()
    observed = observed_run(data)
    given = []

    def fake_shadow(cfg, d, utterances, seed, privacy=None, progress=None):
        given.append(progress)
        return shadow_weights(observed, seed)

    monkeypatch.setattr(shadow, "shadow_federation", fake_shadow)
    config = MembershipAttackConfig(methods=("lira",), lira_shadows=2, lira_candidates=2, bootstrap=0)
    membership._lira_row(observed, data, heldout_pool(data), config, None, None)
    assert given == [None, None] and scored[0].kw["dp"] is None


def shadow_weights(observed, seed: int) -> np.ndarray:
    """A stand-in shadow model: the final model moved by noise drawn from the shadow's seed."""
    final = observed.final_weights()
    return final + 0.3 * np.random.default_rng(seed).normal(size=final.shape).astype(np.float32)


# --- the preflight and the whole attack -------------------------------------------------------------------
@pytest.fixture()
def checked(monkeypatch):
    seen = []
    monkeypatch.setattr(membership, "check_data_matches", lambda o, d, r: seen.append((o, d, r)))
    return seen


def test_preflight_returns_the_alignment_rounds_and_checks_the_data_on_the_first(checked) -> None:
    data = prepared()
    observed = observed_run(data, rounds=(1, 2, 3, 4, 5), last=5)
    assert membership.membership_preflight(observed, data, MembershipAttackConfig(max_rounds=3)) == [1, 3, 5]
    assert membership.membership_preflight(observed, data, MembershipAttackConfig(rounds=(4, 2))) == [2, 4]
    # without alignment no rounds are attacked, and the data is checked on the first recorded round
    assert membership.membership_preflight(observed, data, MembershipAttackConfig(methods=("loss",))) == []
    assert [r for _, _, r in checked] == [1, 2, 1]
    assert all(o is observed and d is data for o, d, _ in checked)
    bare = observed_run(data, rounds=())
    assert (
        membership.membership_preflight(bare, data, MembershipAttackConfig(methods=("loss", "speaker"))) == []
    )
    assert len(checked) == 3  # nothing recorded: nothing to check against


def test_preflight_refuses_alignment_without_records_lira_under_user_dp_and_no_held_out_speakers(
    checked,
) -> None:
    data = prepared()
    with pytest.raises(
        AttackError,
        match=r"^runs/fake has no recorded client updates, which the alignment attack reads; retrain with "
        r"--record-updates, or run only the loss attack \(--method loss\)$",
    ):
        membership.membership_preflight(
            observed_run(data, rounds=()), data, MembershipAttackConfig(methods=("alignment",))
        )
    user = observed_run(data, mode="user-dp")
    with pytest.raises(
        AttackError,
        match=r"^LiRA's shadow federations reproduce client training but not user-level DP's server-side "
        r"clipping and noise; run it on fedavg or dp runs, or drop --lira$",
    ):
        membership.membership_preflight(
            user, data, MembershipAttackConfig(methods=("loss", "lira"), lira_shadows=2)
        )
    membership.membership_preflight(user, data, MembershipAttackConfig(methods=("loss",)))
    membership.membership_preflight(
        observed_run(data, mode="dp"), data, MembershipAttackConfig(methods=("lira",))
    )
    # one held-out utterance anywhere is enough; none is refused
    for val, test, aux in (({}, {"t": 1}, {"x": 1}), ({"v": 1}, {"t": 1}, {}), ({"v": 1}, {}, {})):
        few = prepared(val=val, test=test, aux=aux)
        membership.membership_preflight(observed_run(few), few, MembershipAttackConfig())
    none = prepared(val={}, test={}, aux={})
    with pytest.raises(
        AttackError, match=r"^the run has no held-out speakers \(val, test, aux\) to draw non-members from$"
    ):
        membership.membership_preflight(observed_run(none), none, MembershipAttackConfig())
    assert not [c for c in checked if len(c[1].val) + len(c[1].test) + len(c[1].aux) == 0]


@pytest.fixture()
def rows(monkeypatch):
    """The four row builders replaced by recorders of their arguments."""
    seen = []

    def builder(kind, many):
        def build(*args):
            seen.append((kind, args))
            row = AttackRow(f"membership: {kind}", "x")
            return [row, AttackRow(f"membership: {kind} 2", "x")] if many else row

        return build

    monkeypatch.setattr(membership, "_speaker_rows", builder("speaker", True))
    monkeypatch.setattr(membership, "_loss_row", builder("loss", False))
    monkeypatch.setattr(membership, "_alignment_rows", builder("alignment", True))
    monkeypatch.setattr(membership, "_lira_row", builder("lira", False))
    return seen


def test_the_attack_runs_each_configured_method_once_in_a_fixed_order(checked, rows, monkeypatch) -> None:
    data = prepared()
    observed = observed_run(data, mode="dp", privacy=dp_summary(""))
    ticks = iter([10.0, 12.5])
    monkeypatch.setattr(membership, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    config = MembershipAttackConfig(methods=("lira", "alignment", "loss", "speaker"), max_rounds=2, seed=7)

    def progress(*a):
        return None

    result = membership.membership_attack(observed, data, config, progress)
    assert [r.name for r in result.rows] == [
        "membership: speaker",
        "membership: speaker 2",
        "membership: loss",
        "membership: alignment",
        "membership: alignment 2",
        "membership: lira",
    ]
    pool_ids = heldout_pool(data).ids
    privacy = observed.privacy
    assert privacy is not None and privacy.mode == "dp"
    for _, args in rows:
        assert args[0] is observed and args[1] is data and args[2].ids == pool_ids
    assert [(k, a[3:]) for k, a in rows] == [
        ("speaker", (config, privacy, progress)),
        ("loss", (config, privacy)),
        ("alignment", ([1, 3], config, privacy, progress)),
        ("lira", (config, privacy, progress)),
    ]
    assert (result.attack, result.run, result.observed, result.seed) == (
        "membership",
        "runs/fake",
        PER_CLIENT,
        7,
    )
    assert result.config == {**asdict(config), "rounds": [1, 3]}
    assert result.seconds == 2.5
    assert result.notes == [
        "members: training utterances; non-members: utterances of the 3 held-out speakers (val, test, aux), "
        "never trained on; sets balanced and drawn with the attack seed",
        "the run claims (2.5, 0.0001)-DP (dp); rows it covers are checked against TPR <= e^eps FPR + delta",
    ]


def test_the_attack_runs_only_the_configured_methods_and_names_the_dp_unit(checked, rows) -> None:
    data = prepared()
    observed = observed_run(data, mode="dp", privacy={**dp_summary("utterance"), "epsilon": 1.23456})
    result = membership.membership_attack(observed, data, MembershipAttackConfig(methods=("loss",)))
    assert [k for k, _ in rows] == ["loss"] and [r.name for r in result.rows] == ["membership: loss"]
    assert result.notes[1] == (
        "the run claims (1.23, 0.0001)-DP (utterance); rows it covers are checked against "
        "TPR <= e^eps FPR + delta"
    )
    assert result.config["rounds"] == [] and 0.0 <= result.seconds < 60.0


def test_the_attack_without_a_config_runs_the_defaults_and_claims_no_dp_for_a_plain_run(
    checked, rows
) -> None:
    data = prepared()
    result = membership.membership_attack(observed_run(data), data)
    assert [k for k, _ in rows] == ["speaker", "loss", "alignment"]
    assert result.config == {**asdict(MembershipAttackConfig()), "rounds": [1, 2, 3]}
    assert len(result.notes) == 1 and rows[0][1][4] is None and rows[0][1][5] is None
    with pytest.raises(ConfigError, match="not among"):
        membership.membership_attack(observed_run(data), data, MembershipAttackConfig(methods=("guess",)))


# --- the pure pieces' remaining edges --------------------------------------------------------------------
def test_balanced_sets_draw_each_candidate_at_most_once() -> None:
    members = make_speech_set({"a": "female", "b": "male"}, per_speaker=5)
    nonmembers = make_speech_set({"c": "female", "d": "male"}, per_speaker=5, seed=1)
    cands, labels = membership.balanced_sets(members, nonmembers, np.random.default_rng(0))
    assert cands.ids == members.ids + nonmembers.ids and labels.tolist() == [1] * 10 + [0] * 10


def test_cosines_are_computed_in_float64_from_float32_rows() -> None:
    a = np.array([[1.0, 1e-3, 3.3333333], [0.1, 0.7, -0.3]], dtype=np.float32)
    b = np.array([[0.2, -1.1, 2.0000002]], dtype=np.float32)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = [[cos(a64[i], b64[0])] for i in range(2)]
    np.testing.assert_allclose(membership._cosines(a, b), want, rtol=1e-14)


def test_gradient_cosines_take_float64_directions_and_each_utterances_own_length() -> None:
    full = make_speech_set({"a": "female"}, per_speaker=2)
    data = SpeechSet(full.x, torch.tensor([20, 5]), full.y, full.speakers, full.genders, full.ids)
    model = build_model(config_of().model, N_MELS)
    w = 0.5 * np.random.default_rng(0).normal(size=count_parameters(model)).astype(np.float32)
    dirs = np.random.default_rng(1).normal(size=(2, w.size))
    got = membership.gradient_cosines(model, w, data, dirs)
    want = [
        [cos(g, d) for d in dirs.astype(np.float32).astype(np.float64)] for g in sample_gradients(w, data)
    ]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_gradient_cosines_of_no_utterances_are_an_empty_float64_table() -> None:
    model = build_model(config_of().model, N_MELS)
    empty = make_speech_set({}, per_speaker=1)
    w = np.zeros(count_parameters(model), dtype=np.float32)
    got = membership.gradient_cosines(model, w, empty, np.ones((3, w.size)))
    assert got.shape == (0, 3) and got.dtype == np.float64


def test_concatenated_candidates_carry_no_speakers_genders_or_ids() -> None:
    a = make_speech_set({"a": "female"}, per_speaker=2)
    both = membership._concat_xy([a, a])
    assert (both.speakers, both.genders, both.ids) == ((), (), ()) and len(both) == 4


def test_lira_score_takes_0_1_membership_and_float32_statistics_exactly() -> None:
    inside = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    conf = np.array([[1.0000001, 0.3], [3.3333333, 2.7], [-1.1, 4.9], [0.7, 6.1]], dtype=np.float32)
    as64 = conf.astype(np.float64)
    want = lira_score(np.array([2.0, 1.0]), as64, inside.astype(bool))
    np.testing.assert_allclose(lira_score(np.array([2.0, 1.0]), conf, inside), want, rtol=1e-13)
    # IN residuals twice as wide as OUT: the log sd_in term enters with its sign
    conf = np.array([[4.0, 0.0], [0.0, 2.0], [-1.0, 7.0], [1.0, 3.0]])  # IN residuals +-2, OUT +-1
    got = lira_score(np.array([2.0, 5.0]), conf, inside.astype(bool))
    # IN means (2, 5), OUT means (0, 1)
    np.testing.assert_allclose(
        got, [0.0 + 0.5 * 4.0 - np.log(2.0), 0.0 + 0.5 * 16.0 - np.log(2.0)], atol=1e-12
    )


def test_logit_confidence_is_float64_and_stable_when_the_other_logits_are_large() -> None:
    got = logit_confidence(np.array([[0.0, 100.0, 99.0]]), np.array([0]))
    np.testing.assert_allclose(got, [-(100.0 + np.log1p(np.exp(-1.0)))], rtol=1e-14)
    z = np.array([[0.1, 0.7, -0.3], [1.3, 0.2, 0.9]], dtype=np.float32)
    got = logit_confidence(z, np.array([2, 0]))
    assert got.dtype == np.float64
    z64 = z.astype(np.float64)
    want = [
        z64[0, 2] - np.log(np.exp(z64[0, 0]) + np.exp(z64[0, 1])),
        z64[1, 0] - np.log(np.exp(z64[1, 1]) + np.exp(z64[1, 2])),
    ]
    np.testing.assert_allclose(got, want, rtol=1e-14)
