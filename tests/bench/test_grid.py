"""Grid TOML: the shipped grids load, round-trip, and bad grids fail before anything trains."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from privfl.bench.grid import AttackPlan, Grid, GridPoint, default_grid, defence_of
from privfl.config import ExperimentConfig
from privfl.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "configs"


def test_shipped_synthetic_grid_is_the_default_grid():
    assert Grid.from_toml(CONFIGS / "synthetic_cnn.toml") == default_grid()


def test_default_grid_covers_every_defence_and_fits_the_attacks():
    g = default_grid().validate()
    assert {p.defence for p in g.points} == {
        "none",
        "record-dp",
        "user-dp",
        "secagg",
        "record-dp+secagg",
        "user-dp+secagg",
    }
    assert {p.overrides_dict().get("secure.scheme") for p in g.points} == {None, "ckks", "secaggplus"}
    assert (
        sum(p.defence == "record-dp" for p in g.points) >= 2
        and sum(p.defence == "user-dp" for p in g.points) >= 2
    )
    assert g.seeds == (0, 1, 2)
    assert g.base.train.record_updates and g.base.data.partition == "by-speaker"
    # 24 speakers - 2 val - 2 test - 4 aux = 16 training speakers for the by-speaker clients
    d = g.base.data
    assert g.base.train.clients <= d.speakers - d.val_speakers - d.test_speakers - d.aux_count("speaker")


def test_iemocap_grid_needs_only_a_data_dir():
    g = Grid.from_toml(CONFIGS / "iemocap_lstm.toml")
    with pytest.raises(ConfigError, match="--data-dir"):
        g.validate()
    g = g.with_base({"data.data_dir": "/somewhere/IEMOCAP"}).validate()
    assert g.base.model.name == "lstm" and g.base.data.dataset == "iemocap"
    assert any(p.overrides_dict().get("dp.target_epsilon") for p in g.points)


@pytest.mark.parametrize("full", [True, False])
def test_toml_round_trip(tmp_path, full):
    g = default_grid()
    path = tmp_path / "g.toml"
    path.write_text(g.to_toml(full=full))
    assert Grid.from_toml(path) == g


def test_config_for_sets_the_seed_and_the_overrides():
    g = default_grid()
    cfg = g.config_for(g.point("record-dp-sigma1-secagg"), 2)
    assert cfg.seed == 2 and cfg.train.mode == "dp" and cfg.dp.noise_multiplier == 1.0
    assert cfg.secure.scheme == "ckks" and defence_of(cfg) == "record-dp+secagg"


def test_cli_style_changes():
    g = (
        default_grid()
        .with_base({"train.rounds": 3})
        .only(("fedavg", "secagg"))
        .with_seeds((5,))
        .without_attacks()
    )
    assert [p.name for p in g.points] == ["fedavg", "secagg"] and g.seeds == (5,) and g.attacks.which == ()
    assert g.config_for(g.points[0], 5).train.rounds == 3
    with pytest.raises(ConfigError, match="no point 'nope'"):
        default_grid().only(("nope",))


def _grid(points, **base) -> Grid:
    cfg = ExperimentConfig().override({"data.partition": "by-speaker", "train.record_updates": True, **base})
    return Grid("t", cfg, tuple(points), (0,), AttackPlan())


@pytest.mark.parametrize(
    "grid,match",
    [
        (lambda: _grid([GridPoint("a", "record-dp")]), "labelled 'record-dp' but its config applies 'none'"),
        (lambda: _grid([GridPoint("a", "none"), GridPoint("a", "none")]), "two points are named 'a'"),
        (lambda: _grid([GridPoint("a b", "none")]), "names a directory"),
        (lambda: _grid([GridPoint("a", "none")], **{"train.record_updates": False}), "record_updates"),
        (lambda: _grid([GridPoint("a", "none")], **{"data.partition": "iid"}), "single-gender clients"),
        (lambda: _grid([GridPoint("a", "none", (("train.mode", "central"),))]), "mode 'central'"),
        (lambda: _grid([GridPoint("a", "record-dp", (("train.mode", "dp"),))]), "exactly one of"),
        (
            lambda: Grid(
                "t",
                ExperimentConfig(),
                (GridPoint("a", "none"),),
                (0,),
                AttackPlan(which=("gender",), gender=(("shadow_clients", 1),)),
            ),
            "shadow_clients",
        ),
        (
            lambda: Grid(
                "t",
                ExperimentConfig(),
                (GridPoint("a", "none"),),
                (0,),
                AttackPlan(which=(), membership=(("nope", 1),)),
            ),
            None,
        ),
    ],
)
def test_bad_grids_fail_with_a_fix(grid, match):
    if match is None:  # attacks switched off: their settings are not looked at
        grid().validate()
        return
    with pytest.raises(ConfigError, match=match):
        grid().validate()


def test_bad_toml_names_the_key(tmp_path):
    cases = {
        'name = "x"\nextra = 1\n': "unknown key 'extra'",
        "[base]\nseed = 3\n": "list the seeds",
        '[base.train]\nrounds = "ten"\n': "train.rounds must be an integer",
        '[[points]]\nname = "a"\nset = { "train.nope" = 1 }\n': "unknown config key 'train.nope'",
        '[[points]]\nname = "a"\nset = { "seed" = 1 }\n': "sets seed",
        '[attacks]\ngender = { seed = 1 }\n[[points]]\nname = "a"\n': "attacks.gender.seed",
        'seeds = "0"\n': "seeds must be a list",
    }
    for text, match in cases.items():
        path = tmp_path / "g.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=match):
            g = Grid.from_toml(path)
            g.attacks.configs(0)
    with pytest.raises(ConfigError, match="does not exist"):
        Grid.from_toml(tmp_path / "missing.toml")


def test_folds_replace_seeds_as_the_repeats(tmp_path):
    g = default_grid().with_seeds((4,)).with_folds(3)
    assert g.base.data.folds == 3 and g.folds == (1, 2, 3)
    assert g.repeats() == [(4, 1), (4, 2), (4, 3)]
    assert default_grid().repeats() == [(0, 0), (1, 0), (2, 0)]
    cfg = g.config_for(g.point("record-dp-sigma1"), 4, 2)
    assert (cfg.seed, cfg.data.folds, cfg.data.fold, cfg.train.mode) == (4, 3, 2, "dp")
    assert default_grid().config_for(g.point("fedavg"), 1).data.fold == 0
    path = tmp_path / "g.toml"
    path.write_text(g.to_toml(full=False))
    assert Grid.from_toml(path) == g


@pytest.mark.parametrize(
    "change,match",
    [
        (
            lambda g: g.with_base({"data.folds": 6}),
            r"lists no folds to run: add folds = \[1, 2, 3, 4, 5, 6\]",
        ),
        (lambda g: dataclasses.replace(g, folds=(1, 2)), "has no data.folds"),
        (lambda g: dataclasses.replace(g.with_folds(3), folds=(1, 4)), r"distinct integers in 1..3"),
        (lambda g: dataclasses.replace(g.with_folds(3), folds=(2, 2)), r"distinct integers in 1..3"),
        (lambda g: g.with_folds(3).with_base({"data.fold": 1}), "sets data.fold = 1"),
    ],
)
def test_bad_folds_fail_with_a_fix(change, match):
    with pytest.raises(ConfigError, match=match):
        change(default_grid()).validate()


def test_bad_folds_in_toml(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('folds = "1,2"\n')
    with pytest.raises(ConfigError, match="folds must be a list"):
        Grid.from_toml(path)
