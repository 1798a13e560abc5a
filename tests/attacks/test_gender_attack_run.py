"""gender_attack on a run held in memory, with stand-in shadow training: fast, and exact about what
the attack reports (rows, notes, the config it records, progress, the aggregate's rounds).

Shadow clients are not trained: `local_updates` is replaced by updates whose fc1 columns carry the
client's gender (female: the first half of fc1's inputs move more, male: the second half), so the
fc-profile view can read it. tests/attacks/test_gender.py trains real clients.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from privfl.attacks import gender
from privfl.attacks.gender import GenderAttackConfig, gender_attack
from privfl.attacks.metrics import balanced_accuracy
from privfl.attacks.observe import NOT_OBSERVED, PER_CLIENT, Observation, Truth
from privfl.config import ExperimentConfig
from privfl.data.dataset import PreparedData
from privfl.models import build_model, count_parameters, initial_weights, layer_slices
from privfl.parallel import torch_threads
from tests.attacks.conftest import make_speech_set

N_MELS = 8
CFG = ExperimentConfig().override({"model.conv_channels": 4, "model.fc_hidden": 8, "train.batch_size": 4})
MODEL = build_model(CFG.model, N_MELS)
P = count_parameters(MODEL)
FC1 = layer_slices(MODEL)["fc1.weight"]  # [8 out, 16 in]
AUX = make_speech_set(
    {f"af{i}": "female" for i in range(4)} | {f"am{i}": "male" for i in range(4)}, 6, seed=1
)
EMPTY = AUX.take(np.array([], dtype=np.int64))
DATA = PreparedData(None, None, EMPTY, EMPTY, EMPTY, AUX, [], N_MELS)

# 16 one-speaker clients of alternating gender, one of two female and one male speakers (mixed,
# female by majority) and one of one female and one male speaker (no majority: left out)
GENDERS = [("female",) if i % 2 else ("male",) for i in range(16)] + [
    ("female", "male", "female"),
    ("female", "male"),
]
SIZES = np.array([5] * 16 + [9, 3])


def planted(genders: list[str], seed: int) -> np.ndarray:
    """[k, P] float32 updates: small noise, and fc1's first (female) or last (male) 8 inputs moved more."""
    rng = np.random.default_rng(seed)
    d = rng.normal(scale=0.01, size=(len(genders), P))
    w = d[:, FC1].reshape(len(genders), 8, 16)
    for i, g in enumerate(genders):
        half = slice(0, 8) if g == "female" else slice(8, 16)
        w[i, :, half] += rng.normal(0.0, 0.2, size=(8, 8))
    d[:, FC1] = w.reshape(len(genders), -1)
    return d.astype(np.float32)


class Run:
    """What gender_attack reads of an observed run: rounds 1 and 2, each client in both."""

    observed, summary = PER_CLIENT, {"privacy": {"mode": "none"}}
    config = CFG

    def __init__(self, secure: bool = False) -> None:
        self.secure = secure
        self.run = SimpleNamespace(path=Path("in-memory"), load_updates=lambda r: {"num_samples": SIZES})
        ids = np.arange(100, 100 + len(GENDERS))
        self.truth = Truth(ids, tuple(("s",) * len(g) for g in GENDERS), tuple(GENDERS))
        majority = ["female" if g.count("female") > g.count("male") else "male" for g in GENDERS]
        self.obs = {
            r: Observation(
                r,
                initial_weights(CFG.model, N_MELS, r),
                ids,
                SIZES,
                None if secure else planted(majority, 10 + r),
                planted(["female" if r == 1 else "male"], 20 + r)[0],  # round 1's participants lean female
            )
            for r in (1, 2)
        }

    def select_rounds(self, requested=(), max_rounds=3) -> list[int]:
        return [1, 2]

    def observe(self, r: int):
        return self.obs[r], self.truth


