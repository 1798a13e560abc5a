"""privfl.fl.engines.simulation is the one module that uses Flower's runtime internals: when a flwr
release moves them, this test names what moved instead of failing deep inside a run."""

from __future__ import annotations

import importlib
import importlib.metadata

import pytest

pytest.importorskip("flwr")

# (module, attribute) pairs simulate() and InProcessBackend use, none of them Flower's public API
INTERNALS = [
    ("flwr.server.superlink.fleet.vce.vce_api", "_register_nodes"),
    ("flwr.server.superlink.fleet.vce.vce_api", "_register_node_info_stores"),
    ("flwr.server.superlink.fleet.vce.vce_api", "run_api"),
    ("flwr.server.superlink.fleet.vce.backend", "Backend"),
    ("flwr.server.superlink.linkstate", "LinkStateFactory"),
    ("flwr.server.superlink.linkstate.in_memory_linkstate", "RunRecord"),
    ("flwr.server.superlink.linkstate.utils", "generate_rand_int_from_bytes"),
    ("flwr.superlink.grid", "InMemoryGrid"),
    ("flwr.supercore.task_identity", "TaskIdentity"),
    ("flwr.supercore.object_store", "ObjectStoreFactory"),
    ("flwr.superlink.federation", "NoOpFederationManager"),
]


def _moved() -> list[str]:
    moved = []
    for module, attr in INTERNALS:
        try:
            owner = importlib.import_module(module)
        except ImportError as exc:
            moved.append(f"{module} ({exc})")
            continue
        if not hasattr(owner, attr):
            moved.append(f"{module}.{attr}")
    return moved


def test_flower_internals_used_by_the_simulation_engine_are_still_there():
    version = importlib.metadata.version("flwr")
    moved = _moved()
    assert not moved, (
        f"flwr {version} no longer has {', '.join(moved)}, which privfl.fl.engines.simulation uses "
        "(it plugs an in-process backend into Flower's Simulation Runtime); privfl is tested with "
        'flwr==1.42.*: pip install -c constraints.txt -e ".[dev]", or port simulate() to this flwr'
    )
    import privfl.fl.engines.simulation as simulation

    assert issubclass(simulation.InProcessBackend, importlib.import_module(INTERNALS[3][0]).Backend)


def test_the_check_names_a_missing_internal(monkeypatch):
    monkeypatch.delattr(importlib.import_module("flwr.server.superlink.fleet.vce.vce_api"), "run_api")
    assert _moved() == ["flwr.server.superlink.fleet.vce.vce_api.run_api"]
