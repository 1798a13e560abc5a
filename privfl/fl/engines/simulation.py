"""`--engine flower-sim`: privfl's ServerApp and ClientApp on Flower's Simulation Runtime, in process.

Flower's Simulation Runtime is an in-memory SuperLink (LinkState + InMemoryGrid) whose Fleet side
hands each Message to a backend that runs the ClientApp for the destination virtual node
(`flwr.server.superlink.fleet.vce`). flwr 1.42 ships one backend, Ray (the `flwr[simulation]`
extra), which runs ClientApps in actor processes. privfl plugs in `InProcessBackend` instead:
one worker thread in this process, so the simulation needs nothing beyond `flwr` itself and its
clients train one after another, as in the built-in engine. Messages still go through the
LinkState, the Grid and the Message/Record serialisation of weights and ciphertexts.

The glue below (`simulate`) does what `flwr.simulation.run_simulation` does, with that backend;
it uses flwr's runtime modules directly, which is why privfl pins flwr to 1.42.*.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flwr.app import Context, Message, RecordDict
from flwr.app.user_config import UserConfig
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException
from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
from flwr.proto.task_pb2 import Task  # pylint: disable=no-name-in-module
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.backend import Backend, BackendConfig
from flwr.server.superlink.fleet.vce.metrics import VceMetrics
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from privfl.errors import EngineError
from privfl.fl.engines.client_app import make_client_app
from privfl.fl.engines.server_app import FlowerRounds
from privfl.fl.engines.session import Session

log = logging.getLogger(__name__)


class InProcessBackend(Backend):
    """A Simulation Runtime backend that runs the ClientApp in the calling worker thread."""

    def __init__(self, backend_config: BackendConfig | None = None) -> None:
        super().__init__(backend_config or {})
        self._app: ClientApp | None = None

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        self._app = app_fn()

    @property
    def num_workers(self) -> int:
        return 1  # one ClientApp at a time: torch already uses every core for one client

    def is_worker_idle(self) -> bool:
        return True

    def terminate(self) -> None:
        self._app = None

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        if self._app is None:
            raise RuntimeError("InProcessBackend.build() must be called before process_message()")
        try:
            return self._app(message=message, context=context), context
        except Exception as exc:  # the runtime turns this into an Error reply, as Ray's backend does
            raise ClientAppException(f"{type(exc).__name__}: {exc}") from exc


def simulate(server_app: ServerApp, client_app: ClientApp, num_supernodes: int) -> None:
    """Run `server_app` against `num_supernodes` virtual SuperNodes (partition-id 0..n-1) until it
    returns; re-raises what the ServerApp raised."""
    state_factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    state = state_factory.state()
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[run.primary_task_id] = Task(task_id=run.primary_task_id, run_id=run.run_id)
    # Messages take their run and sender from this process-wide identity (as run_simulation sets it)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID
    grid = InMemoryGrid(state_factory=state_factory)
    grid.set_run(run)
    nodes = vce_api._register_nodes(num_nodes=num_supernodes, state_factory=state_factory)
    node_stores = vce_api._register_node_info_stores(nodes_mapping=nodes, run=run)

    stop = threading.Event()
    failures: list[BaseException] = []
    context = Context(
        run_id=run.run_id,
        node_id=SUPERLINK_NODE_ID,
        node_config=UserConfig(),
        state=RecordDict(),
        run_config=UserConfig(),
    )

    def serve() -> None:
        try:
            server_app(grid=grid, context=context)
        except BaseException as exc:  # re-raised in the caller's thread below
            failures.append(exc)
        finally:
            stop.set()  # ends the runtime's loops

    server = threading.Thread(target=serve, name="privfl-serverapp", daemon=True)
    server.start()
    try:
        vce_api.run_api(
            lambda: client_app, InProcessBackend, nodes, state_factory, node_stores, stop, VceMetrics()
        )
    finally:
        stop.set()
        server.join(timeout=None if not failures and not server.is_alive() else 5.0)
    if failures:
        raise failures[0]
    if server.is_alive():
        raise EngineError("the Flower simulation runtime stopped while the ServerApp was still running")


@contextmanager
def _quiet_flower() -> Iterator[None]:
    """Flower logs every message at INFO; a library call stays quiet unless the user asked (-v)."""
    flwr_logger = logging.getLogger("flwr")
    before = flwr_logger.level
    if not logging.getLogger("privfl").isEnabledFor(logging.INFO):
        flwr_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        flwr_logger.setLevel(before)


def run_flower_simulation(session: Session, on_round: Callable[[dict], None] | None = None) -> None:
    """The session's remaining rounds on Flower's Simulation Runtime; the caller finishes the run."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        FlowerRounds(session, grid).run(on_round)

    # The virtual clients read the session's already prepared data; they build their own
    # trainer, policy and sampler from the config in each message, as a SuperNode does.
    client_app = make_client_app(load_data=lambda _cfg: session.data)
    with _quiet_flower():
        simulate(server_app, client_app, num_supernodes=len(session.data.clients))
