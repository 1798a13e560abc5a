"""Audit canaries in training: drawn secretly, inserted through the mechanism, kept out of utility,
and audited: a non-private run's canaries are found, a DP run's bound stays below its epsilon and a
mechanism with less noise than it accounts for is caught."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from privfl.attacks.audit import AuditConfig, audit_run, gradient_scores, one_run_bound
from privfl.canaries import (
    SECRET_FILE,
    CanarySecrets,
    ClientCanaries,
    GradientCanaries,
    direction,
    draw_canaries,
)
from privfl.cli import main
from privfl.config import ExperimentConfig, ModelConfig
from privfl.data.dataset import ClientData
from privfl.errors import ConfigError, RunError
from privfl.experiment import train
from privfl.fl.aggregate import PlainSummation
from privfl.fl.canary_clients import WithCanaryClients
from privfl.fl.client import LocalConfig, LocalTrainer, Update
from privfl.fl.dp import DPSGDTrainer, UserDPPolicy
from privfl.fl.federation import FedAvgPolicy
from privfl.models import build_model, count_parameters, initial_weights
from privfl.privacy import RecordLevelPrivacy, epsilon_of
from privfl.randomness import PrivacyRandomness
from privfl.runs import RunDir
from tests.privacy_settings import user_level

MELS = 40
WIDE = ModelConfig(name="cnn", conv_channels=4, fc_hidden=64)  # ~5k parameters
P = count_parameters(build_model(WIDE, MELS))


def client_data(n: int, seed: int = 0) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    return ClientData(0, torch.randn(n, 30, MELS, generator=g), torch.full((n,), 30), torch.arange(n) % 4)


def record_privacy(n: int, batch: int, sigma: float) -> RecordLevelPrivacy:
    return RecordLevelPrivacy(
        noise_multiplier=sigma,
        target_epsilon=None,
        max_grad_norm=1.0,
        delta=1e-5,
        accountant="rdp",
        sample_rates={0: batch / n},
        steps_per_round={0: -(-n // batch)},
        rounds=1,
    )


# --- the secret draw ------------------------------------------------------------------------------
def test_inclusion_is_a_fair_coin_from_os_entropy_and_coordinates_are_distinct():
    a = draw_canaries("gradient", 4000, 10_000, 3, 1.0)
    b = draw_canaries("gradient", 4000, 10_000, 3, 1.0)
    assert 0.47 < a.included.mean() < 0.53
    assert len(set(a.coordinates.tolist())) == 4000
    assert set(a.signs.tolist()) == {-1.0, 1.0}
    assert sorted(set(a.owners.tolist())) == [0, 1, 2]
    # nothing comes from a seed: two draws differ
    assert (a.included != b.included).any() and (a.coordinates != b.coordinates).any()
    c = draw_canaries("client", 50, 10_000, 3, 2.0)
    assert len(set(c.seeds.tolist())) == 50
    u = direction(int(c.seeds[0]), 10_000)
    assert np.linalg.norm(u) == pytest.approx(1.0)


def test_secrets_round_trip_and_a_missing_file_is_a_clear_error(tmp_path):
    s = draw_canaries("gradient", 30, 500, 2, 0.5)
    path = s.save(tmp_path)
    assert path.name == SECRET_FILE and (path.stat().st_mode & 0o077) == 0  # owner-readable only
    back = CanarySecrets.load(tmp_path)
    assert back.kind == "gradient" and back.n_params == 500 and back.norm == 0.5
    for key in ("included", "coordinates", "signs", "owners", "seeds"):
        np.testing.assert_array_equal(getattr(back, key), getattr(s, key))
    with pytest.raises(RunError, match="--canaries"):
        CanarySecrets.load(tmp_path / "nowhere")


# --- inserted through the mechanism, nothing else changed -----------------------------------------
def test_dp_sgd_canaries_pass_clipping_and_noise_and_change_only_their_coordinates():
    """Same batches and the same noise generator state: with canaries the update differs from the
    one without exactly at the canaries' coordinates, by -lr * value * (clip factor) / B per step."""
    data = client_data(12)
    batch, lr = 4, 0.5
    local = LocalConfig(1, batch, lr, momentum=0.0)
    seeded = PrivacyRandomness("seeded", 3)
    trainer = DPSGDTrainer(
        WIDE, MELS, local, seeded, record_privacy(12, batch, 1.0), "microbatch", max_grad_norm=1.0
    )
    w = initial_weights(WIDE, MELS, 0)
    coords, values = np.array([7, 4000, 200]), np.array([1.0, -1.0, 1.0])
    batches = [torch.tensor([0, 5]), torch.tensor([], dtype=torch.int64), torch.tensor([1, 2, 3])]
    plan = [(coords[:1], values[:1]), (coords, values), (coords[1:], values[1:])]  # step 2: empty batch
    without = trainer._run(data, w, 1, batches, torch.Generator().manual_seed(9))
    with_c = trainer._run(data, w, 1, batches, torch.Generator().manual_seed(9), plan)
    # the first step alone: the canary's push, nothing else (same batch, same noise draws)
    one = trainer._run(data, w, 1, batches[:1], torch.Generator().manual_seed(9), plan[:1])
    base = trainer._run(data, w, 1, batches[:1], torch.Generator().manual_seed(9))
    diff = one.delta.astype(np.float64) - base.delta
    clip = 1.0 / (1.0 + 1e-6)  # Opacus's clip factor for a gradient of norm exactly C
    assert diff[7] == pytest.approx(-lr * clip / batch, rel=1e-4)
    diff[7] = 0
    assert np.abs(diff).max() < 1e-6
    # over three steps (the second an empty batch) each canary's coordinate moves by its pushes;
    # elsewhere later gradients see the slightly moved weight 7 only
    total = with_c.delta.astype(np.float64) - without.delta
    assert total[4000] == pytest.approx(+2 * lr * clip / batch, rel=1e-3, abs=1e-4)
    assert total[200] == pytest.approx(-2 * lr * clip / batch, rel=1e-3, abs=1e-4)


