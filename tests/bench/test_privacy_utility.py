"""privacy-utility end to end on a tiny grid (outputs, rows, reuse, resume, skips) and its arithmetic."""

from __future__ import annotations

import csv
import json
import math

import pytest
from click.testing import CliRunner

from privfl.attacks.result import AttackResult, AttackRow
from privfl.bench.cli import bench
from privfl.bench.grid import Grid, GridPoint
from privfl.bench.points import DONE, EXTEND, run_state
from privfl.bench.privacy_utility import (
    bytes_per_client_round,
    run_privacy_utility,
    spread,
    summarise_attacks,
)
from privfl.errors import ConfigError

POINTS = ["fedavg", "record-dp-sigma1"]


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """The CLI on the tiny grid TOML, once for the module: (grid file, out dir, CLI result)."""
    from privfl.config import ExperimentConfig
    from tests.bench.conftest import TINY, TINY_ATTACKABLE, TINY_ATTACKS

    grid = Grid(
        "tiny",
        ExperimentConfig().override({**TINY, **TINY_ATTACKABLE}),
        (
            GridPoint("fedavg", "none"),
            GridPoint("record-dp-sigma1", "record-dp", (("train.mode", "dp"), ("dp.noise_multiplier", 1.0))),
        ),
        (0,),
        TINY_ATTACKS,
    )
    root = tmp_path_factory.mktemp("pu")
    path = root / "tiny.toml"
    path.write_text(grid.to_toml())
    out = root / "out"
    result = CliRunner().invoke(bench, ["privacy-utility", "--config", str(path), "--out", str(out)])
    return path, out, result


def _rerun(path, out, *extra):
    return CliRunner().invoke(bench, ["privacy-utility", "--config", str(path), "--out", str(out), *extra])


def test_writes_every_output(grid_run):
    _, out, result = grid_run
    assert result.exit_code == 0, result.output
    for name in (
        "results.csv",
        "runs.csv",
        "results.json",
        "results.md",
        "grid.toml",
        "uar_vs_epsilon.png",
        "attack_vs_epsilon.png",
        "frontier.png",
    ):
        assert (out / name).stat().st_size > 0, name
    for p in POINTS:
        run = out / "points" / f"{p}-s0"
        for name in ("summary.json", "bench.json", "attacks/attack.json", "config.toml"):
            assert (run / name).exists(), f"{p}: {name}"


def test_table_has_one_row_per_point_with_the_right_numbers(grid_run):
    _, out, result = grid_run
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["point"] for r in rows] == POINTS
    plain, dp = rows
    assert plain["defence"] == "none" and plain["epsilon"] == "inf" and plain["delta"] == ""
    assert dp["defence"] == "record-dp" and 0 < float(dp["epsilon"]) < math.inf and 0 < float(dp["delta"]) < 1
    for point, r in zip(POINTS, rows, strict=True):
        # each table cell is its run's own number: final test UAR from summary.json, membership the
        # strongest non-control row of attack.json, gender its per-client (server's view) row
        run = out / "points" / f"{point}-s0"
        summary = json.loads((run / "summary.json").read_text())
        attacks = json.loads((run / "attacks" / "attack.json").read_text())["attacks"]
        assert float(r["test_uar_mean"]) == pytest.approx(summary["final_test_uar"], rel=1e-5)
        scored = [m for m in attacks["membership"]["rows"] if not m["control"] and m["metrics"]]
        assert float(r["membership_auc_mean"]) == pytest.approx(
            max(m["metrics"]["auc"] for m in scored), rel=1e-5
        )
        tpr = max(m["metrics"]["tpr_at_1pct_fpr"] for m in scored)
        assert float(r["membership_tpr_1pct_mean"]) == pytest.approx(tpr, rel=1e-5)
        assert float(r["bytes_up_per_client_round"]) > 0
    gender = json.loads((out / "points" / "fedavg-s0" / "attacks" / "attack.json").read_text())["attacks"][
        "gender"
    ]
    per_client = next(g for g in gender["rows"] if "per-client" in g["name"] and not g["control"])
    assert float(plain["gender_auc_mean"]) == pytest.approx(per_client["metrics"]["auc"], rel=1e-5)
    md = (out / "results.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert [line.split("|")[1].strip() for line in table[1:3]] == POINTS
    assert "privfl bench privacy-utility --config" in md and "![frontier.png](frontier.png)" in md
    doc = json.loads((out / "results.json").read_text())
    assert doc["points"][0]["epsilon"] is None and doc["points"][0]["runs"][0]["epsilon"] == "inf"
    assert set(doc["timings"]["stages_s"]) == {"setup", "train", "attacks", "report"}
    # the run's own numbers are the table's
    summary = json.loads((out / "points" / "fedavg-s0" / "summary.json").read_text())
    assert float(plain["test_uar_mean"]) == pytest.approx(summary["final_test_uar"], rel=1e-5)
    assert "stages (this invocation)" in result.output or "stages" in result.output


def test_rerun_reuses_every_point(grid_run):
    path, out, _ = grid_run
    files = [out / "points" / f"{p}-s0" / name for p in POINTS for name in ("summary.json", "bench.json")]
    before = {f: f.stat().st_mtime_ns for f in files}
    result = _rerun(path, out)
    assert result.exit_code == 0, result.output
    assert {f: f.stat().st_mtime_ns for f in files} == before  # nothing retrained, nothing re-attacked
    doc = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in doc["timings"]["runs"]] == ["reused", "reused"]
    assert doc["timings"]["stages_s"]["train"] == 0.0 and doc["timings"]["stages_s"]["attacks"] == 0.0


