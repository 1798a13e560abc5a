"""privfl's Flower ServerApp: `Session` rounds over a Flower Grid.

`FlowerRounds.run_round` is `Federation.run_round` with the clients behind a Grid: sample with the
session's sampler, send each sampled client the global weights, then sum what comes back with the
session's summation policy and take the policy's server step. Replies are summed in the sampled
order, as the built-in engine does, so both engines produce the same floating-point sums.

With CKKS the ServerApp is the aggregator: each client's reply holds only a ciphertext, which goes
to `CkksSummation.submit_encrypted` (an `Aggregator` holding the public context). The secret key
stays in the session's `KeyHolder`, an object of this process that is only ever handed the
aggregate (see docs/deployment.md for what that does and does not protect against).

`app` is what `flwr run` starts on the SuperLink's machine; its run config (pyproject.toml,
[tool.flwr.app.config]) names the experiment TOML and the run directory.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from privfl.config import ExperimentConfig
from privfl.errors import ConfigError
from privfl.fl.client import Update
from privfl.fl.engines import EngineError, check_flower_config
from privfl.fl.engines.messages import (
    NUM_PARTITIONS,
    PARTITION_ID,
    QUERY,
    TRAIN,
    TrainReport,
    TrainTask,
    config_to_text,
)
from privfl.fl.federation import RoundOutcome

log = logging.getLogger(__name__)

NO_DELTA = np.zeros(0, dtype=np.float32)  # an encrypted client's Update: the server never sees its delta
POLL_S = 0.1  # how often to ask for replies (Grid.send_and_receive waits 3 s between asks on a SuperLink)


class FlowerRounds:
    """Drives a Session's rounds over a Flower Grid (simulation or deployment runtime)."""

    def __init__(
        self, session, grid: Grid, *, round_timeout: float = 3600.0, node_timeout: float = 120.0
    ) -> None:
        self.session = session
        self.grid = grid
        self.round_timeout = round_timeout
        self.node_timeout = node_timeout
        self.experiment = config_to_text(session.cfg)
        self.node_of: dict[int, int] = {}  # privfl client id -> Flower node id
        self._ckks = _ckks_of(session.components.summation) if session.cfg.secure.scheme != "none" else None
        self._record_level = _record_level_privacy(session.components.privacy)

    # --- roll call ----------------------------------------------------------------------------
    def connect(self) -> dict[int, int]:
        """Wait for the nodes, ask each for its partition-id, and map every client to one node."""
        k = len(self.session.data.clients)
        deadline = time.monotonic() + self.node_timeout
        nodes = list(self.grid.get_node_ids())
        while len(nodes) < k and time.monotonic() < deadline:
            time.sleep(1.0)
            nodes = list(self.grid.get_node_ids())
        if len(nodes) < k:
            raise EngineError(
                f"{len(nodes)} SuperNode(s) connected within {self.node_timeout:.0f}s, the experiment has "
                f"train.clients = {k}: start one SuperNode per client with "
                f'--node-config "partition-id=<0..{k - 1}> num-partitions={k}"'
            )
        queries = [Message(RecordDict(), dst_node_id=n, message_type=QUERY) for n in nodes]
        replies = self._send_and_receive(queries, self.node_timeout)
        node_of: dict[int, int] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                raise EngineError(f"SuperNode {node} failed the roll call: {reply.error.reason}")
            info = reply.content.config_records["node"]
            partition, total = int(info[PARTITION_ID]), int(info[NUM_PARTITIONS])
            if total not in (-1, k):
                raise EngineError(
                    f"SuperNode {node} was started with num-partitions={total}, the experiment has "
                    f"train.clients = {k}; restart it with num-partitions={k}"
                )
            if partition in node_of:
                raise EngineError(
                    f"SuperNodes {node_of[partition]} and {node} both claim partition-id={partition}; "
                    "give every SuperNode its own"
                )
            if 0 <= partition < k:
                node_of[partition] = node
        missing = sorted(set(range(k)) - set(node_of))
        if missing:
            raise EngineError(
                f"no SuperNode answered for partition-id(s) {missing} within {self.node_timeout:.0f}s; start "
                f'one per client with --node-config "partition-id=<id> num-partitions={k}"'
            )
        self.node_of = node_of
        return node_of

    # --- rounds -------------------------------------------------------------------------------
    def run(self, on_round: Callable[[dict], None] | None = None) -> None:
        """Connect if needed, then run the session's remaining rounds (each ends in Session.end_round)."""
        if not self.node_of:
            self.connect()
        s = self.session
        for r in s.rounds():
            s.begin_round()
            row = s.end_round(r, self.run_round(r, s.weights))
            if on_round is not None:
                on_round(row)

    def run_round(self, round_index: int, weights: np.ndarray) -> RoundOutcome:
        """One FedAvg round with the clients behind the Grid; the same outcome as Federation.run_round."""
        c, r = self.session.components, round_index
        selected = list(c.sampler(r))
        c.summation.begin_round(r, weights.shape[0])
        reports = self._exchange(r, weights, selected)
        updates: list[Update] = []
        for cid in selected:  # the sampled order, as the built-in engine sums
            report = reports[cid]
            self._account(r, report)
            if self._ckks is not None:
                self._ckks.submit_encrypted(cid, report.ciphertext)
                delta = NO_DELTA
            else:
                delta = report.delta
            update = Update(
                cid,
                r,
                delta,
                report.num_samples if report.num_samples is not None else 0,  # DP: not reported
                report.train_loss if report.train_loss is not None else math.nan,
                report.stats,
            )
            if self._ckks is None:
                c.summation.submit(c.policy.contribution(update))
            updates.append(update)
        t0 = time.perf_counter()
        # Encrypted payloads went to the CKKS summation directly; a wrapper around it (user-dp's
        # SkipEmptyRounds) saw none of them, so only a round with no client goes through it.
        result = self._ckks.finish() if self._ckks is not None and updates else c.summation.finish()
        new_weights, step_stats = c.policy.server_step(weights, result, r)
        server_s = time.perf_counter() - t0
        stats = {
            "train_s": sum(reports[cid].train_s or 0.0 for cid in selected),
            "server_s": server_s,
            "exchange_s": self._last_exchange_s,
            "clients": len(selected),
            **result.stats,
            **step_stats,
        }
        if self._ckks is not None:
            stats["encrypt_s"] = sum(reports[cid].encrypt_s or 0.0 for cid in selected)
        return RoundOutcome(new_weights, updates, selected, stats)

    def _exchange(self, r: int, weights: np.ndarray, selected: list[int]) -> dict[int, TrainReport]:
        """Send the round's task to each sampled client and collect one report from each."""
        self._last_exchange_s = 0.0
        if not selected:
            return {}
        privacy = self.session.components.privacy
        sigma = float(privacy.noise_multiplier) if privacy is not None else None
        he_context, he_bounds = None, ()
        if self._ckks is not None:
            he_context, he_bounds = self._ckks.public_context, tuple(self._ckks.round_spec.bound_bits)
        # user-dp with CKKS: each client's noise share is sigma^2 S^2 / k, so it must know k; no
        # client is ever told who else was sampled
        count = len(selected) if self._ckks is not None and self.session.cfg.train.mode == "user-dp" else None
        messages = [
            Message(
                TrainTask(r, self.experiment, weights, sigma, count, he_context, he_bounds).to_content(),
                dst_node_id=self.node_of[cid],
                message_type=TRAIN,
                group_id=str(r),
            )
            for cid in selected
        ]
        t0 = time.perf_counter()
        replies = self._send_and_receive(messages, self.round_timeout)
        self._last_exchange_s = time.perf_counter() - t0
        client_of = {node: cid for cid, node in self.node_of.items()}
        reports: dict[int, TrainReport] = {}
        for reply in replies:
            cid = client_of.get(reply.metadata.src_node_id)
            if reply.has_error():
                raise EngineError(f"round {r}: client {cid} failed: {reply.error.reason}")
            report = TrainReport.from_content(reply.content)
            if report.client_id != cid:
                raise EngineError(
                    f"round {r}: the node registered as client {cid} answered as client {report.client_id}"
                )
            if (report.ciphertext is None) != (self._ckks is None):
                sent = "plaintext" if report.delta is not None else "ciphertext"
                raise EngineError(
                    f"round {r}: client {cid} sent {sent} to a run with "
                    f"secure.scheme = {self.session.cfg.secure.scheme!r}"
                )
            reports[cid] = report
        missing = [cid for cid in selected if cid not in reports]
        if missing:
            raise EngineError(
                f"round {r}: no reply from client(s) {missing} within {self.round_timeout:.0f}s; privfl runs "
                "rounds without dropouts (the DP accounting and the encrypted sum assume every sampled "
                "client reports): check those SuperNodes and resume the run"
            )
        return reports

    def _send_and_receive(self, messages: list[Message], timeout: float) -> list[Message]:
        """Push the messages, then pull replies every POLL_S seconds until all came or timeout."""
        waiting = set(self.grid.push_messages(messages))
        deadline = time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            got = list(self.grid.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        return replies

    def _account(self, r: int, report: TrainReport) -> None:
        """Record-level DP: mirror the client's accountant from the public schedule (its own lives
        with the client, which reports no step count: only its update leaves it)."""
        p = self._record_level
        if p is None:
            return
        cid = report.client_id
        p.spend(cid, p.steps_per_round[cid], p.sample_rates[cid], r)


def _ckks_of(summation):
    """The CkksSummation inside `summation` (possibly wrapped, e.g. SkipEmptyRounds), or None."""
    from privfl.fl.secure import CkksSummation

    inner = summation
    while inner is not None and not isinstance(inner, CkksSummation):
        inner = getattr(inner, "inner", None)
    return inner


def _record_level_privacy(privacy):
    from privfl.privacy import RecordLevelPrivacy

    return privacy if isinstance(privacy, RecordLevelPrivacy) else None


# --- the deployment ServerApp (`flwr run`) -------------------------------------------------------
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the experiment named by the run config on the SuperNodes connected to this SuperLink."""
    from privfl.experiment import Session

    rc = context.run_config
    config_path = str(rc.get("config", "") or "")
    if config_path and not Path(config_path).is_absolute():
        raise ConfigError(
            f"run config 'config' = {config_path!r} must be an absolute path: the ServerApp runs in the "
            "SuperLink's working directory, not yours"
        )
    cfg = ExperimentConfig.from_toml(Path(config_path)) if config_path else ExperimentConfig()
    check_flower_config(cfg.validate())
    out = str(rc.get("out", "") or "")
    resume = str(rc.get("resume", "") or "")
    session = Session(
        cfg,
        Path(out) if out else None,
        resume=Path(resume) if resume else None,
        overwrite=bool(rc.get("overwrite", False)),
    )
    rounds = FlowerRounds(
        session,
        grid,
        round_timeout=float(rc.get("round-timeout", 3600.0)),
        node_timeout=float(rc.get("node-timeout", 120.0)),
    )
    flwr_log = logging.getLogger("flwr")  # what `flwr run --stream` and `flwr log` show
    rounds.run(on_round=lambda row: flwr_log.info("privfl round %d: %s", row["round"], _brief(row)))
    summary = session.finish()
    flwr_log.info("run directory: %s (final val UAR %.3f)", summary["run_dir"], summary["final_val_uar"])


def _brief(row: dict) -> str:
    keys = ("val_uar", "train_loss", "epsilon", "seconds")
    return ", ".join(f"{k}={row[k]:.4g}" for k in keys if k in row)
