"""`privfl deploy`: run privfl on a Flower deployment (docs/deployment.md).

`deploy run` starts a run with `flwr run` and exits non-zero, with the ServerApp's error, when
the run does not complete; `deploy local start|stop` runs a loopback SuperLink and SuperNodes.
"""

from __future__ import annotations

from pathlib import Path

import click

from privfl.clickgroup import PrivflGroup


@click.group(cls=PrivflGroup)
def deploy() -> None:
    """privfl on a Flower deployment: run an experiment, or start a local SuperLink and SuperNodes."""


@deploy.command("run")
@click.option(
    "--federation",
    required=True,
    help="SuperLink connection name in the Flower Configuration, $FLWR_HOME/config.toml.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Absolute path of the experiment TOML on the SuperLink's machine [default: privfl's defaults; "
    "with --resume, the run's own config.toml].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Absolute path of the run directory to create.",
)
@click.option(
    "--resume",
    type=click.Path(file_okay=False, path_type=Path),
    help="Absolute path of a stopped run directory to continue with its own config.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory at --out.")
@click.option(
    "--round-timeout", default=3600.0, show_default=True, help="Seconds to wait for a round's replies."
)
@click.option(
    "--node-timeout",
    default=120.0,
    show_default=True,
    help="Seconds to wait for every partition's SuperNode.",
)
@click.option(
    "--app",
    type=click.Path(file_okay=False, path_type=Path),
    help="The Flower App to ship [default: the privfl checkout this command runs from].",
)
@click.option("--quiet", is_flag=True, help="Do not stream the run's log; print only the outcome.")
def run(
    federation: str,
    config_path: Path | None,
    out: Path | None,
    resume: Path | None,
    overwrite: bool,
    round_timeout: float,
    node_timeout: float,
    app: Path | None,
    quiet: bool,
) -> None:
    """Start an experiment on a Flower deployment and wait for it; exit 2 with the ServerApp's
    error unless it completed.

    \b
    privfl deploy run --federation privfl-local --config "$PWD/fedavg.toml" --out "$PWD/runs/fedavg"
    privfl deploy run --federation privfl-local --resume "$PWD/runs/fedavg"
    """
    from privfl.deploy.local import APP_DIR
    from privfl.deploy.submit import RunRequest, deploy_run

    request = RunRequest(config_path, out, resume, overwrite, round_timeout, node_timeout)
    deploy_run(
        app or APP_DIR,
        federation,
        request,
        echo=None if quiet else click.echo,
        on_start=lambda run_id: click.echo(f"privfl: started Flower run {run_id} on {federation}", err=True),
    )
    click.echo(f"run directory: {resume or out}")


@deploy.group()
def local() -> None:
    """A SuperLink and SuperNodes on 127.0.0.1, for trying privfl's deployment on one machine."""


@local.command()
@click.option("--nodes", default=3, show_default=True, help="SuperNodes to start (partition-id 0..N-1).")
@click.option(
    "--dir",
    "root",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the logs, the process ids and the Flower Configuration (flwr-home/) go.",
)
@click.option("--port", default=0, show_default=True, help="SuperLink port [0: a free one].")
def start(nodes: int, root: Path, port: int) -> None:
    """Start a loopback SuperLink and N SuperNodes in the background; `stop` ends them."""
    from privfl.deploy.local import CONNECTION, LocalDeployment

    fl = LocalDeployment(root, nodes, port=port)
    fl.start()
    click.echo(f"SuperLink on 127.0.0.1:{fl.port} with {nodes} SuperNodes; logs in {fl.root}")
    click.echo(
        f"connection {CONNECTION!r} is in {fl.flwr_home / 'config.toml'}; for flwr and privfl deploy run:"
    )
    click.echo(f"export FLWR_HOME={fl.flwr_home}")


@local.command()
@click.option(
    "--dir",
    "root",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The --dir the deployment was started with.",
)
def stop(root: Path) -> None:
    """Stop the SuperLink and SuperNodes that `start --dir DIR` started, with their children."""
    from privfl.deploy.local import stop_recorded

    click.echo(f"stopped {stop_recorded(root)} process(es) of the local deployment in {root}")
