"""The tiny grid the benchmark tests run: 8 synthetic speakers, 4 one-speaker clients, 2 rounds."""

from __future__ import annotations

import pytest

from privfl.bench.grid import AttackPlan, Grid, GridPoint
from tests.conftest import TINY

# one training speaker per client, so each client has one gender and both genders occur
TINY_ATTACKABLE = {**TINY, "train.clients": 4, "data.partition": "by-speaker", "train.record_updates": True}
TINY_ATTACKS = AttackPlan(
    gender=(("bootstrap", 20), ("max_rounds", 1), ("shadow_clients", 4)),
    membership=(("bootstrap", 20), ("candidates", 4), ("max_rounds", 1)),
)


@pytest.fixture()
def tiny_grid(tiny_config) -> Grid:
    """Two points (plain FedAvg, record-level DP), one seed, cheap attacks."""
    return Grid(
        "tiny",
        tiny_config.override(TINY_ATTACKABLE),
        (
            GridPoint("fedavg", "none"),
            GridPoint("record-dp-sigma1", "record-dp", (("train.mode", "dp"), ("dp.noise_multiplier", 1.0))),
        ),
        (0,),
        TINY_ATTACKS,
    )