@pytest.fixture()
def stand_ins(monkeypatch):
    """Shadow training replaced; returns the record of its calls and of the data check."""
    seen = {"updates": [], "trainer": [], "checked": []}

    def trainer(cfg, data, clients, privacy=None):
        seen["trainer"].append((cfg, data, len(clients), privacy))
        return "trainer"

    def updates(trainer, clients, weights, round_index, progress=None):
        seen["updates"].append((trainer, len(clients), weights, round_index))
        for i in range(len(clients)):
            if progress is not None:
                progress(i + 1, len(clients))
        return planted([c.genders[0] for c in clients], round_index)

    monkeypatch.setattr(gender, "client_trainer", trainer)
    monkeypatch.setattr(gender, "local_updates", updates)
    monkeypatch.setattr(gender, "check_data_matches", lambda o, d, r: seen["checked"].append(r))
    return seen


def attack(views, secure: bool = False, data: PreparedData = DATA, **fields):
    stages: list[tuple[str, int, int]] = []
    config = GenderAttackConfig(
        **{
            "views": views,
            "speeds": (1.0,),
            "bootstrap": 0,
            "control_repeats": 3,
            "shadow_clients": 6,
            **fields,
        }
    )
    observed = Run(secure)
    with threadpool_limits(1), torch_threads(1):  # tiny fits: extra BLAS/OpenMP threads only spin
        result = gender_attack(observed, data, config, progress=lambda *a: stages.append(a))
    return observed, result, {row.name: row for row in result.rows}, stages


COMBINED = "gender: per-client updates, all rounds combined"
SINGLE = "gender: per-client update, single rounds"
CONTROL = "gender: shuffled shadow labels (control)"
AGGREGATE = "gender: aggregate update"


def test_a_classifier_view_scores_each_client_over_its_rounds_and_reports_what_it_did(stand_ins):
    observed, result, rows, stages = attack((("fc-profile", 3),))
    assert list(rows) == [COMBINED, SINGLE, CONTROL, AGGREGATE]
    combined, single, control = rows[COMBINED], rows[SINGLE], rows[CONTROL]
    assert combined.metrics["auc"] > 0.9  # the tie client is left out: 9 female (one mixed), 8 male
    # called female at P >= 0.5: most clients right, in one round or over both
    assert combined.metrics["balanced_accuracy"] > 0.8 and single.metrics["balanced_accuracy"] > 0.8
    assert (combined.metrics["n_positive"], combined.metrics["n_negative"]) == (9, 8)
    assert combined.notes == [
        "clients [116, 117] hold speakers of both genders: labelled by majority (flagged)",
        "clients [117] have no majority gender (tie or unknown) and are left out",
        "score: P(female) from the mean log-odds over the client's rounds; threshold 0.5; 2 rounds; "
        "one score per client",
    ]
    assert [p["round"] for p in single.per_round] == [1, 2] and combined.per_round == single.per_round
    assert [p["n"] for p in single.per_round] == [17, 17] and single.metrics["n_positive"] == 18
    assert single.notes == ["one score per client and round; the bootstrap resamples clients"]
    # each of the 3 relabellings scores the 17 clients on its own, against their true genders
    assert control.control and (control.metrics["n_positive"], control.metrics["n_negative"]) == (27, 24)
    (note,) = control.notes
    assert re.fullmatch(
        r"3 relabellings, each independent of gender and speaker and kept over all rounds, scored as the "
        r"attack \(classifier views: the shadow voices relabelled, balanced within each auxiliary speaker, "
        r"and the classifiers refitted; probe: a random half of every auxiliary voice's utterances called "
        r"female\): AUC should be about 0\.5; single relabellings give AUC 0\.\d\d \+- 0\.\d\d \(mean \+- "
        r"sd of 3\), a spread the client bootstrap interval does not include",
        note,
    ), note
    assert {combined.party, single.party, control.party} == {"server"}
    assert {combined.observed, single.observed, control.observed} == {PER_CLIENT}
    # shadow training: the default size (the clients' median 5, capped at 3/4 of 6 utterances a voice)
    assert result.config["shadow_size"] == 4 and result.config["feature_count"] == {"fc-profile": 16}
    assert result.config["rounds"] == [1, 2] and result.config["speeds"] == [1.0]
    assert (result.attack, result.run, result.observed, result.seed) == ("gender", "in-memory", PER_CLIENT, 0)
    assert [(n, w is observed.obs[r].weights, r) for _, n, w, r in stand_ins["updates"]] == [
        (6, True, 1),
        (6, True, 2),
    ]
    assert [(n, p) for _, _, n, p in stand_ins["trainer"]] == [(6, {"mode": "none"})] * 2
    assert stand_ins["checked"] == [1]
    assert stages == [("gender: shadow clients", j * 6 + d, 12) for j in (0, 1) for d in range(1, 7)]
    assert result.notes == [
        "attacker (the server): 8 auxiliary speakers (48 utterances), disjoint from training, at speeds 1 "
        "(8 voices); 6 shadow clients of 4 utterances per round, 2 rounds; views (feature set: top-k client "
        "directions per round, 0 = all values; log-odds averaged over the classifier views): "
        "fc-profile (16 values): k = [3]; classifier: logreg"
    ]
    assert 0 < result.seconds < 300  # the elapsed time of this call, not a clock reading


