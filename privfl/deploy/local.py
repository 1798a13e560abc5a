"""A Flower deployment on this machine: one SuperLink and N SuperNodes as subprocesses on 127.0.0.1.

For tests, benchmarks and trying the deployment path before spreading it over machines. It runs
exactly the commands of docs/deployment.md, in insecure mode (plain HTTP), which is only
acceptable because every address is loopback. Processes are stopped, with everything they
started, on `stop()` or when the `with` block ends, also after an error.

    with LocalDeployment(Path("/tmp/fl"), num_nodes=3) as fl:
        summary = fl.run(cfg, Path("/tmp/fl/run"))
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from privfl.config import ExperimentConfig
from privfl.fl.engines import EngineError, require_flower

CONNECTION = "privfl-local"  # the SuperLink connection name written to $FLWR_HOME/config.toml
APP_DIR = Path(__file__).resolve().parents[3]  # the Flower App: the directory holding privfl's pyproject.toml


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every live descendant of pid, from /proc (Linux); [] elsewhere."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop_process_tree(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the process, its process group and every descendant (Flower's SuperExec starts its
    own group), wait up to grace_s, then SIGKILL whatever is left."""
    victims = [proc.pid, *descendants(proc.pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM and not any(_alive(p) for p in victims[1:]):
            return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is already dead
    except (OSError, IndexError):
        return False


class LocalDeployment:
    """A SuperLink and `num_nodes` SuperNodes (partition-id 0..n-1) under `root` (logs, FLWR_HOME)."""

    def __init__(self, root: Path, num_nodes: int, *, env: dict[str, str] | None = None) -> None:
        require_flower("flower deployment")
        if not (APP_DIR / "pyproject.toml").is_file():
            raise EngineError(
                f"LocalDeployment ships the Flower App from a privfl source checkout; {APP_DIR} has no "
                "pyproject.toml (install privfl with pip install -e . from a clone)"
            )
        self.root = Path(root)
        self.num_nodes = num_nodes
        self.bin = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr
        self.port = free_port()
        self.logs: list[Path] = []
        self.procs: list[subprocess.Popen] = []
        home = self.root / "flwr-home"
        self.env = {
            **(env if env is not None else os.environ),  # PRIVFL_CACHE goes to every process
            # the SuperLink starts `flower-superexec` by name
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
        }
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )

    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, name: str, *args: str, cwd: Path | None = None) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                [str(self.bin / args[0]), *args[1:]],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=cwd or self.root,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the SuperLink, wait until it listens, then start the SuperNodes."""
        superlink = self._spawn(
            "superlink",
            "flower-superlink",
            "--insecure",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",  # never `uv sync` the app from the network
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or superlink.poll() is not None:
                    raise EngineError(f"the SuperLink did not start:\n{self.tail()}") from None
                time.sleep(0.2)
        for i in range(self.num_nodes):
            self._spawn(
                f"supernode{i}",
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--node-config",
                f"partition-id={i} num-partitions={self.num_nodes}",
                "--port",
                str(free_port()),  # each SuperNode's own ClientApp API
            )

    def submit(
        self, cfg: ExperimentConfig, out: Path, *, round_timeout: float = 600.0, node_timeout: float = 60.0
    ) -> subprocess.Popen:
        """`flwr run <privfl> privfl-local --stream` for cfg; the process ends when the run does."""
        out = Path(out).absolute()
        config = out.parent / f"{out.name}.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        cfg.to_toml(config)
        run_config = (
            f'config="{config}" out="{out}" '
            f"round-timeout={float(round_timeout)} node-timeout={float(node_timeout)}"
        )
        return self._spawn(
            f"flwr-run-{out.name}",
            "flwr",
            "run",
            str(APP_DIR),
            CONNECTION,
            "--stream",
            "--run-config",
            run_config,
            cwd=APP_DIR,
        )

    def run(self, cfg: ExperimentConfig, out: Path, timeout_s: float = 600.0) -> dict:
        """Submit cfg, wait for the run to end, and return its summary.json."""
        proc = self.submit(cfg, out)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_process_tree(proc)
        return self.summary(out)

    def summary(self, out: Path) -> dict:
        path = Path(out) / "summary.json"
        if not path.is_file():
            raise EngineError(f"the Flower run into {out} did not finish; logs:\n{self.tail()}")
        return json.loads(path.read_text())

    def tail(self, chars: int = 3000) -> str:
        """The end of every log, for error messages."""
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in self.logs if p.exists()
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process_tree(proc)
