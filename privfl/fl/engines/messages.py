"""What privfl's ServerApp and ClientApp say to each other, as Flower RecordDicts.

Two message types:

  query (roll call)   server -> every node: {}.  reply: ConfigRecord "node" {partition-id,
                      num-partitions, privfl-version}. Maps Flower node ids to privfl client ids.
  train               server -> each sampled client:
                        ConfigRecord "task"   {round, experiment (the config as TOML), dp-sigma?,
                                               sampled-count? (user-dp with CKKS: k, for the
                                               noise share), he-bounds?}
                        ArrayRecord  "global" {weights: float32 [n_params]}
                        ArrayRecord  "he"     {context: public CKKS context bytes}   (CKKS only)
                      reply:
                        ArrayRecord  "update" {delta: float32 [n_params]}            (plaintext)
                                           or {ciphertext: privfl CKKS payload bytes} (CKKS)
                        MetricRecord "report" {client, num-samples, train-loss, train-s,
                                               encrypt-s, stat.<name> for Update.stats}
                                           DP modes: {client} only (privfl.fl.dp.disclosed)

Everything a client needs travels in the message: the ServerApp's config is the only one. A client
is never told who else was sampled; under DP it reports nothing the analysis does not cover.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

import numpy as np
import tomli_w
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from privfl import __version__
from privfl.config import ExperimentConfig

QUERY = "query"
TRAIN = "train"
CIPHERTEXT_STYPE = "privfl.ckks-payload"  # Array.stype of an encrypted contribution (opaque bytes)
PARTITION_ID = "partition-id"  # Flower's node-config keys, set by the simulation runtime and by
NUM_PARTITIONS = "num-partitions"  # `flower-supernode --node-config "partition-id=0 num-partitions=3"`
STAT_PREFIX = "stat."


def config_to_text(cfg: ExperimentConfig) -> str:
    """The experiment config as TOML text (what config.toml holds)."""
    return tomli_w.dumps(cfg.to_dict())


def config_from_text(text: str) -> ExperimentConfig:
    return ExperimentConfig.from_dict(tomllib.loads(text))


# --- roll call -----------------------------------------------------------------------------------
def roll_call_reply(request: Message, partition_id: int, num_partitions: int) -> Message:
    node = ConfigRecord(
        {PARTITION_ID: int(partition_id), NUM_PARTITIONS: int(num_partitions), "privfl-version": __version__}
    )
    return Message(RecordDict({"node": node}), reply_to=request)


# --- train: server -> client ---------------------------------------------------------------------
@dataclass(frozen=True)
class TrainTask:
    """One client's instructions for one round."""

    round_index: int
    experiment: str  # TOML
    weights: np.ndarray  # float32 [n_params]
    noise_multiplier: float | None = None  # the server's sigma (DP modes); clients train with it
    sampled_count: int | None = None  # user-dp with CKKS: the round's k, which sets the noise share
    he_context: bytes | None = None  # public CKKS context (no secret key)
    he_bounds: tuple[int, ...] = ()  # the round's public packing bounds (RoundSpec.bound_bits)

    def to_content(self) -> RecordDict:
        task: dict = {"round": self.round_index, "experiment": self.experiment}
        if self.noise_multiplier is not None:
            task["dp-sigma"] = float(self.noise_multiplier)
        if self.sampled_count is not None:
            task["sampled-count"] = int(self.sampled_count)
        records: dict = {
            "task": ConfigRecord(task),
            "global": ArrayRecord({"weights": Array(np.ascontiguousarray(self.weights, dtype=np.float32))}),
        }
        if self.he_context is not None:
            task["he-bounds"] = list(self.he_bounds)
            records["task"] = ConfigRecord(task)
            records["he"] = ArrayRecord(
                {"context": _bytes_array(self.he_context, "privfl.ckks-public-context")}
            )
        return RecordDict(records)

    @classmethod
    def from_content(cls, content: RecordDict) -> TrainTask:
        task = content.config_records["task"]
        he = content.array_records.get("he")
        sigma = task.get("dp-sigma")
        count = task.get("sampled-count")
        return cls(
            round_index=int(task["round"]),
            experiment=str(task["experiment"]),
            weights=np.array(content.array_records["global"]["weights"].numpy(), dtype=np.float32),
            noise_multiplier=float(sigma) if sigma is not None else None,
            sampled_count=int(count) if count is not None else None,
            he_context=bytes(he["context"].data) if he is not None else None,
            he_bounds=tuple(int(b) for b in task.get("he-bounds", [])),
        )


# --- train: client -> server ---------------------------------------------------------------------
@dataclass(frozen=True)
class TrainReport:
    """What one client returns: its update in the clear, or its encrypted contribution.

    Under a DP mode num_samples, train_loss and the timings are None and stats is empty: only
    `client` and the update travel (`dp_only`).
    """

    client_id: int
    num_samples: int | None
    train_loss: float | None
    stats: dict
    delta: np.ndarray | None = None  # float32 [n_params], plaintext runs
    ciphertext: bytes | None = None  # privfl CKKS payload, encrypted runs
    train_s: float | None = 0.0
    encrypt_s: float | None = 0.0

    @classmethod
    def dp_only(cls, client_id: int, *, delta=None, ciphertext=None) -> TrainReport:
        """A DP client's report: its id and its update, nothing the analysis does not cover."""
        return cls(client_id, None, None, {}, delta, ciphertext, None, None)

    def reply_to(self, request: Message) -> Message:
        if (self.delta is None) == (self.ciphertext is None):
            raise ValueError("a report carries exactly one of delta and ciphertext")
        update = (
            Array(np.ascontiguousarray(self.delta, dtype=np.float32))
            if self.delta is not None
            else _bytes_array(self.ciphertext, CIPHERTEXT_STYPE)
        )
        report: dict = {"client": int(self.client_id)}
        optional = {
            "num-samples": self.num_samples,
            "train-loss": self.train_loss,
            "train-s": self.train_s,
            "encrypt-s": self.encrypt_s,
        }
        report.update({k: v for k, v in optional.items() if v is not None})
        for key, value in self.stats.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                report[STAT_PREFIX + key] = value
        key = "delta" if self.delta is not None else "ciphertext"
        return Message(
            RecordDict({"update": ArrayRecord({key: update}), "report": MetricRecord(report)}),
            reply_to=request,
        )

    @classmethod
    def from_content(cls, content: RecordDict) -> TrainReport:
        report = content.metric_records["report"]
        update = content.array_records["update"]
        stats = {k[len(STAT_PREFIX) :]: v for k, v in report.items() if k.startswith(STAT_PREFIX)}
        delta = np.array(update["delta"].numpy(), dtype=np.float32) if "delta" in update else None
        ciphertext = bytes(update["ciphertext"].data) if "ciphertext" in update else None

        def optional(key: str, kind: type):
            return kind(report[key]) if key in report else None

        return cls(
            client_id=int(report["client"]),
            num_samples=optional("num-samples", int),
            train_loss=optional("train-loss", float),
            stats=stats,
            delta=delta,
            ciphertext=ciphertext,
            train_s=optional("train-s", float),
            encrypt_s=optional("encrypt-s", float),
        )


def _bytes_array(data: bytes, stype: str) -> Array:
    """Opaque bytes as a Flower Array, so they travel chunked like model weights."""
    return Array("uint8", (len(data),), stype, bytes(data))
