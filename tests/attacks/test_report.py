"""attack.json: one section per attack, merged across calls for the same run only."""

import json

from privfl.attacks.observe import ObservedRun
from privfl.attacks.report import REPORT_VERSION, report_document, write_report
from privfl.attacks.result import AttackResult


def result(attack: str, seed: int) -> AttackResult:
    return AttackResult(attack=attack, run="r", observed="per-client updates", config={}, seed=seed)


def test_sections_of_the_same_run_are_kept_and_replaced(tmp_path):
    first = report_document([result("gender", 1)], tmp_path, {}, None)
    second = report_document([result("membership", 2)], tmp_path, {}, None, previous=first)
    assert set(second["attacks"]) == {"gender", "membership"}
    third = report_document([result("gender", 3)], tmp_path, {}, None, previous=second)
    assert third["attacks"]["gender"]["seed"] == 3 and third["attacks"]["membership"]["seed"] == 2
    other = report_document([result("membership", 4)], tmp_path / "other", {}, None, previous=second)
    assert set(other["attacks"]) == {"membership"}  # another run's sections are not mixed in
    stale = dict(second, report_version=REPORT_VERSION + 1)
    assert set(report_document([], tmp_path, {}, None, previous=stale)["attacks"]) == set()


def test_write_report_writes_json_and_figures(recorded_run, tmp_path):
    observed = ObservedRun.open(recorded_run)
    out = tmp_path / "attacks"
    doc = write_report(out, observed, [result("gender", 5)])
    on_disk = json.loads((out / "attack.json").read_text())
    assert set(on_disk) == set(doc) and on_disk["attacks"]["gender"]["seed"] == 5
    assert doc["run_config"]["train"]["record_updates"] is True and doc["privacy"] is None
    assert (out / "roc.png").stat().st_size > 0 and (out / "rounds.png").stat().st_size > 0
    (out / "attack.json").write_text("{not json")
    assert set(write_report(out, observed, [result("membership", 6)])["attacks"]) == {"membership"}
