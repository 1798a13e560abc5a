"""SecAgg+'s stages over a Flower Grid: the server's `GridRelay` and the ClientApp's `answer_stage`.

Why not Flower's `SecAggPlusWorkflow` + `secaggplus_mod`: the workflow drives a legacy
`Strategy` through `LegacyContext` and trains inside its masked-input stage, and the mod masks the
`FitRes` parameters a legacy client returns; privfl's ServerApp runs its own round loop
(`Federation.run_round` behind `FlowerRounds`) and its ClientApp returns a `TrainReport`, and
privfl's summation must also mask the FedAvg weight and run the user-dp noise inside the mask. So
the same stages run with the same primitives (privfl.fl.secure.secaggplus), carried as

  message type "train.secaggplus"  ConfigRecord "secagg" {round, stage, client}
                                   ArrayRecord  "payload" {request | reply: the stage message as
                                                          bytes (`encode_message`), masked input
                                                          as uint64}

A client's round secrets live in its Flower `Context.state` between messages (a SuperNode starts a
fresh ClientApp process for each message): the node's own memory, never sent.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from privfl.errors import CryptoError
from privfl.fl.secure.secaggplus import ClientRound

log = logging.getLogger(__name__)

STAGE_MESSAGE = "train.secaggplus"
STATE_KEY = "privfl.secaggplus"


# --- stage messages as bytes --------------------------------------------------------------------------
def _b(x: bytes) -> str:
    return bytes(x).hex()


def encode_message(stage: str, message: object, *, reply: bool) -> bytes | np.ndarray:
    """One stage's request or reply as JSON bytes (the masked input: its uint64 array)."""
    if stage == "masked_input" and reply:
        return np.ascontiguousarray(message, dtype=np.uint64)
    if stage == "share_keys" and not reply:
        keys, t = message
        data = {"t": int(t), "keys": {str(c): [_b(p1), _b(p2)] for c, (p1, p2) in keys.items()}}
    elif stage == "share_keys" or stage == "masked_input":  # {client: ciphertext}
        data = {str(c): _b(v) for c, v in message.items()}
    elif stage == "unmask" and not reply:
        survivors, dropped = message
        data = {"survivors": list(map(int, survivors)), "dropped": list(map(int, dropped))}
    elif stage == "unmask":
        data = {str(c): [kind, _b(share)] for c, (kind, share) in message.items()}
    else:
        raise CryptoError(f"unknown SecAgg+ stage {stage!r}")
    return json.dumps(data).encode()


def decode_message(stage: str, data: bytes | np.ndarray, *, reply: bool) -> object:
    if stage == "masked_input" and reply:
        return np.asarray(data, dtype=np.uint64)
    raw = json.loads(bytes(data))
    if stage == "share_keys" and not reply:
        keys = {int(c): (bytes.fromhex(p1), bytes.fromhex(p2)) for c, (p1, p2) in raw["keys"].items()}
        return keys, int(raw["t"])
    if stage in ("share_keys", "masked_input"):
        return {int(c): bytes.fromhex(v) for c, v in raw.items()}
    if stage == "unmask" and not reply:
        return [int(c) for c in raw["survivors"]], [int(c) for c in raw["dropped"]]
    if stage == "unmask":
        return {int(c): (str(kind), bytes.fromhex(share)) for c, (kind, share) in raw.items()}
    raise CryptoError(f"unknown SecAgg+ stage {stage!r}")


def _bytes(data: bytes) -> Array:
    return Array("uint8", (len(data),), "privfl.secaggplus", bytes(data))


def _content(round_index: int, stage: str, client_id: int, payload: bytes | np.ndarray) -> RecordDict:
    if isinstance(payload, np.ndarray):
        array = Array(payload)
    else:
        array = _bytes(payload)
    return RecordDict(
        {
            "secagg": ConfigRecord({"round": int(round_index), "stage": stage, "client": int(client_id)}),
            "payload": ArrayRecord({"data": array}),
        }
    )


def _payload(content: RecordDict) -> bytes | np.ndarray:
    array = content.array_records["payload"]["data"]
    return array.numpy() if array.stype != "privfl.secaggplus" else bytes(array.data)