def test_a_point_whose_attacks_failed_is_attacked_again_not_reused(grid_run):
    path, out, _ = grid_run
    run = out / "points" / "fedavg-s0"
    bench_file = run / "bench.json"
    good = json.loads(bench_file.read_text())
    failed = {**good, "attacks": {"error": "replay did not reproduce the recorded update"}}
    bench_file.write_text(json.dumps(failed))
    summary = (run / "summary.json").stat().st_mtime_ns
    result = _rerun(path, out)
    assert result.exit_code == 0, result.output
    again = json.loads(bench_file.read_text())["attacks"]
    assert "error" not in again and set(again) == set(good["attacks"])  # attacked again
    for name, block in good["attacks"].items():  # with the same seed: the same numbers
        assert {k: v for k, v in again[name].items() if k != "seconds"} == {
            k: v for k, v in block.items() if k != "seconds"
        }, name
    assert (run / "summary.json").stat().st_mtime_ns == summary  # not retrained
    doc = json.loads((out / "results.json").read_text())
    assert doc["timings"]["stages_s"]["attacks"] > 0.0


def test_unfinished_point_is_resumed_not_retrained(grid_run):
    path, out, _ = grid_run
    run = out / "points" / "record-dp-sigma1-s0"
    (run / "summary.json").unlink()  # as if stopped after its last checkpoint
    plain = out / "points" / "fedavg-s0" / "summary.json"
    before = plain.stat().st_mtime_ns
    result = _rerun(path, out)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in doc["timings"]["runs"]] == ["reused", "resumed"]
    assert plain.stat().st_mtime_ns == before
    rounds = [json.loads(line)["round"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2]  # the checkpoint was at round 2: nothing ran again


def test_a_directory_of_another_experiment_is_refused(grid_run):
    path, out, _ = grid_run
    result = _rerun(path, out, "--set", "train.lr=0.02")
    assert result.exit_code == 2
    assert "another experiment" in result.output and "train.lr" in result.output


def test_more_rounds_extend_a_finished_run(grid_run):
    _, out, _ = grid_run
    from privfl.runs import RunDir

    run = out / "points" / "fedavg-s0"
    cfg = RunDir.open(run).config()
    assert run_state(run, cfg) == DONE
    assert run_state(run, cfg.override({"train.rounds": 3})) == EXTEND
    with pytest.raises(ConfigError, match="cannot be shortened"):
        run_state(run, cfg.override({"train.rounds": 1}))


def test_missing_defence_is_skipped_with_a_message(tmp_path, tiny_grid, monkeypatch):
    import privfl.bench.privacy_utility as pu

    monkeypatch.setattr(
        pu,
        "missing_for",
        lambda cfg: "CKKS secure aggregation needs tenseal (test)" if cfg.secure.scheme == "ckks" else None,
    )
    grid = Grid(
        "skip",
        tiny_grid.base,
        (GridPoint("secagg", "secagg", (("secure.scheme", "ckks"),)),),
        (0,),
        tiny_grid.attacks,
    )
    notes = []

    class Notes(pu.Reporter):
        def note(self, text):
            notes.append(text)

    doc = run_privacy_utility(grid, tmp_path / "out", reporter=Notes())
    assert doc["skipped"] == [
        {"point": "secagg", "defence": "secagg", "reason": "CKKS secure aggregation needs tenseal (test)"}
    ]
    assert not (tmp_path / "out" / "points").exists()
    assert "skipped point secagg" in (tmp_path / "out" / "results.md").read_text()
    assert any("secagg" in n for n in notes)


def test_folds_instead_of_seeds(tmp_path, tiny_grid):
    """--folds K: one run per speaker fold (seed 0), disjoint test speakers, mean +- sd over folds."""
    grid = tiny_grid.with_base({"data.speakers": 12})  # 3 folds of 4 test speakers, 5 train each
    path = tmp_path / "g.toml"
    path.write_text(grid.to_toml())
    out = tmp_path / "out"
    args = ["privacy-utility", "--config", str(path), "--out", str(out), "--only", "fedavg", "--no-attacks"]
    result = CliRunner().invoke(bench, [*args, "--folds", "3"])
    assert result.exit_code == 0, result.output
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert [(r["seed"], r["fold"]) for r in runs] == [("0", "1"), ("0", "2"), ("0", "3")]
    tests = [json.loads((out / "points" / f"fedavg-s0-f{f}" / "summary.json").read_text()) for f in (1, 2, 3)]
    speakers = [s for t in tests for s in t["split"]["test"]]
    assert len(speakers) == len(set(speakers)) == 12  # every speaker tests exactly once
    row = next(csv.DictReader((out / "results.csv").open()))
    assert (row["n_seeds"], row["n_folds"]) == ("1", "3")
    uars = [t["final_test_uar"] for t in tests]
    assert float(row["test_uar_mean"]) == pytest.approx(sum(uars) / 3, abs=1e-5)
    assert "speaker folds [1, 2, 3] of 3" in (out / "results.md").read_text()
    bad = CliRunner().invoke(bench, [*args, "--folds", "1"])
    assert bad.exit_code == 2 and "--folds must be >= 2" in bad.output


# --- arithmetic ---------------------------------------------------------------------------------
def test_spread_over_seeds():
    s = spread([0.1, 0.2, 0.3, None])
    assert s["mean"] == pytest.approx(0.2) and s["sd"] == pytest.approx(0.1) and s["n"] == 3
    assert spread([0.4])["sd"] == 0.0 and spread([None]) is None


def test_bytes_per_client_round():
    metrics = [
        {"clients": 4, "bytes_up": 400},
        {"clients": 2, "bytes_up": 200},
        {"clients": 0, "bytes_up": 0},
    ]
    assert bytes_per_client_round(metrics) == 100.0
    assert bytes_per_client_round([]) is None


def _row(name, auc, tpr, control=False, reason=""):
    metrics = (
        None
        if auc is None
        else {
            "auc": auc,
            "tpr_at_1pct_fpr": tpr,
            "balanced_accuracy": 0.5,
            "n_positive": 4,
            "n_negative": 4,
            "fpr_resolution": 0.25,
        }
    )
    return AttackRow(name, "x", metrics=metrics, control=control, reason=reason)


def test_summary_takes_the_strongest_membership_variant_and_ignores_controls():
    gender = AttackResult(
        "gender",
        "r",
        "aggregate update only (secure aggregation)",
        {},
        0,
        rows=[
            _row(
                "gender: per-client update",
                None,
                None,
                reason="no per-client update was observed (secure aggregation)",
            ),
            _row("gender: shuffled shadow labels (control)", 0.9, 0.9, control=True),
        ],
    )
    member = AttackResult(
        "membership",
        "r",
        "x",
        {},
        0,
        rows=[
            _row("membership: loss threshold (final model)", 0.6, 0.3),
            _row("membership: update alignment (per-client update)", 0.7, 0.1),
            _row("membership: alignment with another client's update (control)", 0.95, 0.9, control=True),
        ],
    )
    s = summarise_attacks([gender, member])
    assert "auc" not in s["gender"] and "secure aggregation" in s["gender"]["reason"]
    assert (
        s["membership"]["auc"] == 0.7
        and s["membership"]["auc_attack"] == "update alignment (per-client update)"
    )
    assert (
        s["membership"]["tpr_at_1pct_fpr"] == 0.3
        and s["membership"]["tpr_attack"] == "loss threshold (final model)"
    )
    assert s["membership"]["control_auc"] == 0.95