def test_speed_perturbed_voices_are_relabelled_within_each_real_speaker_and_named_in_the_notes(
    stand_ins, monkeypatch
):
    """With several speeds each (speaker, speed) is a voice; the control's random labels are balanced
    within each real speaker (its speeds), so a speaker's own voice cannot carry the control."""
    import dataclasses

    from privfl.attacks.shadow import SPEED_MARK
    from privfl.data.dataset import SpeechSet

    asked, strata_seen = [], []

    def voices(data, cfg, speeds):
        asked.append((data, cfg, speeds))
        return SpeechSet.concat(
            [
                dataclasses.replace(AUX, speakers=tuple(f"{s}{SPEED_MARK}{f:g}" for s in AUX.speakers))
                for f in speeds
            ]
        )

    real = gender.shuffled_labels

    def spy(labels, rng, strata=None):
        strata_seen.append(None if strata is None else list(strata))
        return real(labels, rng, strata=strata)

    monkeypatch.setattr(gender, "auxiliary_speech", voices)
    monkeypatch.setattr(gender, "shuffled_labels", spy)
    data = dataclasses.replace(DATA, corpus="a corpus with audio")  # speeds need the audio to perturb
    observed, result, rows, _ = attack((("fc-profile", 3),), data=data, speeds=(0.9, 1.0))
    assert asked == [(data, observed.config, (0.9, 1.0))]
    speakers = sorted(set(AUX.speakers))
    # the first three: one relabelling of the voices per control repeat (then the probe's, per utterance)
    assert strata_seen[:3] == [sorted(speakers * 2)] * 3
    assert "at speeds 0.9, 1 (16 voices)" in result.notes[0]
    assert rows[CONTROL].metrics is not None


def test_the_aggregate_row_scores_each_round_by_its_participants_sample_weighted_majority(stand_ins):
    _, _, rows, _ = attack((("fc-profile", 0), ("first-layer", 0)))
    per_round = rows[AGGREGATE].per_round
    # female share by samples over the clients with a gender: 8 x 5 + 9 of 16 x 5 + 9 (the tie left out)
    share = (8 * 5 + 9) / (16 * 5 + 9)
    assert [(p["round"], p["female_share"], p["clients"]) for p in per_round] == [
        (1, pytest.approx(share), 18),
        (2, pytest.approx(share), 18),
    ]
    assert per_round[0]["score"] > 0.5 > per_round[1]["score"]  # round 1's aggregate leans female