def test_plain_sgd_canary_joins_one_batch_and_changes_only_its_coordinate():
    data = client_data(6)
    local = LocalConfig(1, 6, 0.2, momentum=0.0)  # one batch, one step
    secrets = draw_canaries("gradient", 5, P, 1, 1.0)
    secrets = CanarySecrets(**{**secrets.__dict__, "included": np.array([True, False, True, False, False])})
    w = initial_weights(WIDE, MELS, 0)
    plain = LocalTrainer(WIDE, MELS, local, seed=4).train(data, w, 1)
    canary = LocalTrainer(WIDE, MELS, local, seed=4, canaries=GradientCanaries(secrets)).train(data, w, 1)
    diff = canary.delta.astype(np.float64) - plain.delta
    for i in (0, 2):
        j = int(secrets.coordinates[i])
        assert diff[j] == pytest.approx(-0.2 * secrets.signs[i] / 6, rel=1e-4)
        diff[j] = 0
    assert np.abs(diff).max() < 1e-7  # the data order and everything else is unchanged
    assert canary.train_loss == plain.train_loss  # the canary adds a gradient, not a loss


class _Always(ClientCanaries):
    def round_members(self) -> np.ndarray:
        return np.arange(self.seeds.shape[0])


def test_client_canaries_are_clipped_by_user_dp_and_weightless_under_fedavg():
    secrets = draw_canaries("client", 6, 50, 2, 5.0)
    # a fixed inclusion (the OS draw gives all or none 1 time in 32): three inserted, three held out
    included = np.array([True, False, True, True, False, False])
    secrets = CanarySecrets(**{**secrets.__dict__, "included": included})
    inserted = int(included.sum())
    us = _Always(secrets, rate=1.0, weight=10, first_id=2)
    expected = sum(direction(int(s), 50) for s in secrets.seeds[secrets.included])

    fedavg = FedAvgPolicy()
    summed = WithCanaryClients(PlainSummation(), fedavg.contribution, us)
    summed.begin_round(1, 50)
    summed.add(fedavg.contribution(Update(0, 1, np.ones(50, dtype=np.float32), 10, 0.0)))
    result = summed.finish()
    assert result.weight == 10  # the canaries add no weight: the clients' mean is unchanged
    np.testing.assert_allclose(result.vector, 10 * np.ones(50) + 10 * 5.0 * expected, atol=1e-5)

    privacy = user_level(clip_norm=1.0, delta=1e-5, sample_rate=1.0, rounds=1)
    policy = UserDPPolicy(2, privacy, PrivacyRandomness("os", 0), clip_norm=1.0)
    policy.sample(1)
    summed = WithCanaryClients(PlainSummation(), policy.contribution, us)
    summed.begin_round(1, 50)
    result = summed.finish()
    np.testing.assert_allclose(result.vector, expected, atol=1e-5)  # norm 5 clipped to S = 1
    assert result.count == inserted


