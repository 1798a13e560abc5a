"""SecAgg+ runs on the built-in engine: the model matches plaintext within the quantisation bound,
dropouts and aborts keep the run going (or stop it), user-dp noise goes inside the mask, and the
attacks see only the aggregate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privfl.attacks import GenderAttackConfig, MembershipAttackConfig, run_attacks
from privfl.errors import PrivflError
from privfl.experiment import Session, train
from privfl.fl.secure.discrete_noise import DiscreteGaussianShare, discrete_gaussian, divergence
from privfl.fl.secure.masking import FixedPoint
from privfl.fl.secure.secaggplus_summation import with_dropouts
from privfl.runs import RunDir


def lockstep(cfg_plain, cfg_secure, rounds: int, tmp_path):
    """Each round from the plaintext run's weights: (plain, secure) new weights and the secure stats."""
    plain, secure = Session(cfg_plain, tmp_path / "plain"), Session(cfg_secure, tmp_path / "secure")
    fp, fs = plain.federation(), secure.federation()
    out = []
    for r in plain.rounds():
        if r > rounds:
            break
        plain.begin_round()
        a = fp.run_round(r, plain.weights)
        b = fs.run_round(r, plain.weights)
        out.append((a.weights, b.weights, b.stats, a.stats))
        plain.end_round(r, a)
    return out


def test_each_round_matches_plaintext_within_the_stated_bound(tiny_config, tmp_path):
    """Coarse grid (Delta = 2^-15): the error is visible and within m Delta / 2 / sum of weights."""
    plain = tiny_config.override({"train.clients": 3, "train.rounds": 2, "data.speakers": 10})
    coarse = plain.override(
        {"secure.scheme": "secaggplus", "secure.modulus_bits": 24, "secure.value_range": 64.0}
    )
    fixed = FixedPoint(24, 64.0, 3)
    assert fixed.step == 2.0**-15
    for a, b, stats, _ in lockstep(plain, coarse, 2, tmp_path):
        n = stats["secagg_survivors"]
        assert n == 3 and stats["quant_error_bound"] == fixed.sum_error_bound(3)
        err = np.abs(a.astype(np.float64) - b.astype(np.float64))
        # the sum's error over the sum of weights (>= 1 utterance per client), plus one float32 ulp
        ulp = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float32)).astype(np.float64)
        assert np.all(err <= fixed.sum_error_bound(n) / 3 + ulp), float(err.max())
        assert err.max() > 0  # the coarse grid does show


def test_default_grid_run_equals_plaintext_to_float32(tiny_config, tmp_path):
    """Default modulus (62 bits): the bound is far below float32 resolution, so whole runs agree."""
    cfg = tiny_config.override({"train.rounds": 3})
    train(cfg, tmp_path / "plain")
    train(cfg.override({"secure.scheme": "secaggplus", "secure.debug_check": True}), tmp_path / "secagg")
    a = RunDir(tmp_path / "plain").load_checkpoint()["weights"]
    b = RunDir(tmp_path / "secagg").load_checkpoint()["weights"]
    np.testing.assert_allclose(b, a, rtol=0, atol=float(np.spacing(np.float32(np.abs(a).max()))))
    rows = RunDir(tmp_path / "secagg").metrics()
    assert all(r["max_abs_error"] <= r["quant_error_bound"] for r in rows)
    assert all(r["secagg_survivors"] == 2 and r["bytes_per_client"] > 8 * a.size for r in rows)


def test_dropouts_keep_the_round_and_too_many_skip_or_stop_it(tiny_config, tmp_path, caplog):
    cfg = tiny_config.override(
        {"train.clients": 5, "train.rounds": 3, "data.speakers": 12, "secure.scheme": "secaggplus"}
    )
    session = Session(cfg, tmp_path / "run")
    summation = session.components.summation
    federation = session.federation()
    drops = {1: {"masked_input": {4}}, 2: {"masked_input": {0, 1, 2}}, 3: {"unmask": {3}}}
    outcomes = {}
    for r in session.rounds():
        session.begin_round()
        summation.relay = with_dropouts(summation.respond_all, drops[r])
        outcomes[r] = federation.run_round(r, session.weights)
        session.end_round(r, outcomes[r])
    session.close()
    assert outcomes[1].stats["secagg_survivors"] == 4 and outcomes[1].stats["secagg_dropped"] == 1
    assert outcomes[2].stats["secagg_aborted"] == 1 and outcomes[2].stats.get("skipped")
    assert "SecAgg+ aborted, the round is skipped" in caplog.text
    np.testing.assert_array_equal(outcomes[2].weights, outcomes[1].weights)  # skipped: unchanged
    assert outcomes[3].stats["secagg_survivors"] == 5  # 3 sent its masked input, then left
    stop = cfg.override({"secure.on_abort": "stop", "train.rounds": 1})
    session = Session(stop, tmp_path / "stop")
    session.components.summation.relay = with_dropouts(
        session.components.summation.respond_all, {"masked_input": {0, 1, 2}}
    )
    session.begin_round()
    with pytest.raises(PrivflError, match="fewer than the threshold t = 3.*on_abort = 'stop'"):
        session.federation().run_round(1, session.weights)


