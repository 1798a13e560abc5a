"""DP-SGD on clients and DP-FedAvg on the server: clipping, noise, sampling, accounting, wiring."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from torch import nn

from privfl.config import ExperimentConfig, ModelConfig
from privfl.data.dataset import ClientData
from privfl.errors import ConfigError, PrivacyError
from privfl.fl.aggregate import Contribution, PlainSummation, SumResult
from privfl.fl.client import LocalConfig, LocalTrainer, Update, derive_seed
from privfl.fl.components import build_components
from privfl.fl.dp import (
    AccountedReports,
    DPSGDTrainer,
    SkipEmptyRounds,
    UserDPPolicy,
    poisson_batch,
    poisson_clients,
    resolve_grad_sample_mode,
    validate_dp_model,
)
from privfl.models import build_model, canonical_parameters, get_flat, initial_weights, set_flat
from privfl.privacy import RecordLevelPrivacy, UserLevelPrivacy
from privfl.randomness import PrivacyRandomness

SEEDED = PrivacyRandomness("seeded", 7)  # bit-identical reruns; OS_NOISE is the default
OS_NOISE = PrivacyRandomness("os", 7)

N, FRAMES, MELS = 20, 40, 40
SMALL = {
    "cnn": ModelConfig(name="cnn", conv_channels=4, fc_hidden=8),
    "lstm": ModelConfig(name="lstm", lstm_hidden=8, fc_hidden=8),
}
ENGINES = ["microbatch", "hooks", "functorch", "ew", "ghost"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/fl/conftest.py


def client_data(client_id: int = 0, n: int = N, scale: float = 1.0, seed: int = 0) -> ClientData:
    """n random zero-padded utterances [n, 40 frames, 40 mels] with 4 labels."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, FRAMES + 1, (n,), generator=g)
    x = torch.randn(n, FRAMES, MELS, generator=g) * scale
    x = x * (torch.arange(FRAMES)[None, :, None] < lengths[:, None, None])
    return ClientData(client_id, x, lengths, torch.randint(0, 4, (n,), generator=g))


def privacy_for(data, batch_size, sigma=1.0, clip=1.0, epochs=1, target_epsilon=None, rounds=2):
    """Record-level accountants for these clients at batch size B (sigma may be 0 here, never in a config)."""
    return RecordLevelPrivacy(
        noise_multiplier=None if target_epsilon is not None else sigma,
        target_epsilon=target_epsilon,
        max_grad_norm=clip,
        delta=1e-3,
        accountant="rdp",
        sample_rates={d.client_id: batch_size / d.num_samples for d in data},
        steps_per_round={d.client_id: epochs * -(-d.num_samples // batch_size) for d in data},
        rounds=rounds,
    )


def trainer_for(model: str, engine: str, privacy, local: LocalConfig, randomness=SEEDED) -> DPSGDTrainer:
    return DPSGDTrainer(
        SMALL[model],
        MELS,
        local,
        randomness,
        privacy=privacy,
        grad_sample_mode=engine,
        max_grad_norm=privacy.max_grad_norm,
    )


def per_sample_grads(model_cfg: ModelConfig, weights: np.ndarray, data: ClientData, idx) -> list[np.ndarray]:
    """Each sample's loss gradient, computed independently with the plain model (canonical flat order)."""
    model = build_model(model_cfg, MELS)
    set_flat(model, weights)
    params = [p for _, p in canonical_parameters(model)]
    out = []
    for i in idx:
        loss = nn.functional.cross_entropy(
            model(data.x[i : i + 1], data.lengths[i : i + 1]), data.y[i : i + 1]
        )
        out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).double().numpy())
    return out