# --- the server side ----------------------------------------------------------------------------------
class GridRelay:
    """`Relay` for SecAggPlusSummation over FlowerRounds' Grid; a node that errs or is silent dropped."""

    def __init__(self, rounds) -> None:
        self.rounds = rounds  # FlowerRounds: grid, node_of, round_timeout, _send_and_receive

    def __call__(self, round_index: int, stage: str, requests: dict[int, object]) -> dict[int, object]:
        rounds = self.rounds
        messages = [
            Message(
                _content(round_index, stage, cid, encode_message(stage, request, reply=False)),
                dst_node_id=rounds.node_of[cid],
                message_type=STAGE_MESSAGE,
                group_id=str(round_index),
            )
            for cid, request in requests.items()
        ]
        t0 = time.perf_counter()
        replies = rounds._send_and_receive(messages, rounds.round_timeout)
        rounds.last_exchange_s += time.perf_counter() - t0
        client_of = {node: cid for cid, node in rounds.node_of.items()}
        out: dict[int, object] = {}
        for reply in replies:
            cid = client_of.get(reply.metadata.src_node_id)
            if cid not in requests:
                continue
            if reply.has_error():
                log.warning(
                    "round %d: client %s left SecAgg+ at %s: %s", round_index, cid, stage, reply.error.reason
                )
                continue
            out[cid] = decode_message(stage, _payload(reply.content), reply=True)
        return out


# --- the client side ----------------------------------------------------------------------------------
def save_client_state(summation, client_id: int, round_index: int, context: Context, experiment: str) -> None:
    """Keep this client's round secrets and encoded input in the node's Context.state, with the
    experiment (TOML) that a fresh ClientApp process rebuilds the summation from."""
    held = summation.held(client_id)
    if held is None:
        return
    party, encoded = held
    state = {
        "round": round_index,
        "experiment": experiment,
        "party": {
            "client_id": party.client_id,
            "threshold": party.threshold,
            **{k: _b(getattr(party, k)) for k in ("sk1", "pk1", "sk2", "pk2", "seed")},
            "public_keys": {str(c): [_b(a), _b(b)] for c, (a, b) in party.public_keys.items()},
            "seed_shares": {str(c): _b(v) for c, v in party.seed_shares.items()},
            "key_shares": {str(c): _b(v) for c, v in party.key_shares.items()},
            "masked_with": party.masked_with,
            "revealed": {str(c): v for c, v in party.revealed.items()},
        },
    }
    context.state.array_records[STATE_KEY] = ArrayRecord(
        {
            "state": _bytes(json.dumps(state).encode()),
            "encoded": Array(np.ascontiguousarray(encoded, dtype=np.uint64)),
        }
    )


def load_client_state(summation, client_id: int, round_index: int, context: Context) -> None:
    """Restore what save_client_state kept, unless this process still holds it."""
    if summation.held(client_id) is not None:
        return
    record = context.state.array_records.get(STATE_KEY)
    if record is None:
        raise CryptoError(f"round {round_index}: client {client_id} holds no SecAgg+ state for this round")
    state = json.loads(bytes(record["state"].data))
    if state["round"] != round_index:
        raise CryptoError(
            f"client {client_id} holds SecAgg+ state of round {state['round']}, not {round_index}"
        )
    p = state["party"]
    party = ClientRound(
        int(p["client_id"]),
        int(p["threshold"]),
        **{k: bytes.fromhex(p[k]) for k in ("sk1", "pk1", "sk2", "pk2", "seed")},
        public_keys={int(c): (bytes.fromhex(a), bytes.fromhex(b)) for c, (a, b) in p["public_keys"].items()},
        seed_shares={int(c): bytes.fromhex(v) for c, v in p["seed_shares"].items()},
        key_shares={int(c): bytes.fromhex(v) for c, v in p["key_shares"].items()},
        masked_with=[int(c) for c in p["masked_with"]],
        revealed={int(c): str(v) for c, v in p["revealed"].items()},
    )
    summation.hold(client_id, party, np.asarray(record["encoded"].numpy(), dtype=np.uint64))


def _saved_experiment(context: Context) -> str:
    record = context.state.array_records.get(STATE_KEY)
    if record is None:
        raise CryptoError("a SecAgg+ stage came before this node's train message of the round")
    return str(json.loads(bytes(record["state"].data))["experiment"])


def answer_stage(summation, client_id: int, message: Message, context: Context) -> Message:
    """The ClientApp's handler for one SecAgg+ stage message; summation None: a fresh process, which
    builds it from the experiment saved with the state."""
    info = message.content.config_records["secagg"]
    r, stage = int(info["round"]), str(info["stage"])
    if int(info["client"]) != client_id:
        raise CryptoError(f"a SecAgg+ message for client {info['client']} reached client {client_id}")
    experiment = _saved_experiment(context)
    if summation is None:
        from privfl.fl.components import make_summation
        from privfl.fl.engines.messages import config_from_text

        summation = make_summation(config_from_text(experiment))
    load_client_state(summation, client_id, r, context)
    request = decode_message(stage, _payload(message.content), reply=False)
    reply = summation.respond(r, stage, client_id, request)
    save_client_state(summation, client_id, r, context, experiment)
    return Message(_content(r, stage, client_id, encode_message(stage, reply, reply=True)), reply_to=message)
