"""What privfl's ServerApp and ClientApp say to each other, as Flower RecordDicts.

Two message types:

  query (roll call)   server -> every node: {}.  reply: ConfigRecord "node" {partition-id,
                      num-partitions, privfl-version, public-key?}. Maps Flower node ids to privfl
                      client ids (and, with CKKS, gives a spawned key holder the clients' keys).
  train               server -> each sampled client:
                        ConfigRecord "task"   {round, experiment (the config as TOML), dp-sigma?,
                                               sampled-count? (user-dp with CKKS: k, for the
                                               noise share), he-bounds?}
                        ArrayRecord  "global" {weights: float32 [n_params]}
                        ArrayRecord  "he"     {context: public CKKS context, announcement and
                                               signature: the key holder's signed round packing,
                                               keyholder-key}                         (CKKS only)
                      reply:
                        ArrayRecord  "update" {delta: float32 [n_params]}            (plaintext)
                                           or {ciphertext, signature: the client's signed
                                               CKKS payload}                           (CKKS)
                        MetricRecord "report" {client, num-samples, train-loss, train-s,
                                               encrypt-s, stat.<name> for Update.stats}
                                           DP modes: {client} only (privfl.fl.dp.disclosed)

Everything a client needs travels in the message: the ServerApp's config is the only one. A client
is never told who else was sampled, and never says whether its update was clipped; under DP it
reports nothing the analysis does not cover.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

import numpy as np
import tomli_w
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from privfl import __version__
from privfl.config import ExperimentConfig
from privfl.fl.aggregate import RoundKeys, Upload

QUERY = "query"
TRAIN = "train"
CIPHERTEXT_STYPE = "privfl.ckks-payload"  # Array.stype of an encrypted contribution (opaque bytes)
PARTITION_ID = "partition-id"  # Flower's node-config keys, set by the simulation runtime and by
NUM_PARTITIONS = "num-partitions"  # `flower-supernode --node-config "partition-id=0 num-partitions=3"`
STAT_PREFIX = "stat."
PUBLIC_KEY = "public-key"  # roll-call field: the client's Ed25519 public key, hex (CKKS)
SIGNING_KEY = "signing-key"  # node-config keys a SuperNode may set for CKKS: its signing key's path
KEYHOLDER_KEY = "keyholder-key"  # and the key holder's public key (hex) it pins


def config_to_text(cfg: ExperimentConfig) -> str:
    """The experiment config as TOML text (what config.toml holds)."""
    return tomli_w.dumps(cfg.to_dict())


def config_from_text(text: str) -> ExperimentConfig:
    return ExperimentConfig.from_dict(tomllib.loads(text))


# --- roll call -----------------------------------------------------------------------------------
def roll_call_reply(
    request: Message, partition_id: int, num_partitions: int, public_key: bytes | None = None
) -> Message:
    """The node's partition, and with CKKS its client's Ed25519 public key (for a key holder the
    ServerApp spawns; a key holder run apart has its own registry and ignores it)."""
    info: dict = {
        PARTITION_ID: int(partition_id),
        NUM_PARTITIONS: int(num_partitions),
        "privfl-version": __version__,
    }
    if public_key is not None:
        info[PUBLIC_KEY] = bytes(public_key).hex()
    return Message(RecordDict({"node": ConfigRecord(info)}), reply_to=request)


# --- train: server -> client ---------------------------------------------------------------------
@dataclass(frozen=True)
class TrainTask:
    """One client's instructions for one round."""

    round_index: int
    experiment: str  # TOML
    weights: np.ndarray  # float32 [n_params]
    noise_multiplier: float | None = None  # the server's sigma (DP modes); clients train with it
    keys: RoundKeys | None = None  # the round's public keys (Summation.begin_round); None: plaintext
    sampled_count: int | None = None  # user-dp with CKKS: the round's k, which sets the noise share

    def __post_init__(self) -> None:
        if self.keys is None:
            object.__setattr__(self, "keys", RoundKeys(self.round_index, int(self.weights.shape[0])))

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
        if self.keys.public_context is not None:
            task["he-bounds"] = list(self.keys.bound_bits)
            records["task"] = ConfigRecord(task)
            he = {"context": _bytes_array(self.keys.public_context, "privfl.ckks-public-context")}
            for name, value in (
                ("announcement", self.keys.announcement),
                ("signature", self.keys.signature),
                ("keyholder-key", self.keys.keyholder_key),
            ):
                if value is not None:
                    he[name] = _bytes_array(value, f"privfl.ckks-{name}")
            records["he"] = ArrayRecord(he)
        return RecordDict(records)

    @classmethod
    def from_content(cls, content: RecordDict) -> TrainTask:
        task = content.config_records["task"]
        he = content.array_records.get("he")
        sigma = task.get("dp-sigma")
        count = task.get("sampled-count")
        weights = np.array(content.array_records["global"]["weights"].numpy(), dtype=np.float32)
        keys = RoundKeys(
            int(task["round"]),
            int(weights.shape[0]),
            bytes(he["context"].data) if he is not None else None,
            tuple(int(b) for b in task.get("he-bounds", [])),
            announcement=_optional_bytes(he, "announcement"),
            signature=_optional_bytes(he, "signature"),
            keyholder_key=_optional_bytes(he, "keyholder-key"),
        )
        return cls(
            round_index=int(task["round"]),
            experiment=str(task["experiment"]),
            weights=weights,
            noise_multiplier=float(sigma) if sigma is not None else None,
            keys=keys,
            sampled_count=int(count) if count is not None else None,
        )