# --- the audit on the mechanism: valid, and it catches missing noise -------------------------------
def _audited_dp_sgd(sigma_run: float, m: int = 1000, steps: int = 4) -> tuple[float, CanarySecrets]:
    """DP-SGD at q = 1 (every record and canary in every step) with `sigma_run`; the one-run bound
    from the client's update (the server's view)."""
    n = 20
    data = client_data(n, seed=1)
    local = LocalConfig(1, n, 0.1, momentum=0.0)
    trainer = DPSGDTrainer(
        WIDE,
        MELS,
        local,
        PrivacyRandomness("os", 0),
        record_privacy(n, n, sigma_run),
        "microbatch",
        max_grad_norm=1.0,
    )
    secrets = draw_canaries("gradient", m, P, 1, 1.0)
    coords, values = GradientCanaries(secrets).held(0)
    w = initial_weights(WIDE, MELS, 0)
    update = trainer._run(
        data, w, 1, [torch.arange(n)] * steps, torch.Generator().manual_seed(0), [(coords, values)] * steps
    )
    scores = gradient_scores(secrets, {0: update.delta})
    return one_run_bound(scores, secrets.included, 1e-5, 0.95)["epsilon_lower_bound"], secrets


def test_dp_sgd_audit_finds_a_positive_bound_below_the_accountants_epsilon():
    sigma, steps = 1.0, 4
    accounted = epsilon_of([(sigma, 1.0, steps)], 1e-5, "rdp")
    bound, _ = _audited_dp_sgd(sigma, steps=steps)
    assert 0 < bound <= accounted


def test_audit_catches_a_mechanism_with_less_noise_than_it_accounts_for():
    """Planted bug: the trainer adds noise for sigma 0.3 while the accountant is told sigma 10."""
    claimed = epsilon_of([(10.0, 1.0, 4)], 1e-5, "rdp")
    bound, _ = _audited_dp_sgd(0.3, steps=4)
    assert claimed < 1.0 and bound > 2 * claimed


# --- end to end: train, audit, nothing leaks into utility ------------------------------------------
def _small(tiny_config, **dotted) -> ExperimentConfig:
    return tiny_config.override({"model.conv_channels": 4, "model.fc_hidden": 64, **dotted})


def test_non_private_run_with_canary_clients_is_detected_and_metrics_are_the_clients(tiny_config, tmp_path):
    cfg = _small(tiny_config, **{"audit.canaries": 300, "train.rounds": 2, "train.record_updates": True})
    summary = train(cfg, tmp_path / "run")
    run = RunDir.open(tmp_path / "run")
    assert "canar" not in (tmp_path / "run" / "config.toml").read_text().replace("canaries = 300", "")
    assert "included" not in json.dumps(summary) and "seeds" not in json.dumps(run.metrics())
    assert all(row["clients"] == 2 for row in run.metrics())  # canary clients are not clients
    assert run.load_updates(1)["client_ids"].tolist() == [0, 1]  # nor recorded updates
    result = audit_run(tmp_path / "run", AuditConfig(bootstrap=20))
    bound = result.rows[0].metrics
    assert bound["canary_kind"] == "client" and bound["accountant_epsilon"] is None
    assert bound["epsilon_lower_bound"] >= 2.0
    assert bound["auc"] > 0.99


