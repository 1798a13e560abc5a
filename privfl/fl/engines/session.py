"""What an engine is given (a built `Session`) and how it fails (`EngineError`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from privfl.config import ExperimentConfig
from privfl.data.dataset import PreparedData
from privfl.fl.components import Components
from privfl.fl.federation import Federation, RoundOutcome


class Session(Protocol):
    """What an engine needs of a run (privfl.experiment.Session is the one implementation)."""

    cfg: ExperimentConfig
    data: PreparedData
    components: Components
    weights: np.ndarray

    def rounds(self) -> range: ...

    def begin_round(self) -> None: ...

    def end_round(self, r: int, outcome: RoundOutcome) -> dict: ...


def run_rounds(
    session: Session, federation: Federation, on_round: Callable[[dict], None] | None = None
) -> None:
    """The session's remaining rounds through `federation`; each ends in Session.end_round."""
    for r in session.rounds():
        session.begin_round()
        row = session.end_round(r, federation.run_round(r, session.weights))
        if on_round is not None:
            on_round(row)
