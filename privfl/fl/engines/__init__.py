"""Federation engines other than the built-in loop: transports only, never a second implementation.

`flower-sim` runs `Federation.run_round` itself with its clients behind Flower (flwr 1.42): the
ServerApp side (`server_app.py`, `FlowerRounds`) sends the global weights and the round's public
keys to ClientApps (`client_app.py`) as Flower Messages and sums their Uploads with the session's
own summation; `simulation.py` runs both apps in this process on Flower's Simulation Runtime and
is the one module that touches Flower internals. The same two apps run on Flower's Deployment
Runtime (`flower-superlink`, `flower-supernode`, `flwr run`; see docs/deployment.md), whose
ServerApp entry is `privfl.flower_app`.

An engine receives a built `Session` (the protocol below) and never imports the layer above.
Flower is an optional dependency: nothing here imports it until an engine is used.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from privfl.config import ExperimentConfig
from privfl.errors import ConfigError, EngineError

if TYPE_CHECKING:
    from privfl.fl.engines.session import Session

__all__ = ["EngineError", "Session", "check_engine", "check_flower_config", "require_flower", "run_engine"]

FLOWER_INSTALL_HINT = 'pip install -e ".[flower]"'


def __getattr__(name: str) -> Any:
    """Session on first use: `privfl deploy run`, which needs only require_flower, then starts
    without importing torch and the data pipeline."""
    if name == "Session":
        from privfl.fl.engines.session import Session

        return Session
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def check_engine(cfg: ExperimentConfig) -> None:
    """Refuse an unknown engine, a missing Flower or settings Flower cannot honour; no data work."""
    if cfg.train.engine != "flower-sim":
        raise ConfigError(
            f"train.engine {cfg.train.engine!r} has no engine adapter; use builtin or flower-sim"
        )
    require_flower(cfg.train.engine)
    check_flower_config(cfg)


def run_engine(session: Session, on_round: Callable[[dict], None] | None = None) -> None:
    """Run the session's remaining rounds on session.cfg.train.engine (checked by check_engine)."""
    check_engine(session.cfg)
    from privfl.fl.engines.simulation import run_flower_simulation

    run_flower_simulation(session, on_round)