def test_dp_run_audit_through_the_cli_stays_below_epsilon(tiny_config, tmp_path):
    cfg = _small(
        tiny_config,
        **{
            "audit.canaries": 400,
            "train.mode": "dp",
            "dp.noise_multiplier": 1.0,
            "train.record_updates": True,
        },
    )
    summary = train(cfg, tmp_path / "dp")
    out = CliRunner().invoke(main, ["attack", "audit", "--run", str(tmp_path / "dp"), "--bootstrap", "20"])
    assert out.exit_code == 0, out.output
    assert "accountant epsilon" in out.output and "view updates" in out.output
    written = json.loads((tmp_path / "dp" / "attacks" / "audit-updates.json").read_text())
    assert {row["party"] for row in written["rows"]} == {"server"}
    bound = written["rows"][0]["metrics"]
    assert bound["accountant_epsilon"] == pytest.approx(summary["privacy"]["observers"]["server"]["epsilon"])
    assert bound["epsilon_lower_bound"] <= bound["accountant_epsilon"]
    assert bound["below_accountant"] is True
    # the released model's view is a different party's and lands beside the server's, not over it
    out = CliRunner().invoke(
        main, ["attack", "audit", "--run", str(tmp_path / "dp"), "--bootstrap", "20", "--view", "model"]
    )
    assert out.exit_code == 0, out.output
    model = json.loads((tmp_path / "dp" / "attacks" / "audit-model.json").read_text())
    assert {row["party"] for row in model["rows"]} == {"reader of the released model"}
    assert model["rows"][0]["metrics"]["accountant_epsilon"] == pytest.approx(
        summary["privacy"]["observers"]["released_model"]["epsilon"]
    )
    assert json.loads((tmp_path / "dp" / "attacks" / "audit-updates.json").read_text()) == written


def test_canaries_leave_the_clients_data_and_the_evaluation_sets_alone(tiny_config):
    from privfl.data.dataset import prepare
    from privfl.experiment import Session

    cfg = _small(tiny_config, **{"audit.canaries": 50, "audit.kind": "gradient"})
    plain = prepare(_small(tiny_config))
    session = Session(cfg, None)
    try:
        for a, b in zip(plain.clients, session.data.clients, strict=True):
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        assert torch.equal(plain.test.y, session.data.test.y) and torch.equal(plain.val.x, session.data.val.x)
        assert session.canaries is not None and session.canaries.count == 50
    finally:
        session.close()
        import shutil

        shutil.rmtree(session.run.path)


@pytest.mark.parametrize(
    "dotted,match",
    [
        ({"train.mode": "dp", "dp.noise_multiplier": 1.0, "audit.kind": "client"}, "audit.kind 'client'"),
        (
            {"train.mode": "user-dp", "dp.noise_multiplier": 1.0, "audit.kind": "gradient"},
            "audit.kind 'gradient'",
        ),
        ({"train.mode": "dp", "dp.noise_multiplier": 1.0, "dp.grad_sample_mode": "ghost"}, "ghost"),
        ({"train.engine": "flower-sim"}, "built-in engine"),
        ({"audit.canaries": -1}, "audit.canaries must be >= 0"),
    ],
)
def test_canary_settings_fail_in_validate(tiny_config, dotted, match):
    cfg = tiny_config.override({"audit.canaries": 10, **dotted})
    with pytest.raises(ConfigError, match=match):
        cfg.validate()


def test_a_diverged_client_update_is_clipped_to_zero_not_nan():
    """Found auditing user-dp on RAVDESS: a client whose local training diverged sent NaN, which
    clipping left NaN, and the released model became NaN (no norm bound, no audit possible)."""
    from privfl.fl.aggregate import clip_update

    for bad in (np.nan, np.inf):
        vector = np.ones(10)
        vector[3] = bad
        clipped, was = clip_update(vector, 1.0)
        assert was and np.all(clipped == 0)
    fine, was = clip_update(np.full(4, 2.0), 1.0)
    assert was and np.linalg.norm(fine) == pytest.approx(1.0)


def test_resume_keeps_the_runs_own_canaries(tiny_config, tmp_path):
    cfg = _small(tiny_config, **{"audit.canaries": 40, "train.rounds": 1})
    train(cfg, tmp_path / "run")
    before = (tmp_path / "run" / SECRET_FILE).read_bytes()
    train(cfg.override({"train.rounds": 2}), resume=tmp_path / "run")
    assert (tmp_path / "run" / SECRET_FILE).read_bytes() == before
    assert len(RunDir.open(tmp_path / "run").metrics()) == 2


def test_auditing_a_run_without_canaries_is_one_clear_line(recorded_run):
    out = CliRunner().invoke(main, ["attack", "audit", "--run", str(recorded_run)])
    assert out.exit_code == 2
    assert "canaries.secret.npz does not exist" in out.output and "--canaries N" in out.output
    assert "Traceback" not in out.output