# --- record-level: the mechanism ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "model,engine",
    [("cnn", e) for e in ENGINES] + [("lstm", "microbatch"), ("lstm", "hooks"), ("lstm", "ghost")],
)
def test_per_sample_gradients_are_clipped_to_c(model, engine):
    data = client_data(scale=3.0)
    clip, batch = 0.05, 4
    local = LocalConfig(epochs=1, batch_size=batch, lr=1.0)
    trainer = trainer_for(model, engine, privacy_for([data], batch, sigma=0.0, clip=clip), local)
    w = initial_weights(SMALL[model], MELS, 3)
    idx = torch.tensor([0, 3, 5, 11, 17])  # 5 samples against an expected batch of 4
    update = trainer._run(data, w, 1, [idx], torch.Generator().manual_seed(0))

    grads = per_sample_grads(SMALL[model], w, data, idx.tolist())
    norms = np.array([np.linalg.norm(g) for g in grads])
    assert (norms > clip).sum() >= 3, "the test needs gradients above the bound"
    clipped = [g * min(1.0, clip / (n + 1e-6)) for g, n in zip(grads, norms, strict=True)]
    assert max(np.linalg.norm(g) for g in clipped) <= clip
    # the step is -lr * (sum of per-sample clipped gradients) / expected batch size: clipping per
    # sample, not of the batch mean (that would give a different vector)
    expected = -sum(clipped) / batch
    np.testing.assert_allclose(update.delta, expected, rtol=2e-4, atol=2e-6)
    assert update.stats["clipped"] == int((norms > clip).sum())
    assert update.stats["per_sample_grads"] == 5


@pytest.mark.parametrize(
    "model,engine", [("cnn", "microbatch"), ("cnn", "ew"), ("lstm", "microbatch"), ("lstm", "hooks")]
)
def test_without_noise_or_clipping_dp_sgd_reproduces_local_sgd(model, engine):
    """Same batches, sigma 0, C huge: DP-SGD's update equals LocalTrainer's up to float error."""
    data = client_data(n=20)
    local = LocalConfig(epochs=2, batch_size=5, lr=0.1, momentum=0.5)
    w = initial_weights(SMALL[model], MELS, 1)
    plain = LocalTrainer(SMALL[model], MELS, local, seed=7).train(data, w, round_index=3)

    # LocalTrainer's batches: a randperm per epoch from derive_seed(seed, round, client), cut in 5s
    g = torch.Generator().manual_seed(derive_seed(7, 3, data.client_id))
    batches = []
    for _ in range(local.epochs):
        order = torch.randperm(data.num_samples, generator=g)
        batches += [order[s : s + 5] for s in range(0, data.num_samples, 5)]
    trainer = trainer_for(model, engine, privacy_for([data], 5, sigma=0.0, clip=1e9), local)
    private = trainer._run(data, w, 3, batches, torch.Generator().manual_seed(0))
    assert np.abs(plain.delta).max() > 1e-3
    np.testing.assert_allclose(private.delta, plain.delta, rtol=1e-4, atol=1e-6)
    assert private.train_loss == pytest.approx(plain.train_loss, rel=1e-4)


def test_noise_has_std_sigma_c_over_expected_batch():
    """Empty Poisson batches still step: the update is pure noise of std lr*sigma*C/B per step."""
    data = client_data()
    sigma, clip, batch, lr, steps = 2.0, 0.5, 4, 0.1, 3
    wide = ModelConfig(name="cnn", conv_channels=4, fc_hidden=64)  # 5k parameters to average over
    privacy = privacy_for([data], batch, sigma, clip)
    trainer = DPSGDTrainer(
        wide, MELS, LocalConfig(1, batch, lr), SEEDED, privacy, "microbatch", max_grad_norm=clip
    )
    w = initial_weights(wide, MELS, 0)
    empty = [torch.zeros(0, dtype=torch.int64)] * steps
    update = trainer._run(data, w, 1, empty, torch.Generator().manual_seed(5))
    expected = lr * sigma * clip / batch * math.sqrt(steps)
    assert update.delta.shape[0] > 2000
    assert np.std(update.delta) == pytest.approx(expected, rel=0.06)
    assert abs(np.mean(update.delta)) < 4 * expected / math.sqrt(update.delta.shape[0])
    assert update.stats["empty_batches"] == steps


