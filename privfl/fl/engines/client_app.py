"""privfl's Flower ClientApp: local training, then the summation's client-side encoding.

The ClientApp runs the same `Trainer`, `Policy` and `Summation` the built-in engine runs, built by
the same `build_components` from the config the ServerApp sends; it only adds the transport. It
returns whatever `Summation.encode` makes of the update with the round's public keys: in a
plaintext run the update itself (the server weights it), in an encrypted run the policy's
contribution (user-dp: clipped, with its noise share drawn from this process's OS entropy) as a
ciphertext. Under `dp` and `user-dp` the reply carries the client id and the update alone.

`app` is what `flwr run` loads on a SuperNode: it prepares the configured corpus from that
machine's copy (or PRIVFL_CACHE) and trains the client named by the node's `partition-id`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from privfl.config import ExperimentConfig
from privfl.errors import EngineError
from privfl.fl.engines.messages import (
    KEYHOLDER_KEY,
    NUM_PARTITIONS,
    PARTITION_ID,
    SIGNING_KEY,
    TrainReport,
    TrainTask,
    config_from_text,
    roll_call_reply,
)

DataSource = Callable[[ExperimentConfig], object]  # config -> PreparedData (anything with .clients)


class ClientParty:
    """One ClientApp process's state for one experiment: the clients' data and their components.

    Built once per config and reused across rounds where the process lives on (simulation); a
    SuperNode starts a fresh ClientApp process per message, which rebuilds it from the cache.
    """

    def __init__(self, cfg: ExperimentConfig, data) -> None:
        # imported here, not at the top: a ClientApp process that answers a roll call or a SecAgg+
        # stage then starts without torch and opacus (seconds of CPU per message on a SuperNode)
        from privfl.fl.components import build_components

        self.cfg = cfg
        self.clients = list(data.clients)
        # The same trainer, policy, summation and sampler as the server's; with CKKS this client's
        # copy of the summation only encodes, with the node's signing key (`enrol`).
        self.components = build_components(cfg, data)

    def enrol(self, client_id: int, node_config) -> None:
        """CKKS: sign with this node's key; pin the key holder's key from the node config if it has one."""
        if self.cfg.secure.scheme != "ckks":
            return
        pinned = node_config.get(KEYHOLDER_KEY)
        try:
            pin = bytes.fromhex(str(pinned)) if pinned else None
        except ValueError as exc:
            raise EngineError(f"node config {KEYHOLDER_KEY}={pinned!r} is not a hex key") from exc
        self.components.summation.enrol(client_id, signing_key(node_config, client_id), pin)

    def train(self, client_id: int, task: TrainTask) -> TrainReport:
        """Train client `client_id` from the task's weights; report its update or its ciphertext."""
        c, r = self.components, task.round_index
        if not 0 <= client_id < len(self.clients):
            raise EngineError(
                f"this node is partition {client_id}, but the experiment has {len(self.clients)} clients: "
                f"start SuperNodes with partition-id 0..{len(self.clients) - 1}"
            )
        if self.cfg.train.mode == "user-dp" and self.cfg.secure.scheme != "none":
            # the client knows it was sampled and the round's count k (its noise share needs k),
            # never who else was: the sample is the server's secret
            if task.sampled_count is None:
                raise EngineError(
                    f"round {r}: a user-dp CKKS task without sampled-count; server and clients must run "
                    "the same privfl version"
                )
            c.policy.announce(r, task.sampled_count)
        t0 = time.perf_counter()
        update = c.trainer.train(self.clients[client_id], task.weights, r)
        train_s = time.perf_counter() - t0
        upload = c.summation.encode(update, c.policy.contribution, task.keys)
        private = self.cfg.train.mode in ("dp", "user-dp")
        return TrainReport.of(upload, update.train_loss, update.stats, train_s, private=private)


def signing_key(node_config, client_id: int):
    """This node's Ed25519 signing key: the node config's signing-key path, else
    $PRIVFL_CACHE/client-keys/client-<id>.key; created there (OS entropy, mode 0600) if missing."""
    from pathlib import Path

    from privfl.data.corpora.synthetic import cache_root
    from privfl.fl.secure.enrolment import SigningKey

    path = node_config.get(SIGNING_KEY)
    return SigningKey.load_or_create(
        Path(str(path)) if path else cache_root() / "client-keys" / f"client-{client_id}.key"
    )


def partition_of(context: Context) -> tuple[int, int | None]:
    """(partition-id, num-partitions) of this node; a clear error when the node was started without."""
    config = context.node_config
    if PARTITION_ID not in config:
        raise EngineError(
            "this SuperNode has no partition-id: start it with "
            '--node-config "partition-id=0 num-partitions=K" (one id per node, 0..K-1)'
        )
    total = config.get(NUM_PARTITIONS)
    return int(config[PARTITION_ID]), (int(total) if total is not None else None)


def make_client_app(load_data: DataSource | None = None) -> ClientApp:
    """A ClientApp whose data comes from `load_data(cfg)` (default: privfl.data.dataset.prepare)."""
    app = ClientApp()
    parties: dict[str, ClientParty] = {}  # (sigma, experiment TOML) -> party; one entry, the current run

    def party_for(task: TrainTask) -> ClientParty:
        key = f"{task.noise_multiplier}\n{task.experiment}"
        if key not in parties:
            cfg = config_from_text(task.experiment)
            if load_data is None:
                from privfl.data.dataset import prepare

                data = prepare(cfg)
            else:
                data = load_data(cfg)
            if task.noise_multiplier is not None:
                # train with the server's sigma instead of solving it again for a target epsilon
                # (a SuperNode would re-solve in every round's fresh process; resumed runs differ)
                cfg = cfg.override({"dp.noise_multiplier": task.noise_multiplier, "dp.target_epsilon": None})
            parties.clear()
            parties[key] = ClientParty(cfg, data)
        return parties[key]

    @app.query()
    def roll_call(message: Message, context: Context) -> Message:
        partition, total = partition_of(context)
        wants_key = "query" in message.content.config_records and message.content.config_records["query"].get(
            "ckks", 0
        )
        key = signing_key(context.node_config, partition).public_bytes() if wants_key else None
        return roll_call_reply(message, partition, total if total is not None else -1, key)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        partition, _ = partition_of(context)
        task = TrainTask.from_content(message.content)
        party = party_for(task)
        party.enrol(partition, context.node_config)
        reply = party.train(partition, task).reply_to(message)
        if party.cfg.secure.scheme == "secaggplus":  # its later stages need this round's secrets
            from privfl.fl.engines.secagg_relay import save_client_state

            save_client_state(
                party.components.summation, partition, task.round_index, context, task.experiment
            )
        return reply

    @app.train("secaggplus")
    def secaggplus_stage(message: Message, context: Context) -> Message:
        """SecAgg+'s share-keys, masked-input and unmask stages (privfl.fl.engines.secagg_relay)."""
        from privfl.fl.engines.secagg_relay import answer_stage

        partition, _ = partition_of(context)
        # this process's party if it lives on (simulation), else built from the node's saved state
        summation = next(iter(parties.values())).components.summation if parties else None
        return answer_stage(summation, partition, message, context)

    return app


app = make_client_app()
