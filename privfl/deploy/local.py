"""A Flower deployment on this machine: one SuperLink and N SuperNodes as processes on 127.0.0.1.

For trying the deployment path before spreading it over machines (`privfl deploy local start`),
for the tests and for benchmarks. It runs the processes of docs/deployment.md in insecure mode
(plain HTTP), which is only acceptable because every address is loopback. It writes the Flower
Configuration ($FLWR_HOME/config.toml, connection `privfl-local`) under its directory, and the
process ids to `deployment.json` there, so that `privfl deploy local stop` (or `stop()`, or the
end of a `with` block, also after an error) stops every process it started, with their children.

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
from privfl.deploy import DeployError
from privfl.fl.engines import require_flower

CONNECTION = "privfl-local"  # the SuperLink connection name written to $FLWR_HOME/config.toml
STATE_FILE = "deployment.json"  # under the deployment's directory: port and process ids
APP_DIR = Path(__file__).resolve().parents[2]  # the Flower App: the directory holding privfl's pyproject.toml
FLOWER_COMMANDS = (
    "flower-superlink",
    "flower-supernode",
    "flower-superexec",
    "flwr-serverapp",
    "flwr-clientapp",
)


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


def stop_pids(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM each pid, its process group and every descendant (Flower's SuperExec starts its own
    group), wait up to grace_s for them to end, then SIGKILL whatever is left."""
    victims = list(dict.fromkeys(p for pid in pids for p in (pid, *descendants(pid))))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_alive(p) for p in victims):
            for pid in victims:  # reap our own children, so that they do not linger as zombies
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            time.sleep(0.1)
        if not any(_alive(p) for p in victims):
            return


