"""CKKS training runs on the built-in engine, with the key holder in its own process."""

from __future__ import annotations

import os

import numpy as np

from privfl.experiment import Session, train
from privfl.fl.client import LocalTrainer
from privfl.runs import RunDir


def test_ckks_run_holds_no_secret_key_and_sums_within_1e6(tiny_config, tmp_path):
    cfg = tiny_config.override({"secure.scheme": "ckks", "secure.debug_check": True, "train.rounds": 3})
    session = Session(cfg, tmp_path / "run")
    summation = session.components.summation
    federation = session.federation()
    for r in session.rounds():
        session.begin_round()
        session.end_round(r, federation.run_round(r, session.weights))
    key_holder = summation._process.process
    assert key_holder.pid != os.getpid() and key_holder.poll() is None
    assert not summation._encryptor[2]._context.has_secret_key()  # all this process holds is public
    session.close()
    assert key_holder.poll() is not None
    rows = RunDir(tmp_path / "run").metrics()
    assert all(r["rejected"] == 0 and r["clients"] == 2 for r in rows)
    # round 1 packs at the configured bound 2^15, far above this tiny model's sums; later rounds
    # adapt to the previous released sum and reach 1e-6 relative to the plaintext FedAvg sum
    assert rows[0]["max_rel_error"] < 1e-4
    assert all(r["max_rel_error"] < 1e-6 for r in rows[1:]), [r["max_rel_error"] for r in rows]


def test_resumed_run_after_a_rejected_client_finishes(tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config.override(
        {"secure.scheme": "ckks", "train.clients": 4, "train.rounds": 1, "data.speakers": 12}
    )
    real = LocalTrainer.train

    def faulty(self, data, weights, round_index):
        update = real(self, data, weights, round_index)
        if data.client_id == 0:  # a broken client: its update is not finite
            update.delta[:] = np.nan
        return update

    monkeypatch.setattr(LocalTrainer, "train", faulty)
    train(cfg, tmp_path / "run")
    first = RunDir(tmp_path / "run").metrics()
    assert first[0]["rejected"] == 1 and np.isfinite(first[0]["val_loss"])
    summary = train(cfg.override({"train.rounds": 3}), resume=tmp_path / "run")
    rows = RunDir(tmp_path / "run").metrics()
    assert [r["round"] for r in rows] == [1, 2, 3] and all(r["rejected"] == 1 for r in rows)
    assert summary["rounds"] == 3 or rows[-1]["round"] == 3
