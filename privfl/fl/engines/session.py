"""What an engine is given (a built `Session`) and how it fails (`EngineError`)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from privfl.config import ExperimentConfig
from privfl.data.dataset import PreparedData
from privfl.errors import PrivflError
from privfl.fl.components import Components
from privfl.fl.federation import RoundOutcome


class Session(Protocol):
    """What an engine needs of a run (privfl.experiment.Session is the one implementation)."""

    cfg: ExperimentConfig
    data: PreparedData
    components: Components
    weights: np.ndarray

    def rounds(self) -> range: ...

    def begin_round(self) -> None: ...

    def end_round(self, r: int, outcome: RoundOutcome) -> dict: ...


class EngineError(PrivflError):
    """A federation engine could not complete a round (a client failed, timed out or is missing)."""