def test_poisson_batches_have_the_expected_size_and_are_seeded():
    g = torch.Generator().manual_seed(0)
    sizes = [len(poisson_batch(200, 0.1, g)) for _ in range(400)]
    assert np.mean(sizes) == pytest.approx(20, rel=0.05)
    assert np.std(sizes) == pytest.approx(math.sqrt(200 * 0.1 * 0.9), rel=0.15)
    a = poisson_batch(50, 0.3, torch.Generator().manual_seed(1))
    b = poisson_batch(50, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_reported_epsilon_equals_opacus_after_two_rounds_and_accountant_lives_across_rounds():
    data = [client_data(0, n=20), client_data(1, n=16, seed=1)]
    privacy = privacy_for(data, 4, sigma=1.3, rounds=2)
    trainer = trainer_for("cnn", "microbatch", privacy, LocalConfig(1, 4, 0.05))
    w = initial_weights(SMALL["cnn"], MELS, 0)
    for r in (1, 2):
        updates = [trainer.train(d, w, r) for d in data]
    report = privacy.round_report(2, _Outcome(updates))
    orders = RDPAccountant.DEFAULT_ALPHAS

    def opacus(q, steps):
        return get_privacy_spent(
            orders=orders, rdp=compute_rdp(q=q, noise_multiplier=1.3, steps=steps, orders=orders), delta=1e-3
        )[0]

    eps0, eps1 = opacus(4 / 20, 2 * 5), opacus(4 / 16, 2 * 4)  # 2 rounds x ceil(n/B) steps each
    assert report["epsilon"] == pytest.approx(max(eps0, eps1), rel=1e-12)
    assert report["epsilon_mean"] == pytest.approx((eps0 + eps1) / 2, rel=1e-12)
    assert report["sigma"] == 1.3 and report["delta"] == 1e-3 and report["clip_norm"] == 1.0
    assert "clipped_fraction" not in report  # clip counts never leave a client
    assert privacy.summary()["steps"] == {"0": 10, "1": 8}


def test_target_epsilon_run_ends_within_one_percent_of_the_target():
    data = [client_data(0, n=20)]
    privacy = privacy_for(data, 5, target_epsilon=6.0, rounds=3)
    trainer = trainer_for("cnn", "microbatch", privacy, LocalConfig(1, 5, 0.05))
    w = initial_weights(SMALL["cnn"], MELS, 0)
    for r in (1, 2, 3):
        trainer.train(data[0], w, r)
    assert 6.0 * 0.99 <= privacy.epsilons()[0] <= 6.0


def test_seeded_noise_same_update_and_rounds_differ():
    data = client_data()
    w = initial_weights(SMALL["lstm"], MELS, 0)
    make = lambda: trainer_for("lstm", "microbatch", privacy_for([data], 5), LocalConfig(1, 5, 0.1))  # noqa: E731
    a, b = make().train(data, w, 1), make().train(data, w, 1)
    np.testing.assert_array_equal(a.delta, b.delta)
    assert not np.array_equal(a.delta, make().train(data, w, 2).delta)


def test_os_noise_differs_between_identical_calls():
    """dp.noise = os: the same client, round, weights and config seed give fresh noise every time."""
    data = client_data()
    w = initial_weights(SMALL["cnn"], MELS, 0)
    make = lambda: trainer_for(  # noqa: E731
        "cnn", "microbatch", privacy_for([data], 5), LocalConfig(1, 5, 0.1), OS_NOISE
    )
    a, b = make().train(data, w, 1), make().train(data, w, 1)
    assert not np.array_equal(a.delta, b.delta)


def test_dp_lstm_returns_the_plain_flat_layout():
    """An Opacus engine trains DPLSTM; its flat vector must load into the plain nn.LSTM model."""
    data = client_data()
    trainer = trainer_for(
        "lstm", "hooks", privacy_for([data], 5, sigma=0.0, clip=1e9), LocalConfig(1, 5, 0.1)
    )
    assert type(trainer.model.lstm).__name__ == "DPLSTM"
    w = initial_weights(SMALL["lstm"], MELS, 0)
    set_flat(trainer.model, w)
    plain = build_model(SMALL["lstm"], MELS)
    set_flat(plain, w)
    with torch.no_grad():
        torch.testing.assert_close(
            trainer.model(data.x, data.lengths), plain(data.x, data.lengths), rtol=1e-5, atol=1e-6
        )
    np.testing.assert_array_equal(get_flat(trainer.model), w)


# --- record-level: refusals --------------------------------------------------------------------------
def test_model_with_layers_opacus_cannot_handle_is_refused():
    with pytest.raises(PrivacyError, match="BatchNorm"):
        validate_dp_model(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    validate_dp_model(build_model(SMALL["lstm"], MELS, dp=True))
    validate_dp_model(build_model(SMALL["cnn"], MELS))


def test_unknown_grad_sample_mode_is_a_config_error():
    assert resolve_grad_sample_mode("ghost", "cnn") == "ghost"
    assert resolve_grad_sample_mode("auto", "lstm") in ("microbatch", "hooks", "functorch", "ew", "ghost")
    with pytest.raises(ConfigError, match="'fast'.*microbatch"):
        resolve_grad_sample_mode("fast", "cnn")


class _Data:
    def __init__(self, clients):
        self.clients, self.n_mels = clients, MELS


def dp_config(mode: str = "dp", **dotted) -> ExperimentConfig:
    base = {
        "train.mode": mode,
        "train.batch_size": 5,
        "train.rounds": 2,
        "dp.noise_multiplier": 1.0,
        "model.conv_channels": 4,
        "model.lstm_hidden": 8,
        "model.fc_hidden": 8,
    }
    base.update(dotted)
    return ExperimentConfig().override(base).validate()


def test_batch_larger_than_a_clients_data_is_refused_before_training():
    data = _Data([client_data(0, n=20), client_data(1, n=6)])
    with pytest.raises(PrivacyError, match=r"client 1 holds 6 utterances.*--batch-size 10.*--batch-size 6"):
        build_components(dp_config(**{"train.batch_size": 10}), data)


def test_delta_not_below_one_over_n_is_refused():
    data = _Data([client_data(0, n=20)])
    with pytest.raises(PrivacyError, match=r"dp.delta = 0.2"):
        build_components(dp_config(**{"dp.delta": 0.2}), data)
    five = _Data([client_data(i) for i in range(5)])
    with pytest.raises(
        PrivacyError, match=r"dp.delta = 0.5 is not below 1/n = 0.2 for the number of clients"
    ):
        build_components(dp_config("user-dp", **{"dp.delta": 0.5}), five)


def test_unreachable_target_epsilon_is_refused_before_training():
    cfg = dp_config(**{"dp.noise_multiplier": None, "dp.target_epsilon": 1e-5})
    with pytest.raises(PrivacyError, match="target_epsilon"):
        build_components(cfg, _Data([client_data()]))


@pytest.mark.parametrize(
    "dotted,match",
    [
        ({"dp.noise_multiplier": 0.0}, "noise_multiplier must be > 0"),
        ({"dp.noise_multiplier": -1.0}, "> 0"),
        ({"dp.max_grad_norm": 0.0}, "max_grad_norm"),
        ({"dp.clip_norm": -1.0}, "clip_norm"),
        ({"dp.delta": 1.0}, "delta must be in"),
    ],
)
def test_bad_dp_values_are_config_errors(dotted, match):
    with pytest.raises(ConfigError, match=match):
        dp_config(**dotted)


def test_build_components_record_level_defaults():
    data = _Data([client_data(0, n=20), client_data(1, n=15)])
    comps = build_components(dp_config(), data)
    assert isinstance(comps.trainer, AccountedReports) and isinstance(comps.trainer.inner, DPSGDTrainer)
    assert comps.privacy.delta == 1e-3  # 1/(10*20) -> 1e-3
    assert comps.privacy.sample_rates == {0: 0.25, 1: 5 / 15}
    assert comps.sampler(1) == [0, 1]


# --- user-level --------------------------------------------------------------------------------------
def user_policy(k=10, q=0.4, sigma=1.0, clip=1.0, seed=0, noise_on_clients=False):
    privacy = UserLevelPrivacy(
        noise_multiplier=sigma,
        target_epsilon=None,
        clip_norm=clip,
        delta=1e-2,
        accountant="rdp",
        sample_rate=q,
        rounds=5,
    )
    return UserDPPolicy(
        k, privacy, PrivacyRandomness("seeded", seed), noise_on_clients, clip_norm=clip
    ), privacy


def update(cid: int, vector: np.ndarray, round_index: int) -> Update:
    return Update(cid, round_index, vector.astype(np.float32), 10, 0.0)


@settings(max_examples=60, deadline=None)
@given(
    vector=arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e4, 1e4, allow_nan=False)),
    clip=st.floats(1e-3, 1e3),
)
def test_user_level_clipping_bounds_every_update(vector, clip):
    policy, _ = user_policy(k=3, q=1.0, sigma=0.0, clip=clip)
    policy.sample(1)
    c = policy.contribution(update(0, vector, 1))
    assert c.weight == 1.0
    assert np.linalg.norm(c.vector) <= clip * (1 + 1e-6)
    if np.linalg.norm(vector.astype(np.float32)) <= clip:
        np.testing.assert_allclose(c.vector, vector.astype(np.float32))


