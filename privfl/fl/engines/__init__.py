"""Federation engines other than the built-in loop: transports only, never a second implementation.

`flower-sim` runs the same rounds as `Federation.run_round` through Flower (flwr 1.42): a ServerApp
(`server_app.py`) sends the global weights to ClientApps (`client_app.py`) as Flower Messages and
sums what comes back with the session's own summation policy; `simulation.py` runs both apps in
this process on Flower's Simulation Runtime. The same two apps run on Flower's Deployment Runtime
(`flower-superlink`, `flower-supernode`, `flwr run`; see docs/deployment.md); `local.py` starts
such a deployment on this machine (tests, benchmarks).

Flower is an optional dependency: nothing here imports it until an engine is used.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

from privfl.config import ExperimentConfig
from privfl.errors import ConfigError, PrivflError

FLOWER_INSTALL_HINT = 'pip install -e ".[flower]"'


class EngineError(PrivflError):
    """A federation engine could not complete a round (a client failed, timed out or is missing)."""


def require_flower(engine: str = "flower-sim") -> None:
    """Raise ConfigError naming the install command when flwr is not importable."""
    if importlib.util.find_spec("flwr") is None:
        raise ConfigError(
            f"engine {engine!r} runs on Flower, which is not installed: {FLOWER_INSTALL_HINT} "
            "(or use --engine builtin)"
        )
    # Flower reports usage to its servers and checks for updates unless told not to; a library
    # call should not reach the network on its own. An explicit setting by the user wins.
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


def check_flower_config(cfg: ExperimentConfig) -> None:
    """Refuse settings that need what a Flower server never has: plaintext updates under CKKS."""
    if cfg.secure.scheme == "none":
        return
    if cfg.secure.scheme == "ckks":
        raise ConfigError(
            "secure.scheme = 'ckks' is not yet wired to the Flower engines: their ServerApp would hold "
            "the secret key. Use --engine builtin, whose key holder runs as its own process "
            "(docs/secure-aggregation.md)"
        )
    if cfg.train.record_updates:
        raise ConfigError(
            "train.record_updates keeps each client's plaintext update, which a Flower server never "
            f"sees with secure.scheme = {cfg.secure.scheme!r} (that is the point of secure aggregation): "
            "drop --record-updates, or use --engine builtin to simulate the attack setting"
        )
    if cfg.secure.debug_check:
        raise ConfigError(
            "secure.debug_check compares the decrypted sum with a plaintext sum, which a Flower server "
            "cannot compute: set secure.debug_check = false, or use --engine builtin"
        )


def run_engine(
    cfg: ExperimentConfig,
    out: Path | None = None,
    *,
    resume: Path | None = None,
    overwrite: bool = False,
    on_round: Callable[[dict], None] | None = None,
    on_stage: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Run (or resume) one experiment on cfg.train.engine; returns the summary (summary.json)."""
    if cfg.train.engine != "flower-sim":
        raise ConfigError(
            f"train.engine {cfg.train.engine!r} has no engine adapter; use builtin or flower-sim"
        )
    require_flower(cfg.train.engine)
    cfg.validate()
    check_flower_config(cfg)
    from privfl.fl.engines.simulation import run_flower_simulation

    return run_flower_simulation(
        cfg, out, resume=resume, overwrite=overwrite, on_round=on_round, on_stage=on_stage
    )