def test_the_probe_alone_trains_no_shadows_and_cannot_attack_the_aggregate(stand_ins):
    _, result, rows, stages = attack((("probe", 0),))
    assert stand_ins["updates"] == [] and stand_ins["trainer"] == []
    assert stages == [("gender: auxiliary voices", 1, 2), ("gender: auxiliary voices", 2, 2)]
    assert list(rows) == [COMBINED, SINGLE, CONTROL, AGGREGATE]
    assert rows[COMBINED].notes[-1] == (
        "score: sigmoid of the probe's mean score over the client's rounds; threshold 0.5 (the mean); "
        "2 rounds; one score per client"
    )
    assert rows[AGGREGATE].observed == "aggregate"
    assert rows[AGGREGATE].metrics is None and rows[AGGREGATE].reason.startswith(
        "the 'probe' view ranks a round's clients against each other, and a round has one aggregate; add a "
        "classifier view (e.g. --views fc-profile:3,probe)"
    )
    assert result.config["feature_count"] == {}
    assert result.notes == [
        "attacker (the server): 8 auxiliary speakers (48 utterances), disjoint from training, at speeds 1 "
        "(8 voices); no shadow clients, 2 rounds; views (feature set: top-k client "
        "directions per round, 0 = all values; log-odds averaged over the classifier views): probe (each "
        "client's model w_t + delta_k, head only, on the 48 auxiliary utterances of 8 voices: loss drop from "
        "w_t, female voices minus male)"
    ]


def speed_voices(data, cfg, speeds):
    """The auxiliary speech at `speeds`, each (speaker, speed) a voice named as auxiliary_speech names them,
    and a higher speed putting more energy into the upper half of the Mel bands."""
    import dataclasses

    from privfl.attacks.shadow import SPEED_MARK
    from privfl.data.dataset import SpeechSet

    parts = []
    for f in speeds:
        tilt = torch.linspace(-1.0, 1.0, N_MELS) * 20.0 * float(np.log(f))
        mark = "" if f == 1.0 else f"{SPEED_MARK}{f:g}"
        parts.append(
            dataclasses.replace(AUX, x=AUX.x + tilt, speakers=tuple(f"{s}{mark}" for s in AUX.speakers))
        )
    return SpeechSet.concat(parts)


def test_the_activation_pitch_view_alone_trains_no_shadows_and_says_what_it_read(stand_ins, monkeypatch):
    import dataclasses

    monkeypatch.setattr(gender, "auxiliary_speech", speed_voices)
    data = dataclasses.replace(DATA, corpus="a corpus with audio")  # speeds need the audio to perturb
    _, result, rows, stages = attack((("activation-pitch", 0),), data=data, speeds=(0.9, 1.0, 1.1))
    assert stand_ins["updates"] == [] and stand_ins["trainer"] == []
    assert stages == [("gender: auxiliary voices", 1, 2), ("gender: auxiliary voices", 2, 2)]
    assert rows[COMBINED].notes[-1] == (
        "score: sigmoid of the activation-pitch view's mean score over the client's rounds; threshold 0.5 "
        "(the mean); 2 rounds; one score per client"
    )
    assert rows[CONTROL].notes[0].startswith("3 relabellings") and (
        "; activation-pitch: a random target per auxiliary utterance, made orthogonal to the log speed "
        "within each auxiliary speaker, and the direction refitted): AUC should be about 0.5"
        in rows[CONTROL].notes[0]
    )
    assert rows[AGGREGATE].reason.startswith(
        "the 'activation-pitch' view ranks a round's clients against each"
    )
    assert result.config["feature_count"] == {"fc-profile": 16}
    assert result.notes == [
        "attacker (the server): 8 auxiliary speakers (48 utterances), disjoint from training, at speeds 0.9, "
        "1, 1.1 (24 voices); no shadow clients, 2 rounds; views (feature set: top-k client directions per "
        "round, 0 = all values; log-odds averaged over the classifier views): activation-pitch (the 144 "
        "auxiliary utterances' head inputs under w_t regressed on log speed within each auxiliary speaker, "
        "each client's fc-profile (16 values) projected on it; higher voice = female, no gender labels)"
    ]