# --- train: client -> server ---------------------------------------------------------------------
@dataclass(frozen=True)
class TrainReport:
    """What one client returns: its update in the clear, or its encrypted contribution.

    Under a DP mode (`private`) num_samples, train_loss and the timings are None and stats is
    empty: only `client` and the update travel. No report says whether the policy clipped the
    update: under user-dp that bit depends on the client's data and is not accounted.
    """

    client_id: int
    num_samples: int | None
    train_loss: float | None
    stats: dict
    delta: np.ndarray | None = None  # float32 [n_params], plaintext runs
    ciphertext: bytes | None = None  # privfl CKKS payload, encrypted runs (b"": the client sent nothing)
    signature: bytes | None = None  # the client's Ed25519 signature of its payload (CKKS)
    train_s: float | None = 0.0
    encrypt_s: float | None = 0.0
    encrypt_cpu_s: float | None = 0.0

    @classmethod
    def of(
        cls, upload: Upload, train_loss: float, stats: dict, train_s: float, *, private: bool = False
    ) -> TrainReport:
        """The report carrying one client's Upload (private: its id and update, nothing else)."""
        if private:
            return cls(
                upload.client_id,
                None,
                None,
                {},
                delta=upload.delta,
                ciphertext=upload.ciphertext,
                signature=upload.signature,
                train_s=None,
                encrypt_s=None,
                encrypt_cpu_s=None,
            )
        return cls(
            upload.client_id,
            upload.num_samples,
            train_loss,
            dict(stats),
            delta=upload.delta,
            ciphertext=upload.ciphertext,
            signature=upload.signature,
            train_s=train_s,
            encrypt_s=upload.encode_s,
            encrypt_cpu_s=upload.encode_cpu_s,
        )

    def upload(self, round_index: int) -> Upload:
        """The Upload this report carries, for the server's Summation.submit."""
        return Upload(
            self.client_id,
            round_index,
            self.num_samples if self.num_samples is not None else 0,  # DP: not reported
            delta=self.delta,
            ciphertext=self.ciphertext,
            signature=self.signature,
            encode_s=self.encrypt_s or 0.0,
            encode_cpu_s=self.encrypt_cpu_s or 0.0,
        )

    def reply_to(self, request: Message) -> Message:
        return Message(self.to_content(), reply_to=request)

    def to_content(self) -> RecordDict:
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
            "encrypt-cpu-s": self.encrypt_cpu_s,
        }
        report.update({k: v for k, v in optional.items() if v is not None})
        for key, value in self.stats.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                report[STAT_PREFIX + key] = value
        arrays = {"delta" if self.delta is not None else "ciphertext": update}
        if self.signature is not None:
            arrays["signature"] = _bytes_array(self.signature, "privfl.ed25519-signature")
        return RecordDict({"update": ArrayRecord(arrays), "report": MetricRecord(report)})

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
            signature=_optional_bytes(update, "signature"),
            train_s=optional("train-s", float),
            encrypt_s=optional("encrypt-s", float),
            encrypt_cpu_s=optional("encrypt-cpu-s", float),
        )


def _optional_bytes(record: ArrayRecord | None, name: str) -> bytes | None:
    return bytes(record[name].data) if record is not None and name in record else None


def _bytes_array(data: bytes, stype: str) -> Array:
    """Opaque bytes as a Flower Array, so they travel chunked like model weights."""
    return Array("uint8", (len(data),), stype, bytes(data))
