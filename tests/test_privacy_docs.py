"""README's privacy claims are docs/privacy.md's, word for word, and both match privfl.observers."""

from __future__ import annotations

from pathlib import Path

from privfl.observers import Setting, record_level, user_level

REPO = Path(__file__).resolve().parents[1]


def party_table(path: Path) -> dict[str, dict[str, str]]:
    """The first '| party | ...' table of a Markdown file: party -> {column: cell}."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| party |"))
    head = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(head[1:], cells[1:], strict=True))
    return rows


def test_readme_privacy_table_is_the_docs_table_word_for_word():
    readme, docs = party_table(REPO / "README.md"), party_table(REPO / "docs" / "privacy.md")
    assert set(readme) == set(docs) == {"released model", "run directory", "server", "another client"}
    for party, cells in readme.items():
        for mode, claim in cells.items():
            assert docs[party][mode] == claim, (party, mode)


def test_docs_table_says_none_exactly_where_the_code_reports_no_bound():
    docs = party_table(REPO / "docs" / "privacy.md")
    names = {"released_model": "released model", "run_directory": "run directory", "server": "server"}
    names["other_client"] = "another client"
    cases = {
        "`dp` (record-level)": record_level(1.0, 1e-5, Setting()),
        "`dp` + `--secure-agg ckks`": record_level(1.0, 1e-5, Setting(encrypted=True)),
        "`user-dp`": user_level(1.0, 2.0, 1e-5, 0.5, Setting()),
    }
    for mode, observers in cases.items():
        for key, o in observers.items():
            cell = docs[names[key]][mode]
            assert cell.startswith("none") == (o["epsilon"] is None), (mode, key, cell)
            if o["epsilon"] == 2.0:  # the q = 1 figure
                assert "q = 1" in cell, (mode, key, cell)
    recorded = user_level(1.0, 2.0, 1e-5, 0.5, Setting(recorded_updates=True))
    assert recorded["run_directory"]["epsilon"] is None
    assert "none with `--record-updates`" in docs["run directory"]["`user-dp`"]
