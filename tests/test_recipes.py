"""The corpus recipes in benchmarks/recipes load, validate, and fit their corpus's speakers."""

from __future__ import annotations

from pathlib import Path

import pytest

from privfl.config import ExperimentConfig

RECIPES = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "recipes").glob("*.toml"))
RAVDESS_ACTORS = 24


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates_with_a_data_dir(path: Path) -> None:
    cfg = ExperimentConfig.from_toml(path).override({"data.data_dir": "/data/corpus"}).validate()
    assert cfg.data.folds >= 2 and cfg.data.fold == 0  # every recipe is a k-fold evaluation
    if cfg.data.dataset == "ravdess" and cfg.data.partition == "by-speaker":
        d = cfg.data
        training = RAVDESS_ACTORS - RAVDESS_ACTORS // d.folds - d.val_speakers - d.aux_count("speaker")
        assert cfg.train.clients == training  # one actor per client


def test_there_are_ravdess_recipes() -> None:
    assert {p.stem for p in RECIPES} >= {"ravdess_central_cnn", "ravdess_fedavg_cnn"}
