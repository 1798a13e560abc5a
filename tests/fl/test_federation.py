"""The one round loop: the same `Federation.run_round` whether the clients are function calls or sit
behind a transport, and whichever summation runs (the loop never names the scheme)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privfl.data.dataset import ClientData
from privfl.fl.aggregate import PlainSummation, RoundKeys, Upload
from privfl.fl.client import Update
from privfl.fl.dp import SkipEmptyRounds, UserDPPolicy
from privfl.fl.federation import FedAvgPolicy, Federation, sample_clients
from privfl.randomness import PrivacyRandomness
from tests.privacy_settings import user_level

P = 50
SIZES = (3, 7, 5, 4)


def clients() -> list[ClientData]:
    return [
        ClientData(i, torch.zeros(n, 1, 1), torch.ones(n, dtype=torch.int64), torch.zeros(n))
        for i, n in enumerate(SIZES)
    ]


class FixedTrainer:
    """Each client's delta is a fixed function of (client, round): the test needs no model."""

    def train(self, data: ClientData, global_weights: np.ndarray, round_index: int) -> Update:
        rng = np.random.default_rng([data.client_id, round_index])
        delta = rng.normal(0.0, 0.1 * (data.client_id + 1), P).astype(np.float32)
        return Update(data.client_id, round_index, delta, data.num_samples, 0.5)


class MessageGate:
    """A transport: each task and reply crosses as the Flower engine's records, and the clients use
    their own policy and summation objects (as a ClientApp builds them), never the server's."""

    def __init__(self, make_policy, make_summation) -> None:
        from privfl.fl.engines.messages import TrainReport, TrainTask

        self.task, self.report = TrainTask, TrainReport
        self.trainer, self.clients = FixedTrainer(), clients()
        self.policy, self.summation = make_policy(), make_summation()
        self.round_stats: dict = {}

    def train_round(self, round_index, weights, selected, keys: RoundKeys):
        self.round_stats = {"train_s": 0.0, "exchange_s": 0.0}
        if hasattr(self.policy, "announce") and selected:
            self.policy.announce(round_index, len(selected))  # a client is told k, not who
        sent = self.task(round_index, "", weights, None, keys, len(selected)).to_content()
        for cid in selected:
            task = self.task.from_content(sent)
            update = self.trainer.train(self.clients[cid], task.weights, round_index)
            upload = self.summation.encode(update, self.policy.contribution, task.keys)
            reply = self.report.of(upload, update.train_loss, update.stats, 0.0).to_content()
            got: Upload = self.report.from_content(reply).upload(round_index)
            delta = got.delta if got.delta is not None else np.zeros(0, np.float32)
            yield Update(cid, round_index, delta, got.num_samples, 0.5), got


def user_dp(noise_on_clients: bool) -> UserDPPolicy:
    privacy = user_level(noise_multiplier=0.5, clip_norm=0.3, sample_rate=0.6, rounds=3)
    # seeded: the two loops must draw the same sample and noise (privfl.randomness)
    return UserDPPolicy(len(SIZES), privacy, PrivacyRandomness("seeded", 11), noise_on_clients, clip_norm=0.3)


def ckks():
    """A CKKS summation whose key holder (spawned at the first round) enrols the four clients, and
    which can also encode for them: the server's object and each client's copy alike."""
    from privfl.config import ExperimentConfig
    from privfl.fl.secure import CkksSummation, enrol_clients

    global _CKKS_KEYS
    if _CKKS_KEYS is None:
        _CKKS_KEYS = enrol_clients(list(range(len(SIZES))))
    keys, registry = _CKKS_KEYS
    cfg = ExperimentConfig().override({"secure.scheme": "ckks", "train.clients": len(SIZES)})
    summation = CkksSummation(cfg)
    summation.register(registry)
    for cid, key in keys.items():
        summation.enrol(cid, key)
    return summation


_CKKS_KEYS = None


def run(gate_policy, gate_summation, server_policy, server_summation, sampler, rounds=3):
    """Weights and round stats after `rounds` rounds, in process and through MessageGate."""
    out = []
    for through_messages in (False, True):
        policy, summation = server_policy(), server_summation()
        gate = MessageGate(gate_policy, gate_summation) if through_messages else None
        sample = policy.sample if hasattr(policy, "sample") else sampler
        fed = Federation(FixedTrainer(), clients(), sample, policy, summation, gate=gate)
        w, stats = np.zeros(P, np.float32), []
        for r in range(1, rounds + 1):
            outcome = fed.run_round(r, w)
            w, stats = outcome.weights, stats + [outcome.stats]
        out.append((w, stats))
    return out


def test_plaintext_fedavg_is_bit_identical_through_a_transport():
    sampler = lambda r: sample_clients(len(SIZES), 0.75, 0, r)  # noqa: E731
    (a, _), (b, _) = run(FedAvgPolicy, PlainSummation, FedAvgPolicy, PlainSummation, sampler)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() > 0


def test_user_dp_is_bit_identical_through_a_transport_and_counts_clipping_alike():
    wrap = lambda: SkipEmptyRounds(PlainSummation())  # noqa: E731
    (a, sa), (b, sb) = run(lambda: user_dp(False), wrap, lambda: user_dp(False), wrap, None)
    np.testing.assert_array_equal(a, b)
    assert [s["clipped_fraction"] for s in sa] == [s["clipped_fraction"] for s in sb]
    assert any(s["clipped_fraction"] > 0 for s in sa)


def test_ckks_runs_the_same_loop_and_reports_what_only_clients_know():
    sampler = lambda r: sample_clients(len(SIZES), 1.0, 0, r)  # noqa: E731
    (a, sa), (b, sb) = run(FedAvgPolicy, ckks, FedAvgPolicy, ckks, sampler, rounds=2)
    (plain, _), _ = run(FedAvgPolicy, PlainSummation, FedAvgPolicy, PlainSummation, sampler, rounds=2)
    np.testing.assert_allclose(a, plain, atol=1e-6)
    np.testing.assert_allclose(b, plain, atol=1e-6)
    for s in sa + sb:
        assert s["rejected"] == 0 and s["encrypt_s"] > 0 and s["bytes_per_client"] > 20 * P


def test_no_report_carries_a_clip_bit():
    """Whether a client's update was clipped depends on its data and is not accounted: no report
    tells the server (docs/privacy.md, no side channels), whatever the Upload knows."""
    from privfl.fl.engines.messages import TrainReport

    upload = Upload(0, 1, 3, ciphertext=b"x", clipped=True)
    for private in (False, True):
        content = TrainReport.of(upload, 0.5, {}, 0.0, private=private).to_content()
        assert not any("clip" in key for key in content.metric_records["report"])
        assert TrainReport.from_content(content).upload(1).clipped is False


def test_a_ciphertext_sent_to_a_plaintext_sum_is_refused():
    from privfl.errors import CryptoError

    summation = PlainSummation()
    summation.begin_round(1, P)
    with pytest.raises(CryptoError, match="same secure.scheme"):
        summation.submit(Upload(0, 1, 3, ciphertext=b"x"), FedAvgPolicy().contribution)
