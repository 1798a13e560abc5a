"""`privfl deploy run`: start a run on a Flower deployment and report how it ended.

`flwr run` (flwr 1.42) exits 0 once the SuperLink accepted the run, whatever the ServerApp then
does. This module uses Flower's own Control API commands instead of reading logs: `flwr run
--format json` for the run id, `flwr log RUN_ID` to stream the ServerApp's log until the run
ends, and `flwr ls --run-id RUN_ID --format json` for its final status (`finished:completed`,
`finished:failed`, `finished:stopped`) and status details, which for a failed ServerApp hold its
exception (`ServerApp failed with exception: ...`). Anything but `finished:completed` raises
DeployError with those details, so the CLI exits non-zero with the ServerApp's own message.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from privfl.deploy import DeployError
from privfl.fl.engines import require_flower

FINISHED = "finished"
COMPLETED = "finished:completed"


@dataclass(frozen=True)
class RunRequest:
    """The run config privfl's ServerApp reads ([tool.flwr.app.config] in pyproject.toml)."""

    config: Path | None = None
    out: Path | None = None
    resume: Path | None = None
    overwrite: bool = False
    round_timeout: float = 3600.0
    node_timeout: float = 120.0

    def check(self) -> RunRequest:
        """The paths must be absolute (the ServerApp reads them in the SuperLink's working
        directory, on its machine) and either out or resume must be given."""
        for flag, path in (("--config", self.config), ("--out", self.out), ("--resume", self.resume)):
            if path is not None and not Path(path).is_absolute():
                raise DeployError(
                    f"{flag} {path}: must be an absolute path, because the ServerApp reads it on the "
                    f"SuperLink's machine, in the SuperLink's working directory (e.g. {flag} \"$PWD/{path}\")"
                )
        if self.out is None and self.resume is None:
            raise DeployError("give --out RUN_DIR for a new run, or --resume RUN_DIR to continue one")
        if self.out is not None and self.resume is not None:
            raise DeployError("give --out for a new run or --resume to continue one, not both")
        return self

    def run_config(self) -> dict:
        """The run-config keys of this request, as `flwr run --run-config` takes them."""
        rc: dict = {
            "overwrite": self.overwrite,
            "round-timeout": float(self.round_timeout),
            "node-timeout": float(self.node_timeout),
        }
        for key in ("config", "out", "resume"):
            value = getattr(self, key)
            if value is not None:
                rc[key] = str(value)
        return rc


def flwr_command() -> str:
    """The `flwr` executable beside this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "flwr"
    found = str(beside) if beside.is_file() else shutil.which("flwr")
    if found is None:
        raise DeployError('the `flwr` command is not installed: pip install -e ".[flower]"')
    return found


def _flwr_json(args: list[str], what: str) -> dict:
    """Run a `flwr ... --format json` command and return its JSON reply."""
    proc = subprocess.run([flwr_command(), *args, "--format", "json"], capture_output=True, text=True)
    try:
        reply = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise DeployError(
            f"`flwr {' '.join(args)}` ({what}) failed with exit code {proc.returncode}: "
            f"{(proc.stdout + proc.stderr).strip()[-800:]}"
        ) from None
    if not reply.get("success", False):
        raise DeployError(f"`flwr {args[0]}` ({what}) failed: {reply.get('error-message', reply)}")
    return reply


def start_run(app: Path, federation: str, request: RunRequest) -> int:
    """`flwr run APP FEDERATION --run-config <toml>`; returns the run id."""
    with tempfile.TemporaryDirectory(prefix="privfl-run-config-") as tmp:
        overrides = Path(tmp) / "run-config.toml"
        overrides.write_text(tomli_w.dumps(request.run_config()))  # a file: paths may hold spaces
        reply = _flwr_json(
            ["run", str(app), federation, "--run-config", str(overrides)], f"starting the run on {federation}"
        )
    return int(reply["run-id"])


def run_status(federation: str, run_id: int) -> dict:
    """`flwr ls FEDERATION --run-id RUN_ID --format json`: the run's row (status, status-details)."""
    runs = _flwr_json(["ls", federation, "--run-id", str(run_id)], f"status of run {run_id}")["runs"]
    if not runs:
        raise DeployError(f"the SuperLink of {federation} knows no run {run_id}")
    return runs[0]


def stream_log(federation: str, run_id: int, echo: Callable[[str], None]) -> None:
    """`flwr log RUN_ID FEDERATION --stream`: each line of the run's log to echo, until it ends."""
    with subprocess.Popen(
        [flwr_command(), "log", str(run_id), federation, "--stream"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        for line in proc.stdout or ():
            echo(line.rstrip("\n"))


def wait_finished(federation: str, run_id: int, timeout_s: float, poll_s: float = 1.0) -> dict:
    """Poll the run's status until it is finished; returns its row."""
    deadline = time.monotonic() + timeout_s
    while True:
        row = run_status(federation, run_id)
        if str(row["status"]).startswith(FINISHED):
            return row
        if time.monotonic() > deadline:
            raise DeployError(
                f"run {run_id} on {federation} is still {row['status']} after {timeout_s:.0f}s; "
                f"see `flwr ls {federation} --run-id {run_id}`; stop it: `flwr stop {run_id} {federation}`"
            )
        time.sleep(poll_s)


def stop_run(federation: str, run_id: int) -> None:
    """`flwr stop RUN_ID FEDERATION` (for Ctrl-C); a failure to stop is reported, not raised."""
    subprocess.run([flwr_command(), "stop", str(run_id), federation], capture_output=True, text=True)


def deploy_run(
    app: Path,
    federation: str,
    request: RunRequest,
    *,
    echo: Callable[[str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    finish_timeout_s: float = 120.0,
) -> dict:
    """Start the run, stream its log to echo (None: quiet), wait for it to finish, and return its
    status row; raises DeployError with the ServerApp's error unless it completed."""
    request.check()
    require_flower("privfl deploy run")  # also: no telemetry from the flwr commands, unless asked for
    run_id = start_run(app, federation, request)
    if on_start is not None:
        on_start(run_id)
    try:
        # the log stream ends when the run does (quiet: read and dropped, rather than asking for the
        # status every second with a new `flwr ls` process); then ask until the status says finished
        stream_log(federation, run_id, echo if echo is not None else (lambda line: None))
        row = wait_finished(federation, run_id, finish_timeout_s)
    except KeyboardInterrupt:
        stop_run(federation, run_id)
        raise
    if row["status"] != COMPLETED:
        details = str(row.get("status-details") or "").strip()
        details = details.removeprefix("ServerApp failed with exception: ")
        if str(row["status"]).endswith("stopped"):
            details = (
                f"stopped before it finished; continue it from its last checkpoint with "
                f'privfl deploy run --federation {federation} --resume "{request.out or request.resume}"'
            )
        raise DeployError(
            f"run {run_id} {row['status']}: {details or 'no details'} "
            f"(full log: flwr log {run_id} {federation} --show)"
        )
    return row