def test_user_level_server_step_divides_by_the_expected_count():
    policy, privacy = user_policy(k=10, q=0.4, sigma=0.0, clip=1.0)
    chosen = policy.sample(3)
    summation = PlainSummation()
    summation.begin_round(3, 4)
    deltas = {cid: np.full(4, 0.1 * (cid + 1)) for cid in chosen}
    for cid in chosen:
        summation.add(policy.contribution(update(cid, deltas[cid], 3)))
    w = np.ones(4, dtype=np.float32)
    new, stats = policy.server_step(w, summation.finish(), 3)
    from privfl.fl.aggregate import clip_update

    expected = w + sum(clip_update(d, 1.0)[0] for d in deltas.values()) / (0.4 * 10)
    np.testing.assert_allclose(new, expected, rtol=1e-6)
    assert stats["server_noise_share"] == 1.0
    assert 0.0 <= stats["clipped_fraction"] <= 1.0
    assert sum(n for _, _, n in privacy.accountant.history) == 1


def test_user_level_server_noise_has_std_sigma_s_over_qk():
    policy, _ = user_policy(k=10, q=0.5, sigma=2.0, clip=0.3)
    policy.sample(1)
    w = np.zeros(20_000, dtype=np.float32)
    new, _ = policy.server_step(w, SumResult(np.zeros(20_000), 0.0, 0), 1)
    assert np.std(new) == pytest.approx(2.0 * 0.3 / 5.0, rel=0.03)


