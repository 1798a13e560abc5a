"""What a benchmark tells its caller while it runs; the library's default says nothing."""

from __future__ import annotations


class Reporter:
    """Progress hooks of a benchmark; subclass and override what you show (the CLI draws rich bars)."""

    def grid_started(self, total_runs: int) -> None:
        """`total_runs` (point, seed) runs follow, including ones that will be reused."""

    def run_started(self, label: str, state: str, rounds: int) -> None:
        """A run begins; state is new, resume, extend or done (reused)."""

    def round_done(self, row: dict) -> None:
        """A training round finished; row is its metrics.jsonl line."""

    def stage(self, name: str, done: int, total: int) -> None:
        """Progress inside a stage (features, shadow clients, per-sample gradients ...)."""

    def run_finished(self, record: dict) -> None:
        """A run and its attacks are done; record is its results row."""

    def note(self, text: str) -> None:
        """Something the user should read (a skipped defence, a failed attack)."""
