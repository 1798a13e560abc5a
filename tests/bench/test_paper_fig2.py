"""paper-fig2: the paper's settings, and a tiny run through the CLI that writes the figure and the table."""

from __future__ import annotations

import csv
import json

from click.testing import CliRunner

from privfl.bench.cli import bench
from privfl.bench.paper_fig2 import PAPER_LSTM_UAR, fig2_settings, paper_base


def test_default_settings_are_eight_paper_curves():
    s = fig2_settings()
    assert len(s) == 8 and len({x.id for x in s}) == 8
    assert {x.model for x in s} == {"cnn", "lstm"} and {x.clients for x in s} == {5, 10}
    assert {(x.batch_size, x.local_epochs) for x in s} == {(10, 1), (20, 5)}
    assert s[0].label == "CNN, K=5, B=10, E=1"
    from privfl.bench.paper_fig2 import ALL_BE

    assert len(fig2_settings(be=ALL_BE)) == 16


def test_paper_protocol():
    cfg = paper_base(rounds=200).validate()
    assert cfg.train.lr == 0.01 and cfg.train.rounds == 200 and cfg.data.partition == "iid"
    assert cfg.train.mode == "fedavg" and cfg.train.fraction == 1.0 and cfg.data.aux_speakers == 0


def test_tiny_figure_table_and_reuse(tmp_path):
    from tests.bench.conftest import TINY

    sets = [
        a
        for k, v in TINY.items()
        if k not in ("train.clients", "train.rounds", "train.batch_size")
        for a in ("--set", f"{k}={v}")
    ]
    out = tmp_path / "fig2"
    args = [
        "paper-fig2",
        "--model",
        "cnn",
        "--model",
        "lstm",
        "--clients",
        "2",
        "--be",
        "4x1",
        "--rounds",
        "2",
        "--out",
        str(out),
        *sets,
    ]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    for name in ("fig2.png", "fig2.md", "fig2.json", "fig2.csv"):
        assert (out / name).stat().st_size > 0
    md = (out / "fig2.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| CNN") or line.startswith("| LSTM")]
    assert [r.split("|")[1].strip() for r in rows] == ["CNN, K=2, B=4, E=1", "LSTM, K=2, B=4, E=1"]
    assert f"| {PAPER_LSTM_UAR:.1f} |" in rows[1] and "| — |" in rows[0]
    curve = list(csv.DictReader((out / "fig2.csv").open()))
    assert [(r["setting"], r["round"]) for r in curve] == [
        ("cnn-k2-b4-e1", "1"),
        ("cnn-k2-b4-e1", "2"),
        ("lstm-k2-b4-e1", "1"),
        ("lstm-k2-b4-e1", "2"),
    ]
    summaries = sorted(out.glob("runs/*/summary.json"))
    assert len(summaries) == 2
    before = [p.stat().st_mtime_ns for p in summaries]
    again = CliRunner().invoke(bench, args)
    assert again.exit_code == 0, again.output
    assert [p.stat().st_mtime_ns for p in summaries] == before
    doc = json.loads((out / "fig2.json").read_text())
    assert [r["status"] for r in doc["runs"]] == ["reused", "reused"]