def test_client_noise_shares_sum_to_the_required_variance():
    """With encrypted sums the k sampled clients add the noise: shares of variance sigma^2 S^2 / k."""
    policy, _ = user_policy(k=12, q=0.5, sigma=1.5, clip=0.2, noise_on_clients=True)
    chosen = policy.sample(2)
    assert len(chosen) >= 2
    zero = np.zeros(20_000)
    shares = [policy.contribution(update(cid, zero, 2)).vector for cid in chosen]
    for s in shares:
        assert np.std(s) == pytest.approx(1.5 * 0.2 / math.sqrt(len(chosen)), rel=0.03)
    assert np.std(sum(shares)) == pytest.approx(1.5 * 0.2, rel=0.03)
    result = SumResult(sum(shares), float(len(chosen)), len(chosen))
    new, stats = policy.server_step(np.zeros(20_000, dtype=np.float32), result, 2)
    assert stats["server_noise_share"] == 0.0  # the server adds none on top
    assert np.std(new) == pytest.approx(1.5 * 0.2 / 6.0, rel=0.03)


def test_client_noise_with_nobody_sampled_falls_back_to_server_noise():
    policy, _ = user_policy(k=4, q=0.5, sigma=1.0, clip=1.0, noise_on_clients=True)
    policy.sample(1)
    new, stats = policy.server_step(np.zeros(5000, dtype=np.float32), SumResult(np.zeros(5000), 0.0, 0), 1)
    assert stats["server_noise_share"] == 1.0 and np.std(new) == pytest.approx(1.0 / 2.0, rel=0.05)


