"""Attacks on a tiny recorded run: the library call, the CLI, the report files, and every bad input."""

from __future__ import annotations

import json
import shutil
import tomllib

import numpy as np
import pytest
import tomli_w
from click.testing import CliRunner

from privfl.attacks import GenderAttackConfig, MembershipAttackConfig, run_attacks, write_report
from privfl.attacks.cli import attack
from privfl.attacks.gender import parse_views
from privfl.config import ExperimentConfig
from privfl.data.dataset import prepare
from privfl.errors import AttackError, RunError
from privfl.experiment import train
from tests.attacks.conftest import RECORDED

FAST = [
    "--shadow-clients",
    "8",
    "--max-rounds",
    "1",
    "--alignment-rounds",
    "1",
    "--speeds",
    "1.0",
    "--bootstrap",
    "50",
    "--candidates",
    "6",
]


@pytest.fixture()
def run_copy(recorded_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(recorded_run, dst)
    return dst


def snapshot(path):
    return sorted((p.relative_to(path).as_posix(), p.stat().st_mtime_ns) for p in path.rglob("*"))


def test_library_call_scores_every_attack_and_writes_the_report(recorded_run, tmp_path):
    observed, results = run_attacks(
        recorded_run,
        gender=GenderAttackConfig(shadow_clients=8, bootstrap=50),
        membership=MembershipAttackConfig(candidates=6, max_rounds=1, bootstrap=50),
    )
    gender, membership = results
    names = [r.name for r in gender.rows]
    assert names == [
        "gender: per-client updates, all rounds combined",
        "gender: per-client update, single rounds",
        "gender: shuffled shadow labels (control)",
        "gender: aggregate update",
    ]
    combined, single, control = gender.rows[:3]
    assert gender.config["rounds"] == [1, 2]  # every recorded round by default
    assert combined.metrics["n_positive"] + combined.metrics["n_negative"] == 4  # one score per client
    assert single.metrics["n_positive"] + single.metrics["n_negative"] == 4 * 2  # 4 clients x 2 rounds
    assert [p["round"] for p in single.per_round] == [1, 2]
    assert control.control and control.metrics["n_positive"] == 20 * combined.metrics["n_positive"]
    assert {r.party for r in gender.rows} == {"server"}
    assert gender.config["speeds"] == [0.9, 1.0, 1.1]  # the synthetic corpus's audio, speed-perturbed
    rows = {r.name: r for r in membership.rows}
    speaker = rows["membership: speaker, per-client update alignment"]
    assert (speaker.metrics["n_positive"], speaker.metrics["n_negative"]) == (
        4,
        8,
    )  # speakers, not utterances
    # a training speaker's gradient points along its own client's update: no held-out speaker's does
    assert speaker.metrics["auc"] == 1.0, speaker.metrics
    assert rows["membership: speaker, final model loss"].party == "reader of the released model"
    loss = rows["membership: loss threshold (final model)"]
    assert loss.metrics["n_positive"] == loss.metrics["n_negative"] == 48  # balanced: 48 train utterances
    assert "Yeom" in loss.notes[0]
    align = rows["membership: update alignment (per-client update)"]
    assert align.metrics["n_positive"] == align.metrics["n_negative"] == 4 * 6
    assert "membership: alignment with another client's update (control)" in rows
    assert rows["membership: update alignment (aggregate update)"].metrics is not None

    doc = write_report(tmp_path / "out", observed, results)
    on_disk = json.loads((tmp_path / "out" / "attack.json").read_text())
    assert on_disk == json.loads(json.dumps(doc))
    assert set(on_disk["attacks"]) == {"gender", "membership"}
    assert (
        on_disk["attacks"]["gender"]["seed"] == 0
        and on_disk["attacks"]["gender"]["config"]["shadow_clients"] == 8
    )
    assert on_disk["run_config"]["train"]["clients"] == 4
    assert (tmp_path / "out" / "roc.png").stat().st_size > 0
    assert (tmp_path / "out" / "rounds.png").stat().st_size > 0


def test_membership_attacks_draw_non_members_from_held_out_speakers_only(recorded_run, monkeypatch):
    """Every set the loss and alignment attacks score: members trained on, non-members never seen."""
    from privfl.attacks import membership

    drawn, scored = [], []
    real_sets, real_cosines = membership.balanced_sets, membership.gradient_cosines

    def sets(members, nonmembers, rng, limit=0):
        drawn.append((set(members.ids), set(nonmembers.ids), set(nonmembers.speakers)))
        return real_sets(members, nonmembers, rng, limit)

    def cosines(model, weights, data, directions, progress=None):
        scored.append(data.x)
        return real_cosines(model, weights, data, directions, progress)

    monkeypatch.setattr(membership, "balanced_sets", sets)
    monkeypatch.setattr(membership, "gradient_cosines", cosines)
    observed, [result] = run_attacks(
        recorded_run,
        ("membership",),
        membership=MembershipAttackConfig(candidates=6, max_rounds=1, bootstrap=0),
    )
    data = prepare(observed.config)
    held_out = {*data.val.ids, *data.test.ids, *data.aux.ids}
    [(members, nonmembers, speakers)] = drawn
    assert members == set(data.train.ids) and nonmembers == held_out
    assert not speakers & set(data.split.train)
    # alignment: the candidates after the members are held-out utterances, bit for bit
    [x] = scored
    members_scored = 4 * 6  # 4 clients x 6 candidates
    train_x = data.train.x.flatten(1)
    for row in x[members_scored:].flatten(1):
        assert not (train_x == row).all(dim=1).any()


def test_same_seed_same_report(recorded_run):
    cfg = dict(
        gender=GenderAttackConfig(shadow_clients=4, max_rounds=1, speeds=(1.0,), bootstrap=20),
        membership=MembershipAttackConfig(methods=("loss",), bootstrap=20),
    )
    a = [r.to_dict() for r in run_attacks(recorded_run, **cfg)[1]]
    b = [r.to_dict() for r in run_attacks(recorded_run, **cfg)[1]]
    for x in a + b:
        x.pop("seconds")
    assert a == b


def test_cli_all_writes_into_run_attacks_by_default(run_copy):
    result = CliRunner().invoke(attack, ["all", "--run", str(run_copy), *FAST])
    assert result.exit_code == 0, result.output
    assert "gender attack" in result.output and "membership attack" in result.output
    doc = json.loads((run_copy / "attacks" / "attack.json").read_text())
    assert set(doc["attacks"]) == {"gender", "membership"}
    # a later single attack replaces its own section and keeps the other
    result = CliRunner().invoke(
        attack,
        [
            "gender",
            "--run",
            str(run_copy),
            "--seed",
            "5",
            "--shadow-clients",
            "4",
            "--max-rounds",
            "1",
            "--speeds",
            "1.0",
            "--bootstrap",
            "20",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads((run_copy / "attacks" / "attack.json").read_text())
    assert doc["attacks"]["gender"]["seed"] == 5 and doc["attacks"]["membership"]["seed"] == 0


@pytest.mark.parametrize("views", ["probe", "fc-profile:3,probe"])
def test_cli_gender_runs_the_probe_view_with_its_control(run_copy, tmp_path, views):
    out = tmp_path / views.replace(":", "-").replace(",", "+")
    args = ["gender", "--run", str(run_copy), "--views", views, "--out", str(out)]
    result = CliRunner().invoke(
        attack, args + ["--max-rounds", "1", "--speeds", "0.9,1.0", "--bootstrap", "20"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "attack.json").read_text())["attacks"]["gender"]
    rows = {r["name"]: r for r in doc["rows"]}
    assert doc["config"]["views"] == [list(v) for v in parse_views(views)]
    combined = rows["gender: per-client updates, all rounds combined"]
    control = rows["gender: shuffled shadow labels (control)"]
    assert combined["metrics"] is not None and control["metrics"] is not None
    assert "random half of every auxiliary voice" in " ".join(control["notes"])
    aggregate = rows["gender: aggregate update"]
    if views == "probe":  # nothing to rank one aggregate against; no shadow clients were trained
        assert "ranks a round's clients" in aggregate["reason"] and "no shadow clients" in " ".join(
            doc["notes"]
        )
    else:
        assert "rank" in " ".join(combined["notes"]) and "12 shadow clients" in " ".join(doc["notes"])


def _edit_toml(path, section, key, value):
    raw = tomllib.loads(path.read_text())
    raw.setdefault(section, {})[key] = value
    path.write_text(tomli_w.dumps(raw))


def _rewrite_genders(run, value):
    for f in (run / "updates").glob("round_*.npz"):
        with np.load(f) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["genders"] = np.array([value] * len(arrays["genders"]))
        np.savez_compressed(f, **arrays)


@pytest.mark.parametrize(
    ("damage", "command", "message"),
    [
        (lambda r: shutil.rmtree(r / "updates"), "gender", "no recorded client updates.*--record-updates"),
        (
            lambda r: shutil.rmtree(r / "updates"),
            "membership",
            "no recorded client updates.*--record-updates",
        ),
        (lambda r: (r / "run.json").write_text('{"privfl_format": 99}'), "all", "run format 99"),
        (lambda r: (r / "summary.json").unlink(), "all", "has not finished"),
        (lambda r: _rewrite_genders(r, "unknown"), "gender", "no usable gender labels"),
        # a run whose auxiliary split holds a single speaker: shadow training has one gender only
        (lambda r: _edit_toml(r / "config.toml", "data", "aux_speakers", 1), "gender", "both genders"),
        (lambda r: None, "gender --rounds 7", "round.s. 7 .* not recorded; recorded rounds are 1-2"),
    ],
)
def test_bad_input_exits_2_with_the_fix_and_writes_nothing(run_copy, damage, command, message):
    damage(run_copy)
    before = snapshot(run_copy)
    args = command.split() + ["--run", str(run_copy)]
    result = CliRunner().invoke(attack, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ")
    import re

    assert re.search(message, result.output.replace("\n", " ")), result.output
    assert snapshot(run_copy) == before
    assert not (run_copy / "attacks").exists()


def test_library_raises_privfl_errors(run_copy):
    shutil.rmtree(run_copy / "updates")
    with pytest.raises(AttackError, match="--record-updates"):
        run_attacks(run_copy)
    (run_copy / "config.toml").unlink()
    with pytest.raises(RunError, match="not a privfl run directory"):
        run_attacks(run_copy)


def test_loss_attack_alone_runs_without_recorded_updates(run_copy):
    shutil.rmtree(run_copy / "updates")
    _, [result] = run_attacks(
        run_copy, ("membership",), membership=MembershipAttackConfig(methods=("loss",), bootstrap=20)
    )
    assert result.rows[0].metrics is not None


def test_lira_runs_behind_its_flag(recorded_run):
    _, [result] = run_attacks(
        recorded_run,
        ("membership",),
        membership=MembershipAttackConfig(methods=("lira",), lira_shadows=2, lira_candidates=8, bootstrap=20),
    )
    [row] = result.rows
    assert row.name == "membership: LiRA (2 shadow federations)"
    assert row.metrics["n_positive"] == row.metrics["n_negative"] == 8
    assert result.config["lira_shadows"] == 2


def test_secure_aggregation_attacks_only_the_aggregate(run_copy):
    # the recorded run is relabelled as CKKS: the attacks must not read per-client updates
    _edit_toml(run_copy / "config.toml", "secure", "scheme", "ckks")
    observed, results = run_attacks(
        run_copy,
        gender=GenderAttackConfig(shadow_clients=4, speeds=(1.0,), bootstrap=20),
        membership=MembershipAttackConfig(candidates=4, max_rounds=1, bootstrap=20),
    )
    assert observed.observe(1)[0].deltas is None
    for result in results:
        assert result.observed == "aggregate update only (secure aggregation)"
        per_client = [r for r in result.rows if "per-client" in r.name]
        assert per_client and all(
            r.metrics is None
            and "no per-client update was observed" in r.reason
            and "key holder" in r.reason  # the party that could decrypt one is named, nothing is plotted
            for r in per_client
        )
    gender_agg = results[0].rows[-1]
    assert [p["round"] for p in gender_agg.per_round] == [1, 2]  # one aggregate score per round
    membership = {r.name: r for r in results[1].rows}
    assert membership["membership: update alignment (aggregate update)"].metrics is not None
    assert not any("another client" in name for name in membership)


def test_dp_claim_is_checked_and_plotted(run_copy, tmp_path):
    summary = json.loads((run_copy / "summary.json").read_text())
    summary["privacy"] = {"epsilon": 2.0, "delta": 1e-5, "unit": "utterance", "accountant": "rdp"}
    (run_copy / "summary.json").write_text(json.dumps(summary))
    observed, [result] = run_attacks(
        run_copy, ("membership",), membership=MembershipAttackConfig(candidates=4, max_rounds=1, bootstrap=20)
    )
    rows = {r.name: r for r in result.rows}
    dp = rows["membership: loss threshold (final model)"].dp
    assert dp["epsilon"] == 2.0 and dp["delta"] == 1e-5
    implied = dp["empirical_epsilon"]["point"]  # the largest epsilon one ROC point of the attack forces
    assert implied > 0.1  # no DP here: members and held-out speakers are told apart somewhat
    assert (dp["violations"] > 0) == (implied > 2.0)
    assert (
        dp["respects_bound"] == (dp["significant_violations"] == 0)
        and dp["significant_violations"] <= dp["violations"]
    )
    # the same attack against a claim it beats, and against one it cannot reach
    for claim, violated in ((implied / 2, True), (implied + 1.0, False)):
        summary["privacy"]["epsilon"] = claim
        (run_copy / "summary.json").write_text(json.dumps(summary))
        _, [again] = run_attacks(
            run_copy, ("membership",), membership=MembershipAttackConfig(methods=("loss",), bootstrap=0)
        )
        check = again.rows[0].dp
        assert check["epsilon"] == claim and (check["violations"] > 0) is violated, (claim, check)
        assert check["empirical_epsilon"]["point"] == pytest.approx(implied)
        if not violated:
            assert check["respects_bound"] and check["significant_violations"] == 0
    summary["privacy"]["epsilon"] = 2.0
    (run_copy / "summary.json").write_text(json.dumps(summary))
    # fedavg relabelled with a claim: user-level semantics, so per-client updates are not covered
    assert rows["membership: update alignment (per-client update)"].dp is None
    doc = write_report(tmp_path / "dp", observed, [result])
    assert doc["privacy"]["epsilon"] == 2.0 and (tmp_path / "dp" / "roc.png").exists()


def test_record_level_dp_run_replays_its_dp_sgd_clients_and_checks_the_claim(tmp_path):
    """Shadow and replayed clients use the run's DP-SGD trainer with its sigma; the claim is checked."""
    cfg = ExperimentConfig().override(
        {**RECORDED, "train.rounds": 1, "train.mode": "dp", "dp.noise_multiplier": 1.0}
    )
    train(cfg, tmp_path / "dp")
    observed, (gender, membership) = run_attacks(
        tmp_path / "dp",
        gender=GenderAttackConfig(shadow_clients=4, speeds=(1.0,), bootstrap=20),
        membership=MembershipAttackConfig(candidates=4, bootstrap=20),
    )
    assert observed.verified_rounds == {1}  # the DP-SGD replay reproduced the recorded update
    assert gender.rows[0].metrics is not None
    claim = observed.summary["privacy"]
    rows = {r.name: r for r in membership.rows}
    for name in (
        "membership: loss threshold (final model)",
        "membership: update alignment (per-client update)",
    ):
        assert rows[name].dp["epsilon"] == pytest.approx(claim["epsilon"])  # record-level DP covers both
