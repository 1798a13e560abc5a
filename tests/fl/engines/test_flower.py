"""privfl on Flower: the simulation engine matches the built-in one, and on a real SuperLink with
SuperNodes (subprocesses on 127.0.0.1) `privfl deploy run` fails loudly, naming the run-config key
that fixes it, and resumes a stopped run to the built-in engine's model. FedAvg and CKKS runs on a
deployment are checked by tests/fl/engines/test_deployment_doc.py, which runs docs/deployment.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from privfl.config import ExperimentConfig
from privfl.errors import ConfigError
from privfl.experiment import train
from privfl.runs import RunDir
from tests.conftest import TINY

pytest.importorskip("flwr", reason='Flower is not installed: pip install -e ".[flower]"')

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
# One loopback deployment for the module (starting one costs seconds); the doc's own commands, with
# FedAvg and CKKS runs checked against the built-in engine, are tests/fl/engines/test_deployment_doc.py.
@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    from privfl.deploy.local import LocalDeployment

    # PRIVFL_CACHE (conftest: the session's cache) is inherited by every subprocess
    with LocalDeployment(tmp_path_factory.mktemp("flower"), num_nodes=N_NODES) as fed:
        yield fed  # the with block stops all processes, also when the test fails


def deploy_log(federation, name: str) -> str:
    return (federation.root / f"{name}.log").read_text(errors="replace")


def error_line(federation, name: str) -> str:
    """The one `error: ...` line `privfl deploy run` ended with."""
    lines = [line for line in deploy_log(federation, name).splitlines() if line.startswith("error: ")]
    assert lines, f"{name}: no error line\n{federation.tail()}"
    return lines[-1]


def test_deployment_failures_exit_nonzero_and_name_the_run_config_key(federation, tmp_path):
    existing = tmp_path / "existing"
    RunDir.create(existing, tiny())
    not_a_run = tmp_path / "not-a-run"
    not_a_run.mkdir()
    federation.stop_node(1)  # partition-id 1 has no SuperNode now
    try:
        procs = {
            "missing": federation.submit(tiny(), tmp_path / "missing", node_timeout=30.0, name="missing"),
            "existing": federation.submit(tiny(), existing, name="existing"),
            "resume": federation.submit(None, None, resume=not_a_run, name="resume"),
        }
        for proc in procs.values():
            proc.wait(timeout=300)
    finally:
        federation.start_node(1)
    assert {name: proc.returncode for name, proc in procs.items()} == dict.fromkeys(procs, 2)
    missing = error_line(federation, "missing")
    assert "finished:failed" in missing and "partition-id(s) [1]" in missing and "node-timeout=" in missing
    # the roll call said which id it waited for as soon as the connected nodes had answered (30 s:
    # a SuperNode asks for work every 3 s, and the ClientApp that answers imports no torch, 0.5 s of
    # CPU; under load it took tens of seconds while that process imported torch)
    assert "privfl roll call: waiting for partition-id(s) [1]" in deploy_log(federation, "missing")
    assert not (tmp_path / "missing").exists()  # nothing left to block the identical rerun
    refused = error_line(federation, "existing")
    assert f'resume="{existing}"' in refused and "overwrite=true" in refused and "out=" in refused
    assert "--overwrite" not in refused and (existing / "config.toml").is_file()  # untouched
    bad_resume = error_line(federation, "resume")
    assert f"resume={str(not_a_run)!r}" in bad_resume and "no config.toml" in bad_resume


def test_deployment_resume_with_only_resume_is_bit_identical_to_an_uninterrupted_run(federation, tmp_path):
    import re
    import subprocess
    import time

    from privfl.deploy.local import CONNECTION
    from privfl.deploy.submit import flwr_command

    cfg = tiny(train__record_updates=True)  # two rounds: stopped after the first, resumed for the second
    train(cfg, tmp_path / "builtin")  # the uninterrupted run (the engines agree bit for bit)
    run = tmp_path / "stopped"
    proc = federation.submit(cfg, run, name="stopped")
    deadline = time.monotonic() + 300
    while not (run / "checkpoint.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    run_id = re.search(r"started Flower run (\d+)", deploy_log(federation, "stopped")).group(1)
    subprocess.run([flwr_command(), "stop", run_id, CONNECTION], env=federation.env, check=True)
    proc.wait(timeout=300)
    stopped = error_line(federation, "stopped")
    assert proc.returncode == 2 and "finished:stopped" in stopped and f'--resume "{run}"' in stopped
    done = [r["round"] for r in RunDir(run).metrics()]
    assert done == [1] and not (run / "summary.json").exists(), done  # round 2 is the resume's

    resumed = federation.submit(None, None, resume=run, name="resumed")  # resume= alone
    resumed.wait(timeout=300)
    assert resumed.returncode == 0, federation.tail()
    assert [r["round"] for r in RunDir(run).metrics()] == [1, 2]
    np.testing.assert_array_equal(final_weights(run), final_weights(tmp_path / "builtin"))
    got, want = RunDir(run), RunDir(tmp_path / "builtin")
    assert got.recorded_rounds() == [1, 2]  # what `privfl attack` reads: the built-in updates
    for r in (1, 2):
        np.testing.assert_array_equal(got.load_updates(r)["deltas"], want.load_updates(r)["deltas"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["engine"] == "flower-deployment" and summary["clients"] == N_NODES
