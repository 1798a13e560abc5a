"""SecAgg+ on Flower: the simulation engine and a real SuperLink with SuperNodes over gRPC run the
same stages as the built-in engine and end with the plaintext model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from privfl.config import ExperimentConfig
from privfl.experiment import train
from privfl.fl.engines.secagg_relay import decode_message, encode_message
from privfl.runs import RunDir
from tests.conftest import TINY

pytest.importorskip("flwr", reason='Flower is not installed: pip install -e ".[flower]"')

N_NODES = 3


def tiny(**dotted) -> ExperimentConfig:
    base = {**TINY, "train.clients": N_NODES, "data.speakers": 10}
    return ExperimentConfig().override({**base, **{k.replace("__", "."): v for k, v in dotted.items()}})


def final_weights(run) -> np.ndarray:
    return RunDir(run).load_checkpoint()["weights"]


def test_stage_messages_survive_the_wire_format():
    keys = ({0: (b"a" * 5, b"b" * 3), 2: (b"c", b"d")}, 2)
    assert decode_message("share_keys", encode_message("share_keys", keys, reply=False), reply=False) == keys
    shares = {1: b"\x00\xff", 4: b"x"}
    for stage in ("share_keys", "masked_input"):
        wire = encode_message(stage, shares, reply=stage == "share_keys")
        assert decode_message(stage, wire, reply=stage == "share_keys") == shares
    y = np.array([0, 2**62 - 1, 7], dtype=np.uint64)
    np.testing.assert_array_equal(
        decode_message("masked_input", encode_message("masked_input", y, reply=True), reply=True), y
    )
    ask = ([0, 1], [3])
    assert decode_message("unmask", encode_message("unmask", ask, reply=False), reply=False) == ask
    got = {0: ("seed", b"s"), 3: ("key", b"k")}
    assert decode_message("unmask", encode_message("unmask", got, reply=True), reply=True) == got


def test_flower_sim_secaggplus_matches_builtin(tmp_path):
    cfg = tiny(secure__scheme="secaggplus")
    train(cfg, tmp_path / "builtin")
    train(cfg.override({"train.engine": "flower-sim"}), tmp_path / "flower")
    np.testing.assert_array_equal(final_weights(tmp_path / "flower"), final_weights(tmp_path / "builtin"))
    rows = RunDir(tmp_path / "flower").metrics()
    assert all(r["secagg_survivors"] == N_NODES and r["exchange_s"] > 0 for r in rows)


def test_deployment_runs_a_secaggplus_round_over_grpc(tmp_path_factory, tmp_path):
    from tests.fl.engines.local_deployment import LocalDeployment

    cfg = tiny(secure__scheme="secaggplus", train__rounds=1)
    train(cfg.override({"secure.scheme": "none"}), tmp_path / "plain")  # also fills the corpus cache
    with LocalDeployment(tmp_path_factory.mktemp("flower"), num_nodes=N_NODES) as fed:
        run = fed.root / "secagg"
        proc = fed.submit(cfg, run)
        proc.wait(timeout=400)
        assert (run / "summary.json").is_file(), f"the SecAgg+ run did not finish:\n{fed.tail()}"
    [row] = RunDir(run).metrics()
    assert row["secagg_survivors"] == N_NODES and row["secagg_dropped"] == 0 and row["secagg_aborted"] == 0
    n_params = final_weights(run).shape[0]
    assert row["bytes_per_client"] > 8 * n_params  # a uint64 masked vector travelled, no update
    assert json.loads((run / "summary.json").read_text())["secure_aggregation"] == "secaggplus"
    # the unmasked sum gives the plaintext run's model (the 62-bit grid is far below float32)
    np.testing.assert_allclose(final_weights(run), final_weights(tmp_path / "plain"), rtol=0, atol=1e-6)