def test_the_probe_and_a_classifier_view_are_rank_averaged_and_say_so(stand_ins):
    _, result, rows, _ = attack((("fc-profile", 3), ("probe", 0)))
    assert rows[COMBINED].notes[-1].startswith("score: the mean of two ranks among the clients")
    assert 0 <= min(rows[COMBINED].roc["fpr"]) and rows[AGGREGATE].per_round
    assert "; the probe's and the classifier views' per-client scores rank-averaged): " in result.notes[0]
    assert result.notes[0].endswith(
        "fc-profile (16 values): k = [3], probe (each client's model w_t + "
        "delta_k, head only, on the 48 auxiliary utterances of 8 voices: loss "
        "drop from w_t, female voices minus male); classifier: logreg"
    )


def test_under_secure_aggregation_only_the_aggregate_is_attacked(stand_ins):
    _, _, rows, _ = attack((("fc-profile", 3),), secure=True)
    assert list(rows) == [COMBINED, AGGREGATE]
    assert rows[COMBINED].metrics is None and rows[COMBINED].reason.startswith(NOT_OBSERVED)
    assert len(rows[AGGREGATE].per_round) == 2


def test_an_explicit_shadow_size_seed_and_bootstrap_are_used_and_recorded(stand_ins):
    _, result, rows, _ = attack((("fc-profile", 3),), shadow_size=3, seed=5, bootstrap=20)
    assert result.config["shadow_size"] == 3 and result.seed == 5 and result.config["seed"] == 5
    assert "6 shadow clients of 3 utterances per round" in result.notes[0]
    for name in (COMBINED, SINGLE, CONTROL):  # each resamples as configured and thresholds at one half
        m = rows[name].metrics
        assert (m["bootstrap"]["resamples"], m["bootstrap"]["seed"], m["threshold_rule"]) == (20, 5, "given")
    # one score per client is resampled as is; single rounds and the control's relabellings by client
    units = [rows[name].metrics["bootstrap"]["unit"] for name in (COMBINED, SINGLE, CONTROL)]
    assert units == ["score", "group", "group"]


def test_single_rounds_and_the_control_are_resampled_by_client(stand_ins, monkeypatch):
    """The bootstrap's clusters: a client's scores of every round (and relabelling) resampled together."""
    seen = {}
    real = gender.scored_row

    def spy(name, observed, scores, labels, **kw):
        seen[name] = (np.asarray(scores), np.asarray(labels), kw.get("groups"))
        return real(name, observed, scores, labels, **kw)

    monkeypatch.setattr(gender, "scored_row", spy)
    _, _, rows, _ = attack((("fc-profile", 3),))
    for name in (COMBINED, SINGLE, CONTROL):  # each decides at P >= 0.5
        scores, labels, _ = seen[name]
        assert rows[name].metrics["balanced_accuracy"] == balanced_accuracy(scores >= 0.5, labels), name
    ids = list(range(100, 117))  # the 17 clients with a gender (117 is a tie)
    scores, labels, groups = seen[SINGLE]
    assert sorted(groups.tolist()) == sorted(ids * 2) and len(scores) == len(labels) == 34
    assert seen[COMBINED][2] is None and len(seen[COMBINED][0]) == 17  # one score per client
    scores, labels, groups = seen[CONTROL]
    assert sorted(groups.tolist()) == sorted(ids * 3) and len(scores) == 51  # 3 relabellings
    majority = {100 + i: int(i % 2 == 1 or i == 16) for i in range(17)}  # odd clients and 116 female
    assert labels.tolist() == [majority[g] for g in groups.tolist()]  # the true labels, client by client


def test_the_control_is_the_same_in_two_runs_with_one_seed(stand_ins):
    """Its relabellings come from the attack's seed: a rerun reproduces the control row exactly."""
    first, second = (attack((("fc-profile", 3), ("probe", 0)), seed=2)[2][CONTROL] for _ in range(2))
    assert first.roc == second.roc and first.metrics == second.metrics


