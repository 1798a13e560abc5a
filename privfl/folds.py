"""Speaker-independent k-fold evaluation: every fold is its own run directory under one parent.

Layout of a parent run directory (data.folds = K, data.fold = 0):
  config.toml       the resolved config of the whole evaluation (fold 0 = all folds)
  fold_01/ ...      fold_K/: ordinary run directories (config.toml has data.fold = i)
  confusion.png     test confusion at each fold's best-validation round, pooled over folds
  summary.json      written last: per-fold and mean +- sd UAR, per-class recall, pooled confusion

Resuming the parent skips folds that finished with the configured rounds and resumes the others
(an unfinished fold continues from its checkpoint; a finished one given more rounds is extended).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from privfl import __version__
from privfl.config import ExperimentConfig
from privfl.data.records import EMOTIONS
from privfl.errors import ConfigError
from privfl.runs import RunDir

FoldCallback = Callable[[int, dict], None]  # (fold, its summary)


def fold_dir(parent: Path, fold: int) -> Path:
    return Path(parent) / f"fold_{fold:02d}"


def fold_config(cfg: ExperimentConfig, fold: int) -> ExperimentConfig:
    """The config of one fold: the parent's with data.fold set."""
    return cfg.override({"data.fold": fold}).validate()


def default_folds_out(cfg: ExperimentConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    d = cfg.data
    return Path("runs") / f"{cfg.train.mode}-{cfg.model.name}-{d.dataset}-{d.folds}fold-s{cfg.seed}-{stamp}"


def run_folds(
    cfg: ExperimentConfig,
    out: Path | None = None,
    *,
    resume: Path | None = None,
    overwrite: bool = False,
    on_fold: FoldCallback | None = None,
    **train_kwargs,
) -> dict:
    """Train every fold of cfg.data.folds (each with `privfl.experiment.train`); returns the parent
    summary. train_kwargs (on_round, on_stage) are passed to each fold's training."""
    from privfl.experiment import check_resumable, train

    cfg.validate()
    if cfg.data.folds < 2 or cfg.data.fold != 0:
        raise ConfigError(
            f"run_folds needs data.folds >= 2 and data.fold = 0 (all folds), got folds={cfg.data.folds}, "
            f"fold={cfg.data.fold}; for one fold call privfl.experiment.train"
        )
    if resume is not None:
        parent = RunDir.open(resume)
        check_resumable(parent.config(), cfg)
        cfg.to_toml(parent.path / "config.toml")
        (parent.path / "summary.json").unlink(missing_ok=True)
    else:
        parent = RunDir.create(out or default_folds_out(cfg), cfg, overwrite=overwrite)
    summaries = []
    for fold in range(1, cfg.data.folds + 1):
        path, fcfg = fold_dir(parent.path, fold), fold_config(cfg, fold)
        if (path / "summary.json").exists() and RunDir.open(path).config().train.rounds == cfg.train.rounds:
            summary = RunDir(path).summary()
        elif (path / "config.toml").exists():
            summary = train(fcfg, resume=path, **train_kwargs)
        else:
            summary = train(fcfg, path, overwrite=path.exists(), **train_kwargs)
        summaries.append(summary)
        if on_fold is not None:
            on_fold(fold, summary)
    summary = summarise_folds(cfg, summaries, parent.path)
    from privfl.plots import confusion_matrix

    confusion_matrix(
        np.array(summary["pooled_confusion"]),
        EMOTIONS,
        parent.path / "confusion.png",
        f"{cfg.train.mode} {cfg.model.name} on {cfg.data.dataset}: {cfg.data.folds} folds pooled",
    )
    parent.write_summary(summary)
    return summary


def summarise_folds(cfg: ExperimentConfig, summaries: list[dict], path: Path) -> dict:
    """Per-fold and mean +- sd (sample sd over folds) test UAR, per-class recall, pooled confusion."""
    at_best = np.array([s["test_uar_at_best_val"] for s in summaries])
    final = np.array([s["final_test_uar"] for s in summaries])
    confusions = np.array([s["test_confusion_at_best_val"] for s in summaries])  # [folds, c, c]
    pooled = confusions.sum(axis=0)
    support = pooled.sum(axis=1)
    recall = {e: (float(pooled[i, i] / support[i]) if support[i] else None) for i, e in enumerate(EMOTIONS)}
    seconds = [s["train_seconds"] + s["setup_seconds"] for s in summaries]
    return {
        "privfl_version": __version__,
        "kind": "folds",
        "mode": cfg.train.mode,
        "model": cfg.model.name,
        "dataset": cfg.data.dataset,
        "partition": cfg.data.partition,
        "normalize": cfg.data.normalize,
        "seed": cfg.seed,
        "rounds": cfg.train.rounds,
        "folds": [
            {
                "fold": i,
                "test_speakers": s["split"]["test"],
                "val_speakers": s["split"]["val"],
                "clients": s["clients"],
                "test_utterances": s["test_utterances"],
                "best_round": s["best_round"],
                "best_val_uar": s["best_val_uar"],
                "test_uar_at_best_val": s["test_uar_at_best_val"],
                "final_test_uar": s["final_test_uar"],
                "seconds": sec,
                "run_dir": s["run_dir"],
            }
            for i, (s, sec) in enumerate(zip(summaries, seconds, strict=True), start=1)
        ],
        "test_uar_mean": float(at_best.mean()),
        "test_uar_sd": _sd(at_best),
        "final_test_uar_mean": float(final.mean()),
        "final_test_uar_sd": _sd(final),
        "per_class_recall": recall,
        "pooled_uar": float(np.mean([r for r in recall.values() if r is not None])),
        "pooled_confusion": pooled.tolist(),
        "seconds_total": float(sum(seconds)),
        "run_dir": str(path),
    }


def _sd(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0
