"""One benchmark run directory: train it, resume it, or reuse it, and say which.

A benchmark point is an ordinary run directory (privfl.runs.RunDir). Its summary.json marks it
finished; a finished run with the same config is reused, an unfinished one is resumed from its
checkpoint, and a finished one with fewer rounds than asked for is extended (train's resume may
only change train.rounds). Any other difference is an error: the directory belongs to another
experiment, and silently reusing it would put the wrong numbers in the table.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from pathlib import Path

from privfl.config import ExperimentConfig, flatten
from privfl.errors import ConfigError
from privfl.runs import RunDir

NEW, RESUME, EXTEND, DONE = "new", "resume", "extend", "done"
STATUS_WORD = {NEW: "trained", RESUME: "resumed", EXTEND: "extended", DONE: "reused"}

RoundCallback = Callable[[dict], None]
StageCallback = Callable[[str, int, int], None]


def run_state(path: Path, cfg: ExperimentConfig) -> str:
    """new, resume, extend or done for the run directory `path` and the experiment `cfg`."""
    path = Path(path)
    if not path.exists() or not any(path.iterdir()):
        return NEW
    run = RunDir.open(path)  # RunError if it is not a privfl run directory
    saved = run.config()
    diff = _differences(saved, cfg)
    if diff and diff != ["train.rounds"]:
        raise ConfigError(
            f"{path} holds a run of another experiment (differs in {', '.join(diff)}); "
            "delete that directory, rename the grid point, or choose another --out"
        )
    from privfl.experiment import parameter_count

    run.verify(parameter_count(saved))  # its checkpoint and recorded updates, read as data only, first
    if not run.finished:
        return RESUME
    if saved.train.rounds == cfg.train.rounds:
        return DONE
    if saved.train.rounds < cfg.train.rounds:
        return EXTEND
    raise ConfigError(
        f"{path} finished {saved.train.rounds} rounds but {cfg.train.rounds} were asked for; a run cannot be "
        "shortened: use another --out, or delete the directory to retrain it"
    )


def ensure_run(
    cfg: ExperimentConfig,
    path: Path,
    *,
    on_round: RoundCallback | None = None,
    on_stage: StageCallback | None = None,
) -> tuple[dict, str, float]:
    """(summary, state before this call, seconds spent here) for the run of `cfg` in `path`."""
    from privfl.experiment import train

    state = run_state(path, cfg)
    started = time.perf_counter()
    if state == DONE:
        return RunDir.open(path).summary(), state, 0.0
    resume = Path(path) if state in (RESUME, EXTEND) else None
    summary = train(cfg, None if resume else Path(path), resume=resume, on_round=on_round, on_stage=on_stage)
    return summary, state, time.perf_counter() - started


def _differences(a: ExperimentConfig, b: ExperimentConfig) -> list[str]:
    fa, fb = flatten(a.to_dict()), flatten(b.to_dict())
    return [k for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


# --- what a point needs installed -----------------------------------------------------------------
def _missing(modules: tuple[str, ...], what: str) -> str | None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            return f"{what} needs {name}, which cannot be imported here ({exc})"
    return None


def missing_for(cfg: ExperimentConfig) -> str | None:
    """Why this experiment cannot train in this installation (a module missing), or None."""
    if cfg.train.mode in ("dp", "user-dp"):
        why = _missing(("opacus", "privfl.fl.dp", "privfl.privacy"), f"mode {cfg.train.mode!r}")
        if why:
            return why
    if cfg.secure.scheme == "ckks":
        why = _missing(("tenseal", "privfl.fl.secure"), "CKKS secure aggregation")
        if why:
            return why
    if cfg.secure.scheme == "secaggplus":  # Flower's key agreement and Shamir sharing
        why = _missing(("flwr", "privfl.fl.secure.secaggplus"), "SecAgg+ secure aggregation")
        if why:
            return why
    return None


def missing_attacks() -> str | None:
    """Why the attacks cannot run in this installation, or None."""
    why = _missing(("privfl.attacks",), "the privacy attacks")
    if why:
        return why
    import privfl.attacks as attacks

    if not hasattr(attacks, "run_attacks") or not hasattr(attacks, "write_report"):
        return "the attacks package lacks run_attacks/write_report (an older or unfinished version)"
    return None