def test_dropped_noise_shares_are_topped_up_by_the_server():
    policy, _ = user_policy(k=12, q=0.5, sigma=1.0, clip=1.0, noise_on_clients=True)
    chosen = policy.sample(4)
    zero = np.zeros(20_000)
    kept = [policy.contribution(update(cid, zero, 4)).vector for cid in chosen[: len(chosen) // 2]]
    result = SumResult(sum(kept), float(len(kept)), len(kept))
    new, stats = policy.server_step(np.zeros(20_000, dtype=np.float32), result, 4)
    assert stats["server_noise_share"] == pytest.approx(1 - len(kept) / len(chosen))
    assert np.std(new) == pytest.approx(1.0 / 6.0, rel=0.03)  # the released model keeps sigma S / qK


def test_poisson_client_sampling_has_the_expected_count():
    seeded = lambda r: poisson_clients(20, 0.3, SEEDED.server_sample(r, 1))  # noqa: E731
    assert seeded(5) == seeded(5)
    counts = [len(poisson_clients(20, 0.3, OS_NOISE.server_sample(r, 1))) for r in range(1, 401)]
    assert np.mean(counts) == pytest.approx(6.0, rel=0.05)
    assert min(counts) < 6 < max(counts)  # the count really varies
    assert poisson_clients(7, 1.0, OS_NOISE.server_sample(1, 1)) == list(range(7))


def test_os_client_sample_is_not_the_seeded_one():
    """The server's sample under dp.noise = os does not follow from the seed: over 50 rounds of 20
    clients at q = 0.5 the chance that all 50 OS samples equal the seeded ones is 2^-1000."""
    same = [
        poisson_clients(20, 0.5, SEEDED.server_sample(r, 1))
        == poisson_clients(20, 0.5, OS_NOISE.server_sample(r, 1))
        for r in range(50)
    ]
    assert not all(same)


def test_empty_rounds_skip_the_inner_summation():
    class Refuses(PlainSummation):
        def finish(self):
            raise AssertionError("finish() must not be called for an empty round")

    s = SkipEmptyRounds(Refuses())
    s.begin_round(1, 3)
    result = s.finish()
    assert result.count == 0 and result.vector.tolist() == [0.0, 0.0, 0.0]
    s = SkipEmptyRounds(PlainSummation())
    s.begin_round(2, 2)
    s.add(Contribution(0, np.array([1.0, 2.0]), 1.0))
    assert s.finish().vector.tolist() == [1.0, 2.0]


class _Outcome:
    def __init__(self, updates, stats=None):
        self.updates, self.stats = updates, stats or {}


# --- end to end through privfl.experiment.train -------------------------------------------------------
def _tiny_dp(tiny_config, mode: str, **dotted) -> ExperimentConfig:
    base = {"train.mode": mode, "dp.noise_multiplier": 1.0, "model.conv_channels": 4, "model.fc_hidden": 16}
    base.update(dotted)
    return tiny_config.override(base)


def test_record_level_dp_run_reports_opacus_epsilon(tiny_config, tmp_path):
    from privfl.experiment import train
    from privfl.runs import RunDir

    summary = train(_tiny_dp(tiny_config, "dp"), tmp_path / "dp")
    p = summary["privacy"]
    assert p["mode"] == "dp" and p["unit"] == "one utterance of one client" and p["accountant"] == "rdp"
    orders = RDPAccountant.DEFAULT_ALPHAS
    for cid, q in p["sample_rates"].items():
        rdp = compute_rdp(q=q, noise_multiplier=1.0, steps=p["steps"][cid], orders=orders)
        expected = get_privacy_spent(orders=orders, rdp=rdp, delta=p["delta"])[0]
        assert p["epsilon_per_client"][cid] == pytest.approx(expected, rel=1e-12)
    rows = RunDir(tmp_path / "dp").metrics()
    assert rows[0]["epsilon"] < rows[1]["epsilon"] == pytest.approx(p["epsilon"])
    for key in ("epsilon", "epsilon_mean", "epsilon_server", "epsilon_other_client", "delta", "sigma"):
        assert key in rows[1], key
    assert rows[1]["epsilon_server"] == rows[1]["epsilon"] and rows[1]["noise"] == "os"
    for key in ("train_loss", "clipped_fraction"):  # clients report neither under DP
        assert key not in rows[1], key
    assert set(p["observers"]) == {"released_model", "run_directory", "server", "other_client"}


def test_user_level_dp_run(tiny_config, tmp_path):
    from privfl.experiment import train

    cfg = _tiny_dp(tiny_config, "user-dp", **{"train.clients": 4, "train.fraction": 0.5, "dp.clip_norm": 0.5})
    p = train(cfg, tmp_path / "u")["privacy"]
    assert p["unit"] == "all data of one client" and p["rounds_accounted"] == 2
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=0.5, noise_multiplier=1.0, steps=2, orders=orders)
    assert p["epsilon"] == pytest.approx(
        get_privacy_spent(orders=orders, rdp=rdp, delta=p["delta"])[0], rel=1e-12
    )
    assert p["delta"] == 1e-5  # 1/(10 * 4 clients) = 1e-2 rounded down, capped at 1e-5
    assert p["observers"]["server"]["epsilon"] is None  # it sees the clipped updates in the clear
    assert p["observers"]["other_client"]["epsilon"] == pytest.approx(p["epsilon"])


def test_resume_continues_the_accountants_exactly(tiny_config, tmp_path):
    from privfl.experiment import train
    from privfl.runs import RunDir

    cfg = _tiny_dp(
        tiny_config,
        "dp",
        **{"train.rounds": 3, "dp.noise_multiplier": None, "dp.target_epsilon": 8.0, "dp.noise": "seeded"},
    )
    full = train(cfg, tmp_path / "full")
    assert 8.0 * 0.99 <= full["privacy"]["epsilon"] <= 8.0

    class Stop(Exception):
        pass

    def crash_after_round_1(row):
        raise Stop

    with pytest.raises(Stop):  # the same 3-round run, killed after round 1's checkpoint
        train(cfg, tmp_path / "part", on_round=crash_after_round_1)
    resumed = train(cfg, resume=tmp_path / "part")
    assert resumed["privacy"] == {**full["privacy"]}
    np.testing.assert_array_equal(
        RunDir(tmp_path / "full").load_checkpoint()["weights"],
        RunDir(tmp_path / "part").load_checkpoint()["weights"],
    )


def test_resume_with_more_rounds_resolves_sigma_within_the_target(tiny_config, tmp_path):
    from privfl.experiment import train

    cfg = _tiny_dp(
        tiny_config, "dp", **{"train.rounds": 1, "dp.noise_multiplier": None, "dp.target_epsilon": 8.0}
    )
    first = train(cfg, tmp_path / "r")
    extended = train(cfg.override({"train.rounds": 3}), resume=tmp_path / "r")
    assert extended["privacy"]["sigma"] > first["privacy"]["sigma"]
    assert 8.0 * 0.99 <= extended["privacy"]["epsilon"] <= 8.0


@pytest.mark.parametrize("scheme", ["ckks", "secaggplus"])
def test_user_level_dp_with_secure_aggregation_and_client_sampling_is_refused(tiny_config, scheme):
    # a secure sum releases only sums of >= min_clients (>= 2) clients; under Poisson sampling
    # whether a round reaches that depends on who was sampled, outside the DP-FedAvg accounting
    cfg = _tiny_dp(
        tiny_config,
        "user-dp",
        **{"train.clients": 4, "train.fraction": 0.5, "secure.scheme": scheme, "secure.insecure_he": True},
    )
    with pytest.raises(
        ConfigError, match=f"user-dp with --secure-agg {scheme} and train.fraction = 0.5.*--fraction 1"
    ):
        cfg.validate()
    cfg.override({"train.fraction": 1.0}).validate()  # every client every round: accounted at q = 1
    # q = 1, but a population one client smaller would fall below the scheme's minimum sum
    k = {"ckks": 3, "secaggplus": 2}[scheme]  # CKKS: min_clients 3; SecAgg+: a sum of >= 2
    small = cfg.override({"train.fraction": 1.0, "train.clients": k, "secure.min_clients": 3})
    with pytest.raises(ConfigError, match=f"secure-agg {scheme} and train.clients = {k}: without one of its"):
        small.validate()


def test_resume_under_os_noise_continues_the_accountants(tiny_config, tmp_path):
    """OS noise is not reproducible, but a resumed run still continues every accountant exactly."""
    from privfl.experiment import train

    cfg = _tiny_dp(tiny_config, "dp", **{"train.rounds": 3})
    full = train(cfg, tmp_path / "full")

    class Stop(Exception):
        pass

    def crash_after_round_1(row):
        raise Stop

    with pytest.raises(Stop):
        train(cfg, tmp_path / "part", on_round=crash_after_round_1)
    resumed = train(cfg, resume=tmp_path / "part")
    assert resumed["privacy"]["epsilon_per_client"] == full["privacy"]["epsilon_per_client"]
    assert resumed["privacy"]["steps"] == full["privacy"]["steps"]


# --- the rate and the step count the accountant charges are the ones the trainer uses --------------
def spy_batches(trainer: DPSGDTrainer) -> list[list[int]]:
    """Record the size of every batch the trainer's DP-SGD loop receives (then train on them as usual)."""
    seen: list[list[int]] = []
    real = trainer._run

    def run(data, weights, round_index, batches, noise):
        batches = list(batches)
        seen.append([len(b) for b in batches])
        return real(data, weights, round_index, batches, noise)

    trainer._run = run
    return seen


def test_dp_sgd_samples_batches_at_the_rate_the_accountant_charges():
    """200 real steps at q = B/n = 0.1: the drawn batches hold q*n utterances on average (not 2q*n)."""
    data = _Data([client_data(0, n=40)])
    cfg = dp_config(**{"train.batch_size": 4, "train.local_epochs": 20, "train.lr": 0.05})
    comps = build_components(cfg, data)
    seen = spy_batches(comps.trainer.inner)  # the DPSGDTrainer behind AccountedReports
    comps.trainer.train(data.clients[0], initial_weights(cfg.model, MELS, 0), 1)
    charged = comps.privacy.accountants[0].history
    assert [q for _, q, _ in charged] == [0.1] * len(charged)
    assert sum(n for _, _, n in charged) == len(seen[0]) == 200
    drawn = sum(seen[0]) / (200 * 40)  # the realised sampling rate; sd about 0.0034 here
    assert drawn == pytest.approx(0.1, abs=0.012)


def test_accountant_charges_ceil_n_over_b_steps_per_epoch_when_b_does_not_divide_n():
    """n = 22 and 24 at B = 5, 2 epochs: ceil(n/B) = 5 steps an epoch (floor would give 4)."""
    data = _Data([client_data(0, n=22), client_data(1, n=24, seed=1)])
    cfg = dp_config(**{"train.local_epochs": 2, "train.lr": 0.05})
    comps = build_components(cfg, data)
    assert comps.privacy.steps_per_round == {0: 10, 1: 10}
    seen = spy_batches(comps.trainer.inner)
    w = initial_weights(cfg.model, MELS, 0)
    for d in data.clients:
        comps.trainer.train(d, w, 1)
    assert [len(s) for s in seen] == [10, 10]
    assert comps.privacy.summary()["steps"] == {"0": 10, "1": 10}