# --- distributed DP --------------------------------------------------------------------------------
def test_discrete_gaussian_has_the_stated_moments_and_tau() -> None:
    rng = np.random.default_rng(7)
    for sigma in (0.7, 3.0, 2.0**30):
        x = discrete_gaussian(200_000, sigma, rng)
        assert x.dtype == np.int64
        assert abs(x.mean()) < 5 * sigma / math.sqrt(len(x))
        assert abs(x.var() / sigma**2 - 1) < 0.03
    assert divergence(0.5, 10) > 1e-3 and divergence(2.0**20, 1000) == 0.0


def test_noise_shares_sit_on_the_grid_and_sum_to_the_full_variance() -> None:
    fixed = FixedPoint(62, 64.0, 10)
    share = DiscreteGaussianShare(fixed, 1000, max_dropout=0.2)
    # every released sum ends with sigma^2 S'^2 / (1 - f) = 1.25 of it, whoever dropped
    assert share.missing(10, 10) == 0.0 and share.missing(10, 8) == 0.25 and share.missing(0, 0) == 1.25
    rng = np.random.default_rng(3)
    x = rng.normal(size=1000) * 0.01
    shares = [share.add(x, 1.0, 1.0, 10, rng) for _ in range(8)]  # 8 survivors of 10: f k dropped
    for s in shares:
        q = np.ldexp(s, fixed.frac_bits)
        assert np.array_equal(q, np.rint(q))  # exactly on the masking grid: encoding adds nothing
    noise = sum(shares) - 8 * x
    assert abs(noise.std() / share.sensitivity(1.0) - 1.0) < 0.1  # still sigma S' in total
    assert share.sensitivity(1.0) - 1.0 == pytest.approx(math.sqrt(1000) * fixed.step / 2)


def test_user_dp_noise_is_inside_the_masked_sum(tiny_config, tmp_path):
    cfg = tiny_config.override(
        {
            "train.mode": "user-dp",
            "train.clients": 4,
            "train.fraction": 1.0,
            "train.rounds": 2,
            "data.speakers": 12,
            "dp.noise_multiplier": 1.0,
            "secure.scheme": "secaggplus",
        }
    )
    session = Session(cfg, tmp_path / "run")
    federation = session.federation()
    for r in session.rounds():
        session.begin_round()
        outcome = federation.run_round(r, session.weights)
        assert outcome.stats["server_noise_share"] == 0.0  # the clients' shares carried it all
        assert outcome.stats["secagg_survivors"] == len(outcome.selected)
        session.end_round(r, outcome)
    summary = session.finish()
    session.close()
    rows = RunDir(tmp_path / "run").metrics()
    assert not any(k.startswith("secagg_") or k == "quant_error_bound" for row in rows for k in row)
    privacy = summary["privacy"]
    assert privacy["epsilon"] > 0
    server = privacy["observers"]["server"]
    assert server["epsilon"] is not None and "unmasked sum of the survivors" in server["why"]


# --- attacks ---------------------------------------------------------------------------------------
def test_attacks_on_a_secaggplus_run_see_only_the_aggregate(tmp_path, tiny_config):
    cfg = tiny_config.override(
        {
            "data.speakers": 12,
            "train.clients": 4,
            "train.rounds": 2,
            "train.record_updates": True,
            "secure.scheme": "secaggplus",
        }
    )
    train(cfg, tmp_path / "run")
    observed, results = run_attacks(
        tmp_path / "run",
        gender=GenderAttackConfig(shadow_clients=4, max_rounds=1, bootstrap=20),
        membership=MembershipAttackConfig(candidates=4, max_rounds=1, bootstrap=20),
    )
    assert observed.secure and observed.observe(1)[0].deltas is None
    for result in results:
        assert result.observed == "aggregate update only (secure aggregation)"
        per_client = [r for r in result.rows if "per-client" in r.name]
        assert per_client and all(r.metrics is None for r in per_client)
