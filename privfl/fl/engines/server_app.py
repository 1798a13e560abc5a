"""privfl's Flower server side: `Session` rounds over a Flower Grid.

`FlowerRounds` runs the session's rounds with `Federation.run_round`, the same loop as the
built-in engine, through a gate (`GridClients`) that sends each sampled client the global weights
and the round's public keys and collects one Upload from each. The session's summation adds the
Uploads in the sampled order, as the built-in engine does, so both engines produce the same
floating-point sums; which scheme it is (plaintext delta or CKKS ciphertext) is the summation's
business. With CKKS this process is a relay: the secret key is in a key-holder process (spawned
by the summation, or run apart at secure.keyholder), which releases one sum per round; see
docs/deployment.md for the two placements and what each protects against.

The `flwr run` ServerApp entry that builds a Session around this is `privfl.flower_app`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from privfl.errors import EngineError
from privfl.fl.aggregate import RoundKeys, Upload
from privfl.fl.client import Update
from privfl.fl.engines.messages import (
    NUM_PARTITIONS,
    PARTITION_ID,
    PUBLIC_KEY,
    QUERY,
    TRAIN,
    TrainReport,
    TrainTask,
    config_to_text,
)
from privfl.fl.engines.session import Session, run_rounds
from privfl.fl.federation import Federation, RoundOutcome

NO_DELTA = np.zeros(0, dtype=np.float32)  # an encrypted client's Update: the server never sees its delta
ROLL_CALL_POLL_S = 0.5  # how often the roll call asks for new nodes and replies
# A SuperNode drops a ClientApp task whose process misses Flower's heartbeats (a loaded machine:
# the process is still importing torch); the roll call then asks that node again.
ROLL_CALL_RETRY_S = 30.0
POLL_S = 0.1  # how often to ask for replies (Grid.send_and_receive waits 3 s between asks on a SuperLink)


class GridClients:
    """The Federation's gate to clients behind a Flower Grid: one exchange per round, then each
    reply's Update (no delta when the server may not see it) and Upload, in the sampled order."""

    def __init__(self, rounds: FlowerRounds) -> None:
        self.rounds = rounds
        self.round_stats: dict = {}

    def train_round(
        self, round_index: int, weights: np.ndarray, selected: list[int], keys: RoundKeys
    ) -> Iterator[tuple[Update, Upload]]:
        reports = self.rounds.exchange(round_index, weights, selected, keys)
        self.round_stats = {
            "train_s": sum(reports[cid].train_s or 0.0 for cid in selected),  # DP clients send none
            "exchange_s": self.rounds.last_exchange_s,
        }
        for cid in selected:
            report = reports[cid]
            self.rounds.account(round_index, report)
            upload = report.upload(round_index)
            delta = upload.delta if upload.delta is not None else NO_DELTA
            loss = report.train_loss if report.train_loss is not None else math.nan  # DP: not reported
            yield Update(cid, round_index, delta, upload.num_samples, loss, report.stats), upload


class FlowerRounds:
    """Drives a Session's rounds over a Flower Grid (simulation or deployment runtime)."""

    def __init__(
        self, session: Session, grid: Grid, *, round_timeout: float = 3600.0, node_timeout: float = 120.0
    ) -> None:
        self.session = session
        self.grid = grid
        self.round_timeout = round_timeout
        self.node_timeout = node_timeout
        self.experiment = config_to_text(session.cfg)
        self.node_of: dict[int, int] = {}  # privfl client id -> Flower node id
        self._record_level = _record_level_privacy(session.components.privacy)
        self.last_exchange_s = 0.0

    # --- roll call ----------------------------------------------------------------------------
    def connect(self) -> dict[int, int]:
        """Wait for the nodes, ask each for its partition-id, and map every client to one node."""
        ckks = self.session.cfg.secure.scheme == "ckks"
        node_of, public_keys = roll_call(self.grid, len(self.session.data.clients), ckks, self.node_timeout)
        self.adopt(node_of, public_keys)
        return node_of

    def adopt(self, node_of: dict[int, int], public_keys: dict[int, bytes]) -> None:
        """Use a roll call's answer (privfl.flower_app calls `roll_call` before it builds the Session)."""
        self.node_of = dict(node_of)
        register = getattr(self.session.components.summation, "register", None)
        if (
            self.session.cfg.secure.scheme == "ckks"
            and register is not None
            and not self.session.cfg.secure.keyholder
        ):
            # a key holder this ServerApp spawns enrols the keys the nodes reported: one operator
            # then runs both parties (docs/deployment.md); one run apart keeps its own registry
            register(public_keys)

    # --- rounds -------------------------------------------------------------------------------
    def run(self, on_round: Callable[[dict], None] | None = None) -> None:
        """Connect if needed, then run the session's remaining rounds (each ends in Session.end_round)."""
        if not self.node_of:
            self.connect()
        run_rounds(self.session, self.federation(), on_round)

    def federation(self) -> Federation:
        """The one round loop, with this Grid's clients behind it."""
        c = self.session.components
        gate = GridClients(self)
        use_relay = getattr(c.summation, "use_relay", None)
        if use_relay is not None:  # SecAgg+: its stages after training go over this Grid too
            from privfl.fl.engines.secagg_relay import GridRelay

            use_relay(GridRelay(self))
        return Federation(None, (), c.sampler, c.policy, c.summation, gate=gate)

    def run_round(self, round_index: int, weights: np.ndarray) -> RoundOutcome:
        """One FedAvg round with the clients behind the Grid; the same outcome as the built-in engine."""
        return self.federation().run_round(round_index, weights)

    def exchange(
        self, r: int, weights: np.ndarray, selected: list[int], keys: RoundKeys
    ) -> dict[int, TrainReport]:
        """Send the round's task to each sampled client and collect one report from each."""
        self.last_exchange_s = 0.0
        if not selected:
            return {}
        privacy = self.session.components.privacy
        sigma = float(privacy.noise_multiplier) if privacy is not None else None
        # user-dp with CKKS: each client's noise share is sigma^2 S^2 / k, so it must know k; no
        # client is ever told who else was sampled
        encrypted_user_dp = (
            self.session.cfg.secure.scheme != "none" and self.session.cfg.train.mode == "user-dp"
        )
        count = len(selected) if encrypted_user_dp else None
        messages = [
            Message(
                TrainTask(r, self.experiment, weights, sigma, keys, count).to_content(),
                dst_node_id=self.node_of[cid],
                message_type=TRAIN,
                group_id=str(r),
            )
            for cid in selected
        ]
        t0 = time.perf_counter()
        replies = self._send_and_receive(messages, self.round_timeout)
        self.last_exchange_s = time.perf_counter() - t0
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

    def account(self, r: int, report: TrainReport) -> None:
        """Record-level DP: mirror the client's accountant from the public schedule (its own lives
        with the client, which reports no step count: only its update leaves it)."""
        p = self._record_level
        if p is None:
            return
        cid = report.client_id
        p.spend(cid, p.steps_per_round[cid], p.sample_rates[cid], r)