def kept_items(monkeypatch) -> dict:
    """What the attack hands to its row builder: {"single": its Scored items, "controls": the control's},
    filled in when the attack runs."""
    kept: dict = {}
    rows = gender._per_client_rows

    def keep(single, controls, config, observed):
        kept["single"], kept["controls"] = list(single), list(controls)
        return rows(single, controls, config, observed)

    monkeypatch.setattr(gender, "_per_client_rows", keep)
    return kept


def test_each_control_relabelling_scores_the_clients_with_its_own_activation_pitch_targets(
    stand_ins, monkeypatch
):
    """The attack's scores come from the log speed, relabelling k's from its own random targets: one solve
    scores them all, so a column off by one would hand the attack's scores to the control."""
    import dataclasses

    monkeypatch.setattr(gender, "auxiliary_speech", speed_voices)
    kept = kept_items(monkeypatch)
    data = dataclasses.replace(DATA, corpus="a corpus with audio")
    observed, *_ = attack((("activation-pitch", 0),), data=data, speeds=(0.9, 1.0, 1.1))
    aux = speed_voices(data, observed.config, (0.9, 1.0, 1.1))
    labels = gender.ControlLabels.draw(aux, 3, 0)
    for r in (1, 2):
        obs = observed.obs[r]
        inputs = gender.head_inputs(MODEL, obs.weights, aux).double().numpy()
        real = gender.FeatureMap.of(MODEL, "fc-profile")(obs.deltas)
        voices = np.array(aux.speakers)
        want = gender.activation_pitch_scores(inputs, voices, real)
        got = [t.activation_pitch for t in kept["single"] if t.round == r]
        np.testing.assert_allclose(got, want, atol=1e-9)
        for k, target in enumerate(labels.activation_pitch):
            want = gender.activation_pitch_scores(inputs, voices, real, target)
            got = [t.activation_pitch for t in kept["controls"] if t.round == r and t.relabelling == k]
            np.testing.assert_allclose(got, want, atol=1e-9)


def test_the_reconstruction_view_scores_each_round_and_relabelling_with_its_own_labels(
    stand_ins, monkeypatch
):
    """The attack's scores: a classifier of the auxiliary utterances' true genders; relabelling k's: the same
    refitted on the probe's random halves k; both applied to the clients' reconstructed fc1 inputs."""
    kept = kept_items(monkeypatch)
    observed, result, by_name, stages = attack((("reconstruction", 0),))
    assert stand_ins["updates"] == [] and stages[0] == ("gender: auxiliary voices", 1, 2)
    labels = gender.ControlLabels.draw(AUX, 3, 0)
    female = np.array([int(g == "female") for g in AUX.genders])
    at = layer_slices(MODEL)
    for r in (1, 2):
        obs = observed.obs[r]
        inputs = gender.head_inputs(MODEL, obs.weights, AUX).double().numpy()
        rec = gender.reconstructed_inputs(obs.deltas, at["fc1.weight"], at["fc1.bias"], 8)
        got = [t.reconstruction for t in kept["single"] if t.round == r]
        np.testing.assert_allclose(got, gender.reconstruction_scores(inputs, female, rec), atol=1e-9)
        for k in range(3):
            got = [t.reconstruction for t in kept["controls"] if t.round == r and t.relabelling == k]
            want = gender.reconstruction_scores(inputs, labels.probe[k][0], rec)
            np.testing.assert_allclose(got, want, atol=1e-9)
    assert by_name[COMBINED].notes[-1].startswith("score: sigmoid of the reconstruction view's mean score")
    assert result.notes[0].endswith(
        "reconstruction (each client's mean head input reconstructed from fc1's update, dW^T db / |db|^2, "
        "scored by a logistic regression of gender on the 48 auxiliary utterances' head inputs under w_t)"
    )
