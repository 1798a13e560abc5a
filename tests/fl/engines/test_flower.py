"""privfl on Flower: the simulation engine matches the built-in one, and a real SuperLink with
SuperNodes (subprocesses on 127.0.0.1) runs FedAvg and CKKS aggregation into a run directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from privfl.config import ExperimentConfig
from privfl.errors import ConfigError
from privfl.experiment import train
from privfl.runs import RunDir
from tests.conftest import TINY

pytest.importorskip("flwr", reason='Flower is not installed: pip install -e ".[flower]"')

REPO = Path(__file__).resolve().parents[2]
N_NODES = 2


def tiny(**dotted) -> ExperimentConfig:
    return ExperimentConfig().override({**TINY, **{k.replace("__", "."): v for k, v in dotted.items()}})


def final_weights(run: Path) -> np.ndarray:
    return RunDir(run).load_checkpoint()["weights"]


# --- simulation engine ---------------------------------------------------------------------------
def test_flower_sim_matches_builtin_over_five_rounds(tmp_path):
    cfg = tiny(train__clients=3, train__rounds=5, train__fraction=0.67, train__lr=0.05)
    a = train(cfg, tmp_path / "builtin")
    b = train(cfg.override({"train.engine": "flower-sim"}), tmp_path / "flower")
    assert b["engine"] == "flower-sim" and a["engine"] == "builtin"
    assert abs(a["final_val_uar"] - b["final_val_uar"]) <= 0.01
    rows_a, rows_b = RunDir(tmp_path / "builtin").metrics(), RunDir(tmp_path / "flower").metrics()
    assert [r["clients"] for r in rows_a] == [r["clients"] for r in rows_b] == [2] * 5  # same sampler
    # a transport, not a second implementation: the same sums in the same order, the same model
    np.testing.assert_array_equal(final_weights(tmp_path / "builtin"), final_weights(tmp_path / "flower"))
    assert [r["train_loss"] for r in rows_a] == [r["train_loss"] for r in rows_b]
    assert all(r["exchange_s"] > 0 for r in rows_b)
    for name in ("config.toml", "summary.json", "model.pt", "curves.png"):
        assert (tmp_path / "flower" / name).is_file(), name


@pytest.mark.parametrize(
    "dotted",
    [
        {"train.mode": "dp", "dp.noise_multiplier": 1.0},
        {"train.mode": "user-dp", "dp.noise_multiplier": 1.0, "train.fraction": 0.5},
        {"train.mode": "dp", "dp.noise_multiplier": 1.0, "secure.scheme": "ckks"},
    ],
    ids=["dp", "user-dp", "dp-ckks"],
)
def test_flower_sim_private_modes_match_builtin_and_clients_send_only_their_update(
    tmp_path, dotted, monkeypatch
):
    from privfl.fl.engines import messages

    tasks, reports = [], []
    to_content, reply_to = messages.TrainTask.to_content, messages.TrainReport.reply_to

    def spy_task(self):
        content = to_content(self)
        tasks.append(content)
        return content

    def spy_report(self, request):
        reply = reply_to(self, request)
        reports.append(reply.content)
        return reply

    monkeypatch.setattr(messages.TrainTask, "to_content", spy_task)
    monkeypatch.setattr(messages.TrainReport, "reply_to", spy_report)
    # bit-identical engines need reproducible noise: seeded, which these runs then say
    cfg = tiny().override({**dotted, "dp.noise": "seeded"})
    a = train(cfg, tmp_path / "builtin")
    b = train(cfg.override({"train.engine": "flower-sim"}), tmp_path / "flower")
    # the server mirrors record-level accountants and takes user-level steps exactly as built in
    assert b["privacy"]["epsilon"] == pytest.approx(a["privacy"]["epsilon"], rel=1e-12)
    assert (
        a["privacy"]["guarantee"]
        == b["privacy"]["guarantee"]
        == "no DP guarantee against anyone who holds the seed"
    )
    rows_a, rows_b = RunDir(tmp_path / "builtin").metrics(), RunDir(tmp_path / "flower").metrics()
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra.get("clients") == rb.get("clients")  # absent under user-dp: the sample is secret
        assert "clipped_fraction" not in ra and "clipped_fraction" not in rb
        assert "train_loss" not in ra and "train_loss" not in rb
    # what leaves a DP client: its id and its update, nothing else (no count, loss, clip bit, time)
    assert reports, "no client reported"
    encrypted = cfg.secure.scheme != "none"
    for content in reports:
        assert set(content.metric_records) == {"report"} and dict(content.metric_records["report"]) == {
            "client": content.metric_records["report"]["client"]
        }
        assert set(content.array_records) == {"update"}
        assert set(content.array_records["update"]) == (
            {"ciphertext", "signature"} if encrypted else {"delta"}
        )
        assert not content.config_records
    # what a client is told: never who else was sampled; user-dp + CKKS: the count k only
    for content in tasks:
        task = content.config_records["task"]
        assert "sampled" not in task
        assert ("sampled-count" in task) == (encrypted and cfg.train.mode == "user-dp")
    # CKKS adds ~1e-7 relative error to the sum; plaintext modes are bit-identical
    atol = 1e-5 if cfg.secure.scheme == "ckks" else 0.0
    np.testing.assert_allclose(
        final_weights(tmp_path / "flower"), final_weights(tmp_path / "builtin"), atol=atol
    )


def test_record_updates_under_ckks_is_refused_before_training(tmp_path):
    cfg = tiny(train__engine="flower-sim", train__record_updates=True, secure__scheme="ckks")
    with pytest.raises(ConfigError, match="record_updates"):
        train(cfg, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_without_flwr_privfl_works_and_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "flwr", None)  # `import flwr` now fails, find_spec says absent
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[flower\]"'):
        train(tiny(train__engine="flower-sim"), tmp_path / "r")
    train(tiny(train__rounds=1), tmp_path / "builtin")  # the built-in engine needs no Flower


# --- deployment runtime: real SuperLink and SuperNodes ---------------------------------------------
@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    from tests.fl.engines.local_deployment import LocalDeployment

    # PRIVFL_CACHE (conftest: the session's cache) is inherited by every subprocess
    with LocalDeployment(tmp_path_factory.mktemp("flower"), num_nodes=N_NODES) as fed:
        yield fed  # the with block stops all processes, also when the test fails


def test_deployment_runs_fedavg_and_ckks_on_superlink_and_supernodes(federation, tmp_path):
    fedavg = tiny(train__record_updates=True)
    ckks = tiny(secure__scheme="ckks")
    reference = train(fedavg, tmp_path / "builtin")  # also fills the shared corpus cache
    runs = {"fedavg": federation.root / "fedavg", "ckks": federation.root / "ckks"}
    cli = [federation.submit(fedavg, runs["fedavg"]), federation.submit(ckks, runs["ckks"])]  # concurrently
    for proc in cli:
        proc.wait(timeout=300)
    for name, run in runs.items():
        assert (run / "summary.json").is_file(), f"{name} run did not finish:\n{federation.tail()}"
        for f in ("config.toml", "metrics.jsonl", "model.pt", "curves.png", "checkpoint.json"):
            assert (run / f).is_file(), f
        rows = RunDir(run).metrics()
        assert [r["round"] for r in rows] == [1, 2] and all(r["clients"] == N_NODES for r in rows)
        assert all(r["exchange_s"] > 0 for r in rows)
        summary = json.loads((run / "summary.json").read_text())
        assert summary["clients"] == N_NODES and summary["secure_aggregation"] == name.replace(
            "fedavg", "none"
        )

    # FedAvg over the network ends with the built-in engine's model, and its recorded updates
    # (what `privfl attack` reads) are the built-in ones
    np.testing.assert_array_equal(final_weights(runs["fedavg"]), final_weights(tmp_path / "builtin"))
    assert (
        json.loads((runs["fedavg"] / "summary.json").read_text())["final_val_uar"]
        == reference["final_val_uar"]
    )
    got, want = RunDir(runs["fedavg"]), RunDir(tmp_path / "builtin")
    assert got.recorded_rounds() == [1, 2]
    for r in (1, 2):
        np.testing.assert_array_equal(got.load_updates(r)["deltas"], want.load_updates(r)["deltas"])

    # CKKS: only ciphertexts travelled (~29 bytes per parameter and bound), and the decrypted sums
    # give the plaintext model up to CKKS's error
    rows = RunDir(runs["ckks"]).metrics()
    n_params = final_weights(runs["ckks"]).shape[0]
    assert rows[0]["bytes_up"] > 20 * n_params * N_NODES and rows[0]["rejected"] == 0
    assert "he_bound_bits" in rows[0] and rows[0]["encrypt_s"] > 0
    assert not (runs["ckks"] / "updates").exists()
    np.testing.assert_allclose(final_weights(runs["ckks"]), final_weights(tmp_path / "builtin"), atol=1e-5)
    model = torch.load(runs["ckks"] / "model.pt", weights_only=True)
    assert sum(t.numel() for t in model.values()) == n_params
