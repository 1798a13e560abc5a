"""The ServerApp `flwr run` starts on the SuperLink's machine (pyproject.toml names it).

It sits at the top, beside the CLI, because it does what `privfl train` does: read the
experiment config, build a `Session`, hand it to the Flower engine (`FlowerRounds`) and finish
the run directory. Its run config ([tool.flwr.app.config]) names the experiment TOML and the run
directory; see docs/deployment.md. `privfl deploy run` sets that run config and reports how the
run ended.

Everything that can be checked before training is checked first, in this order, and each error
names the run-config key that fixes it (`config=`, `out=`, `resume=`, `overwrite=true`,
`node-timeout=`), because that, not a `privfl train` flag, is what the operator can change: the
run config, the experiment config, the run directory, then the roll call of the SuperNodes.
Only then is the run directory created, and a run that fails before its first round ends
removes the directory it created, so that the identical rerun is not refused.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from privfl.config import ExperimentConfig, flatten
from privfl.errors import ConfigError, PrivflError, RunError
from privfl.experiment import Session
from privfl.fl.engines import check_flower_config
from privfl.fl.engines.server_app import FlowerRounds, roll_call
from privfl.runs import CHECKPOINT_META, RunDir

ENGINE = "flower-deployment"  # summary.json's engine: the config's train.engine drives nothing here

app = ServerApp()
log = logging.getLogger("flwr")  # what `flwr log` and `privfl deploy run` show


@dataclass(frozen=True)
class RunRequest:
    """The run config of one `flwr run`, checked: absolute paths, out or resume."""

    config: Path | None
    out: Path | None
    resume: Path | None
    overwrite: bool
    round_timeout: float
    node_timeout: float

    @classmethod
    def from_run_config(cls, rc) -> RunRequest:
        paths: dict[str, Path | None] = {}
        for key in ("config", "out", "resume"):
            value = str(rc.get(key, "") or "")
            if value and not Path(value).is_absolute():
                raise ConfigError(
                    f"run config {key}={value!r} must be an absolute path: the ServerApp reads it on the "
                    f"SuperLink's machine, in the SuperLink's working directory, not yours; set "
                    f'{key}="/abs/path/{value}"'
                )
            paths[key] = Path(value) if value else None
        if paths["out"] is None and paths["resume"] is None:
            raise ConfigError(
                'run config: neither out= nor resume= is set; set out="/abs/path/run" for a new run, or '
                'resume="/abs/path/run" to continue one'
            )
        if paths["out"] is not None and paths["resume"] is not None:
            raise ConfigError(
                f"run config sets both out={str(paths['out'])!r} and resume={str(paths['resume'])!r}; set "
                "out= for a new run or resume= to continue one, not both"
            )
        return cls(
            paths["config"],
            paths["out"],
            paths["resume"],
            bool(rc.get("overwrite", False)),
            float(rc.get("round-timeout", 3600.0)),
            float(rc.get("node-timeout", 120.0)),
        )

    def experiment(self) -> ExperimentConfig:
        """The experiment: a resumed run's own config.toml (config= may only raise train.rounds),
        else config= (or privfl's defaults)."""
        given = self._read(self.config, "config") if self.config is not None else None
        if self.resume is None:
            return given if given is not None else ExperimentConfig()
        try:
            saved = RunDir.open(self.resume).config()
        except PrivflError as exc:
            raise RunError(f"run config resume={str(self.resume)!r}: {exc}") from exc
        if given is None:
            return saved
        a, b = flatten(saved.to_dict()), flatten(given.to_dict())
        diff = [k for k in sorted(set(a) | set(b)) if k != "train.rounds" and a.get(k) != b.get(k)]
        if diff:
            raise ConfigError(
                f"run config config={str(self.config)!r} differs from {self.resume / 'config.toml'} in "
                f"{', '.join(diff)}; resume with resume= alone (the run's own config), or give a config= "
                "that differs in train.rounds only"
            )
        return given

    @staticmethod
    def _read(path: Path, key: str) -> ExperimentConfig:
        try:
            return ExperimentConfig.from_toml(path)
        except PrivflError as exc:
            raise ConfigError(f"run config {key}={str(path)!r}: {exc}") from exc

    def check_target(self) -> None:
        """Refuse an existing run directory at out= unless overwrite=true (and then only privfl's)."""
        out = self.out
        if out is None or not out.exists() or not any(out.iterdir()):
            return
        if not self.overwrite:
            raise RunError(
                f'run directory {out} already exists; set resume="{out}" (instead of out=) to continue '
                "it, overwrite=true to replace it, or out= with a new name"
            )
        if not (out / "config.toml").exists():
            raise RunError(
                f"{out} is not a privfl run directory (no config.toml); overwrite=true refuses to delete "
                "it: set out= to another path"
            )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the experiment named by the run config on the SuperNodes connected to this SuperLink."""
    # opacus calls logging.basicConfig() on import, so every "flwr" record also reached the root
    # logger's stderr handler and `flwr log` showed each line twice; this process is the
    # ServerApp's own, so its flwr logger need not propagate
    log.propagate = False
    request = RunRequest.from_run_config(context.run_config)
    cfg = request.experiment()
    try:
        check_flower_config(cfg.validate())
    except ConfigError as exc:
        if request.config is not None:
            where = f"config={str(request.config)!r}"
        elif request.resume is not None:
            where = f"resume={str(request.resume)!r} (its config.toml)"
        else:
            where = "config= (empty: privfl's defaults)"
        raise ConfigError(f"the experiment of run config {where} cannot run: {exc}") from exc
    request.check_target()
    k = cfg.train.clients
    node_of, public_keys = roll_call(
        grid,
        k,
        cfg.secure.scheme == "ckks",
        request.node_timeout,
        progress=lambda missing, found: log.info(
            "privfl roll call: waiting for partition-id(s) %s of 0..%d (answered: %s)",
            missing,
            k - 1,
            sorted(found),
        ),
    )
    log.info("privfl roll call: %d SuperNode(s), one per partition-id 0..%d", k, k - 1)
    session = None
    created: Path | None = None
    try:
        session = Session(cfg, request.out, resume=request.resume, overwrite=request.overwrite)
        created = session.run.path if request.resume is None else None
        rounds = FlowerRounds(
            session, grid, round_timeout=request.round_timeout, node_timeout=request.node_timeout
        )
        rounds.adopt(node_of, public_keys)
        rounds.run(on_round=lambda row: log.info("privfl round %d: %s", row["round"], _brief(row)))
        summary = session.finish(engine=ENGINE)
    except BaseException:
        if created is not None and not (created / CHECKPOINT_META).exists():
            shutil.rmtree(created, ignore_errors=True)  # nothing to resume: do not block the rerun
        raise
    finally:
        if session is not None:
            session.close()  # stops a key-holder process the CKKS summation started
    log.info("run directory: %s (final val UAR %.3f)", summary["run_dir"], summary["final_val_uar"])


def _brief(row: dict) -> str:
    keys = ("val_uar", "train_loss", "epsilon", "seconds")
    return ", ".join(f"{k}={row[k]:.4g}" for k in keys if k in row)
