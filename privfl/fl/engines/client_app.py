"""privfl's Flower ClientApp: local training, the policy's contribution, CKKS encryption.

The ClientApp runs the same `Trainer` and `Policy` the built-in engine runs, built by the same
`build_components` from the config the ServerApp sends; it only adds the transport. In a
plaintext run it returns the update (delta, sample count), and the server weights it, exactly as
`Federation.run_round` does. In an encrypted run it turns the update into its contribution
itself (user-dp: clip and add its noise share, drawn from this process's OS entropy), encrypts it
with the public CKKS context from the message and returns only the ciphertext. Under `dp` and
`user-dp` the reply carries the client id and the update alone (`TrainReport.dp_only`).

`app` is what `flwr run` loads on a SuperNode: it prepares the configured corpus from that
machine's copy (or PRIVFL_CACHE) and trains the client named by the node's `partition-id`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from privfl.config import ExperimentConfig
from privfl.fl.engines import EngineError
from privfl.fl.engines.messages import (
    NUM_PARTITIONS,
    PARTITION_ID,
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
        from privfl.experiment import build_components

        self.cfg = cfg
        self.clients = list(data.clients)
        # The same trainer, policy and sampler as the server's; with CKKS this also builds a
        # summation (and a key pair) that a client never uses: cheap, and it keeps one wiring.
        self.components = build_components(cfg, data)
        self._encryptor = None
        self._encryptor_context: bytes | None = None

    def train(self, client_id: int, task: TrainTask) -> TrainReport:
        """Train client `client_id` from the task's weights; report its update or its ciphertext."""
        c, r = self.components, task.round_index
        if not 0 <= client_id < len(self.clients):
            raise EngineError(
                f"this node is partition {client_id}, but the experiment has {len(self.clients)} clients: "
                f"start SuperNodes with partition-id 0..{len(self.clients) - 1}"
            )
        private = self.cfg.train.mode in ("dp", "user-dp")
        if self.cfg.train.mode == "user-dp" and task.he_context is not None:
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
        if task.he_context is None:
            if private:
                return TrainReport.dp_only(client_id, delta=update.delta)
            return TrainReport(
                client_id,
                update.num_samples,
                update.train_loss,
                update.stats,
                delta=update.delta,
                train_s=train_s,
            )
        from privfl.fl.secure import RoundSpec

        t0 = time.perf_counter()
        spec = RoundSpec(r, int(task.weights.shape[0]), task.he_bounds)
        payload = self._encryptor_for(task.he_context).encrypt(c.policy.contribution(update), spec)
        if private:
            return TrainReport.dp_only(client_id, ciphertext=payload)
        return TrainReport(
            client_id,
            update.num_samples,
            update.train_loss,
            update.stats,
            ciphertext=payload,
            train_s=train_s,
            encrypt_s=time.perf_counter() - t0,
        )

    def _encryptor_for(self, public_context: bytes):
        from privfl.fl.secure import Encryptor

        if self._encryptor is None or public_context != self._encryptor_context:
            self._encryptor = Encryptor(public_context)  # refuses a context that carries a secret key
            self._encryptor_context = public_context
        return self._encryptor


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
        return roll_call_reply(message, partition, total if total is not None else -1)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        partition, _ = partition_of(context)
        task = TrainTask.from_content(message.content)
        return party_for(task).train(partition, task).reply_to(message)

    return app


app = make_client_app()
