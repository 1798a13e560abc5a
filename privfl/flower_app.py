"""The ServerApp `flwr run` starts on the SuperLink's machine (pyproject.toml names it).

It sits at the top, beside the CLI, because it does what `privfl train` does: read the
experiment config, build a `Session`, hand it to the Flower engine (`FlowerRounds`) and finish
the run directory. Its run config ([tool.flwr.app.config]) names the experiment TOML and the run
directory; see docs/deployment.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from privfl.config import ExperimentConfig
from privfl.errors import ConfigError
from privfl.experiment import Session
from privfl.fl.engines import check_flower_config
from privfl.fl.engines.server_app import FlowerRounds

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the experiment named by the run config on the SuperNodes connected to this SuperLink."""
    rc = context.run_config
    config_path = str(rc.get("config", "") or "")
    if config_path and not Path(config_path).is_absolute():
        raise ConfigError(
            f"run config 'config' = {config_path!r} must be an absolute path: the ServerApp runs in the "
            "SuperLink's working directory, not yours"
        )
    cfg = ExperimentConfig.from_toml(Path(config_path)) if config_path else ExperimentConfig()
    check_flower_config(cfg.validate())
    out = str(rc.get("out", "") or "")
    resume = str(rc.get("resume", "") or "")
    session = Session(
        cfg,
        Path(out) if out else None,
        resume=Path(resume) if resume else None,
        overwrite=bool(rc.get("overwrite", False)),
    )
    rounds = FlowerRounds(
        session,
        grid,
        round_timeout=float(rc.get("round-timeout", 3600.0)),
        node_timeout=float(rc.get("node-timeout", 120.0)),
    )
    flwr_log = logging.getLogger("flwr")  # what `flwr run --stream` and `flwr log` show
    try:
        rounds.run(on_round=lambda row: flwr_log.info("privfl round %d: %s", row["round"], _brief(row)))
        summary = session.finish()
    finally:
        session.close()  # stops a key-holder process the CKKS summation started
    flwr_log.info("run directory: %s (final val UAR %.3f)", summary["run_dir"], summary["final_val_uar"])


def _brief(row: dict) -> str:
    keys = ("val_uar", "train_loss", "epsilon", "seconds")
    return ", ".join(f"{k}={row[k]:.4g}" for k in keys if k in row)