def roll_call(
    grid: Grid,
    k: int,
    ckks: bool,
    timeout: float,
    progress: Callable[[list[int], dict[int, int]], None] | None = None,
) -> tuple[dict[int, int], dict[int, bytes]]:
    """Map partition-ids 0..k-1 to Flower node ids: ask each node as soon as it connects, and
    return once every id is claimed ({partition: node}, {partition: Ed25519 public key} under CKKS).

    A node with the wrong num-partitions, two nodes with one id, or a node that fails the query
    stop the roll call at once. `progress(missing, node_of)` is called whenever every connected
    node has answered and ids are still missing (their SuperNodes have not connected, or were
    started with other ids); after `timeout` seconds the error names the missing ids.
    """
    query = RecordDict({"query": ConfigRecord({"ckks": int(ckks)})})
    deadline = time.monotonic() + timeout
    asked: dict[int, float] = {}  # node -> when it was last asked
    waiting: set[str] = set()
    node_of: dict[int, int] = {}
    public_keys: dict[int, bytes] = {}
    others: dict[int, int] = {}  # node -> a partition-id outside 0..k-1
    reported: list[int] | None = None
    while True:
        now = time.monotonic()
        answered = set(node_of.values()) | set(others)
        new = [
            n
            for n in grid.get_node_ids()
            if n not in answered and (n not in asked or now - asked[n] > ROLL_CALL_RETRY_S)
        ]
        if new:
            asked.update(dict.fromkeys(new, now))
            waiting.update(
                grid.push_messages([Message(query, dst_node_id=n, message_type=QUERY) for n in new])
            )
        if waiting:
            for reply in grid.pull_messages(set(waiting)):
                waiting.discard(reply.metadata.reply_to_message_id)
                partition = _roll_call_entry(reply, k, node_of)
                if 0 <= partition < k:
                    node_of[partition] = reply.metadata.src_node_id
                    info = reply.content.config_records["node"]
                    if ckks and PUBLIC_KEY in info:
                        public_keys[partition] = bytes.fromhex(str(info[PUBLIC_KEY]))
                else:
                    others[reply.metadata.src_node_id] = partition
        missing = sorted(set(range(k)) - set(node_of))
        if not missing:
            return node_of, public_keys
        if not waiting and missing != reported:
            reported = missing
            if progress is not None:
                progress(missing, node_of)
        if time.monotonic() > deadline:
            stray = f"; node(s) with partition-ids outside 0..{k - 1}: {others}" if others else ""
            unanswered = set(asked) - set(node_of.values()) - set(others)
            silent = f"; {len(unanswered)} connected node(s) did not answer" if unanswered else ""
            raise EngineError(
                f"no SuperNode answered for partition-id(s) {missing} within {timeout:.0f}s "
                f"(answered: {sorted(node_of) or 'none'}{stray}{silent}); start one SuperNode per missing "
                f'id with --node-config "partition-id=<id> num-partitions={k}", or give them longer with '
                "the run config's node-timeout="
            )
        time.sleep(ROLL_CALL_POLL_S)


def _roll_call_entry(reply: Message, k: int, node_of: dict[int, int]) -> int:
    """The partition-id a roll-call reply claims; raises on a failed query, a wrong
    num-partitions, or an id another node claimed already."""
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
    if partition in node_of and node_of[partition] != node:
        raise EngineError(
            f"SuperNodes {node_of[partition]} and {node} both claim partition-id={partition}; "
            "give every SuperNode its own"
        )
    return partition


def _record_level_privacy(privacy):
    from privfl.privacy import RecordLevelPrivacy

    return privacy if isinstance(privacy, RecordLevelPrivacy) else None
