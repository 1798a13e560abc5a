"""Client canaries in the round loop: a Summation wrapper that adds them before the sum is released.

Each round the included canaries that take part (`privfl.canaries.ClientCanaries.round_members`)
contribute through the round's policy like a client: DP-FedAvg clips them to S and the server's
noise covers them; under FedAvg a canary's update is multiplied by its reported sample count (the
clients' mean) but adds nothing to the sum of weights, so the clients' weighted mean is what it
would be without canaries and each canary moves the model as far as an average client would. They are
never among the round's `selected` clients or its `updates`, so metrics, recorded updates and
client counts are those of the real clients alone (docs/auditing.md).
"""

from __future__ import annotations

import math

from privfl.canaries import ClientCanaries
from privfl.fl.aggregate import Contribution, ContributionRule, RoundKeys, Summation, SumResult, Upload
from privfl.fl.client import Update


class WithCanaryClients:
    """Summation wrapper: the inner summation's sum plus this round's canary contributions."""

    def __init__(self, inner: Summation, contribution: ContributionRule, canaries: ClientCanaries) -> None:
        self.inner = inner
        self.contribution = contribution
        self.canaries = canaries
        self._round = 0

    def begin_round(self, round_index: int, n_params: int) -> RoundKeys:
        self._round = round_index
        return self.inner.begin_round(round_index, n_params)

    def encode(self, update: Update, contribution: ContributionRule, keys: RoundKeys) -> Upload:
        return self.inner.encode(update, contribution, keys)

    def submit(self, upload: Upload, contribution: ContributionRule) -> None:
        self.inner.submit(upload, contribution)

    def add(self, contribution) -> None:
        self.inner.add(contribution)

    def finish(self) -> SumResult:
        c = self.canaries
        for index in c.round_members():
            update = Update(
                c.first_id + int(index), self._round, c.update_vector(int(index)), c.weight, math.nan
            )
            made = self.contribution(update)
            # no FedAvg weight: the clients' weighted mean stays theirs, each canary adds its own
            # (weighted) update on top; DP-FedAvg ignores weights (it divides by qK)
            self.inner.add(Contribution(made.client_id, made.vector, 0.0, clipped=made.clipped))
        return self.inner.finish()

    def state(self) -> dict:
        return self.inner.state()

    def load_state(self, state: dict) -> None:
        self.inner.load_state(state)