def stop_process_tree(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """stop_pids for one process started here; also reaps it."""
    stop_pids([proc.pid], grace_s)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass


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


def _is_flower(pid: int) -> bool:
    """Whether pid still runs a Flower command (a recorded pid may have been reused since)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return any(name in cmdline for name in FLOWER_COMMANDS)


class LocalDeployment:
    """A SuperLink and `num_nodes` SuperNodes (partition-id 0..n-1) under `root` (logs, FLWR_HOME)."""

    def __init__(
        self, root: Path, num_nodes: int, *, env: dict[str, str] | None = None, port: int = 0
    ) -> None:
        require_flower("flower deployment")
        if num_nodes < 1:
            raise DeployError(f"--nodes {num_nodes}: a deployment needs at least one SuperNode")
        if not (APP_DIR / "pyproject.toml").is_file():
            raise DeployError(
                f"a local deployment ships the Flower App from a privfl source checkout; {APP_DIR} has no "
                "pyproject.toml (install privfl with pip install -e . from a clone)"
            )
        self.root = Path(root).absolute()
        self.num_nodes = num_nodes
        self.bin = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr
        self.port = port or free_port()
        self.logs: list[Path] = []
        self.procs: list[subprocess.Popen] = []
        self.nodes: dict[int, subprocess.Popen] = {}  # partition-id -> its SuperNode
        self.flwr_home = self.root / "flwr-home"
        self.env = {
            **(env if env is not None else os.environ),  # PRIVFL_CACHE goes to every process
            # the SuperLink starts `flower-superexec` by name
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
        }
        # each SuperExec asks for a new ServerApp/ClientApp task every second by default; on
        # loopback ask every 0.1 s (a message waits half a second less on average)
        self.env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")

    def __enter__(self) -> LocalDeployment:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, name: str, *args: str, cwd: Path | None = None) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                [*args],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=cwd or self.root,
                start_new_session=True,  # its own group: stopped as one, and not by the caller's Ctrl-C
            )
        self.procs.append(proc)
        return proc

    def start(self, timeout_s: float = 60.0) -> None:
        """Write the Flower Configuration, start the SuperLink, wait until it listens, then start
        the SuperNodes; everything started is stopped again if any of it fails."""
        state = self.root / STATE_FILE
        if state.exists():
            raise DeployError(
                f"{state} exists: a local deployment may still run there; stop it with "
                f"`privfl deploy local stop --dir {self.root}` or choose another --dir"
            )
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> None:
        superlink = self._spawn(
            "superlink",
            str(self.bin / "flower-superlink"),
            "--insecure",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",  # never `uv sync` the app from the network
        )
        self._record()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or superlink.poll() is not None:
                    raise DeployError(f"the SuperLink did not start:\n{self.tail()}") from None
                time.sleep(0.2)
        for i in range(self.num_nodes):
            self.start_node(i)

    def start_node(self, partition: int) -> None:
        """Start the SuperNode for one partition-id (again, after stop_node)."""
        self.nodes[partition] = self._spawn(
            f"supernode{partition}",
            str(self.bin / "flower-supernode"),
            "--insecure",
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--node-config",
            f"partition-id={partition} num-partitions={self.num_nodes}",
            "--port",
            str(free_port()),  # each SuperNode's own ClientApp API
        )
        self._record()

    def stop_node(self, partition: int) -> None:
        """Stop one SuperNode (SIGTERM: it leaves the SuperLink's node list)."""
        proc = self.nodes.pop(partition)
        stop_process_tree(proc)
        self.procs.remove(proc)
        self._record()

    def _record(self) -> None:
        """deployment.json: what `privfl deploy local stop` needs to stop these processes."""
        state = {
            "port": self.port,
            "connection": CONNECTION,
            "flwr_home": str(self.flwr_home),
            "pids": [p.pid for p in self.procs if p.args[0].rsplit("/", 1)[-1].startswith("flower-")],
        }
        (self.root / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def submit(
        self,
        cfg: ExperimentConfig | None,
        out: Path | None,
        *,
        resume: Path | None = None,
        overwrite: bool = False,
        round_timeout: float = 600.0,
        node_timeout: float = 60.0,
        name: str | None = None,
    ) -> subprocess.Popen:
        """`privfl deploy run` for cfg (written beside out as <out>.toml) against this deployment;
        the process ends when the run does, with exit code 0 only if the run completed."""
        args = ["--federation", CONNECTION, "--round-timeout", str(round_timeout)]
        args += ["--node-timeout", str(node_timeout)]
        if cfg is not None:
            target = Path(out or resume).absolute()
            config = target.parent / f"{target.name}.toml"
            config.parent.mkdir(parents=True, exist_ok=True)
            cfg.to_toml(config)
            args += ["--config", str(config)]
        if out is not None:
            args += ["--out", str(Path(out).absolute())]
        if resume is not None:
            args += ["--resume", str(Path(resume).absolute())]
        if overwrite:
            args.append("--overwrite")
        label = name or f"deploy-run-{Path(out or resume).name}"
        return self._spawn(label, sys.executable, "-m", "privfl.cli", "deploy", "run", *args, cwd=APP_DIR)

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
            raise DeployError(f"the Flower run into {out} did not finish; logs:\n{self.tail()}")
        return json.loads(path.read_text())

    def tail(self, chars: int = 3000) -> str:
        """The end of every log, for error messages."""
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in self.logs if p.exists()
        )

    def stop(self) -> None:
        """Stop every process started here (runs first, then SuperNodes, then the SuperLink)."""
        for proc in reversed(self.procs):
            stop_process_tree(proc)
        (self.root / STATE_FILE).unlink(missing_ok=True)


def stop_recorded(root: Path) -> int:
    """Stop the local deployment recorded in root/deployment.json; returns how many processes
    still ran. Pids that no longer run a Flower command (ended, or reused since) are left alone."""
    state_file = Path(root) / STATE_FILE
    if not state_file.is_file():
        raise DeployError(
            f"{state_file} does not exist: no local deployment was started with --dir {root} "
            "(or it was stopped already)"
        )
    pids = [int(p) for p in json.loads(state_file.read_text())["pids"]]
    running = [p for p in pids if _alive(p) and _is_flower(p)]
    stop_pids(running)
    state_file.unlink()
    return len(running)
