"""The composition root: one config and its prepared data -> trainer, policy, summation, sampler, privacy.

Every engine runs what `build_components` returns and nothing else: the built-in loop, the
Flower ServerApp and each Flower ClientApp (from the config the server sends). The choices:

  mode fedavg/central  LocalTrainer, FedAvgPolicy, McMahan's fixed-fraction sampler
  mode dp              DPSGDTrainer on every client (record-level DP), EqualWeightFedAvg
  mode user-dp         LocalTrainer, UserDPPolicy (DP-FedAvg) which is also the Poisson sampler
  DP modes             privacy randomness per party (privfl.randomness, dp.noise); the trainer
                       behind AccountedReports: a client discloses its update and nothing else
  secure.scheme        PlainSummation, CkksSummation or SecAggPlusSummation (user-dp: behind
                       SkipEmptyRounds)
  audit canaries       gradient canaries inside the trainer (DPSGDTrainer, LocalTrainer); client
                       canaries as WithCanaryClients around the summation (privfl.canaries)

Every check that can fail does so here or in `ExperimentConfig.validate()`, before the first round.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from privfl.canaries import CanarySecrets, ClientCanaries, GradientCanaries
from privfl.config import ExperimentConfig
from privfl.data.dataset import ClientData
from privfl.errors import PrivacyError
from privfl.fl.aggregate import PlainSummation, Summation
from privfl.fl.canary_clients import WithCanaryClients
from privfl.fl.client import LocalConfig, LocalTrainer
from privfl.fl.federation import FedAvgPolicy, Policy, PrivacyReport, Sampler, Trainer, sample_clients
from privfl.observers import Setting
from privfl.randomness import CLIENT_SAMPLE_TAG, PrivacyRandomness

log = logging.getLogger(__name__)


class ClientsData(Protocol):
    """What the components are built from: the clients' shards and the feature width."""

    clients: Sequence[ClientData]
    n_mels: int


@dataclass
class Components:
    """The pluggable pieces of a federation for one config."""

    trainer: Trainer
    policy: Policy
    summation: Summation
    sampler: Sampler
    privacy: PrivacyReport | None = None


def build_components(
    cfg: ExperimentConfig, data: ClientsData, canaries: CanarySecrets | None = None
) -> Components:
    """Choose trainer, policy, summation and sampler from the mode and secure-aggregation settings.

    canaries: the run's audit canaries (privfl.canaries), when cfg.audit.canaries > 0.
    """
    t = cfg.train
    local = LocalConfig.of(t)
    gradient = GradientCanaries(canaries) if canaries is not None and canaries.kind == "gradient" else None
    if t.mode == "dp":
        parts = _record_level(cfg, data.clients, data.n_mels, local, gradient)
    elif t.mode == "user-dp":
        parts = _user_level(cfg, data.clients, data.n_mels, local)
    else:
        trainer = LocalTrainer(cfg.model, data.n_mels, local, cfg.seed, canaries=gradient)
        n = len(data.clients)
        fraction = t.fraction if t.mode != "central" else 1.0
        parts = Components(
            trainer=trainer,
            policy=FedAvgPolicy(t.server_lr),
            summation=make_summation(cfg),
            sampler=lambda r: sample_clients(n, fraction, cfg.seed, r),
        )
    if canaries is not None and canaries.kind == "client":
        sizes = [c.num_samples for c in data.clients]
        clients = ClientCanaries(canaries, t.fraction, round(sum(sizes) / len(sizes)), len(sizes))
        parts.summation = WithCanaryClients(parts.summation, parts.policy.contribution, clients)
    return parts


def make_summation(cfg: ExperimentConfig) -> Summation:
    """Plaintext sum, a CKKS sum released by a key holder in its own process (secure.scheme 'ckks'),
    or a SecAgg+ masked sum that the server unmasks with the survivors' shares ('secaggplus')."""
    if cfg.secure.scheme == "none":
        return PlainSummation()
    if cfg.secure.scheme == "secaggplus":
        from privfl.fl.secure.secaggplus_summation import SecAggParams, SecAggPlusSummation

        return SecAggPlusSummation(
            SecAggParams.from_config(cfg), on_abort=cfg.secure.on_abort, debug_check=cfg.secure.debug_check
        )
    from privfl.fl.secure.summation import CkksSummation  # TenSEAL loads only when asked for

    return CkksSummation(cfg, debug_check=cfg.secure.debug_check)


def _masked_noise_share(cfg: ExperimentConfig, n_mels: int):
    """SecAgg+: each client's share is a discrete Gaussian on the masking grid (Kairouz et al. 2021);
    None (a float Gaussian share, or server noise) for the other schemes."""
    if cfg.secure.scheme != "secaggplus":
        return None
    from privfl.fl.secure.discrete_noise import DiscreteGaussianShare
    from privfl.fl.secure.secaggplus_summation import SecAggParams
    from privfl.models import build_model, count_parameters

    n_params = count_parameters(build_model(cfg.model, n_mels))  # noised; the weight 1 is public
    return DiscreteGaussianShare(SecAggParams.from_config(cfg).fixed, n_params, cfg.secure.max_dropout)


def _record_level(
    cfg: ExperimentConfig,
    clients: Sequence[ClientData],
    n_mels: int,
    local: LocalConfig,
    canaries: GradientCanaries | None = None,
) -> Components:
    # the DP modules load Opacus (about 2 s of CPU), which a plain FedAvg client never needs: a
    # SuperNode starts a ClientApp process, and so these imports, for every message
    from privfl.fl.dp import (
        AccountedReports,
        DPSGDTrainer,
        EqualWeightFedAvg,
        fixed_size_clients,
        resolve_grad_sample_mode,
    )
    from privfl.privacy import RecordLevelPrivacy, check_delta, default_delta

    d, t = cfg.dp, cfg.train
    resolve_grad_sample_mode(d.grad_sample_mode, cfg.model.name)  # a typo fails before sigma is solved
    sizes = {c.client_id: c.num_samples for c in clients}
    for cid, n in sizes.items():
        if n < local.batch_size:
            raise PrivacyError(
                f"client {cid} holds {n} utterances, fewer than --batch-size {local.batch_size}: its "
                f"Poisson sample rate B/n would exceed 1; use --batch-size {max(min(sizes.values()), 1)} "
                "or fewer --clients"
            )
    n_max = max(sizes.values())
    delta = d.delta if d.delta is not None else default_delta(n_max)
    check_delta(delta, n_max, "the largest client's utterance count")
    privacy = RecordLevelPrivacy(
        noise_multiplier=d.noise_multiplier,
        target_epsilon=d.target_epsilon,
        max_grad_norm=d.max_grad_norm,
        delta=delta,
        accountant=d.accountant,
        sample_rates={cid: local.batch_size / n for cid, n in sizes.items()},
        steps_per_round={cid: local.epochs * -(-n // local.batch_size) for cid, n in sizes.items()},
        rounds=t.rounds,
        setting=Setting(
            d.noise, cfg.secure.scheme != "none", t.record_updates, masked=cfg.secure.scheme == "secaggplus"
        ),
    )
    randomness = PrivacyRandomness(d.noise, cfg.seed)
    trainer = DPSGDTrainer(
        cfg.model,
        n_mels,
        local,
        randomness,
        privacy,
        d.grad_sample_mode,
        max_grad_norm=d.max_grad_norm,
        canaries=canaries,
    )
    log.info(
        "record-level DP: sigma=%.4g C=%g delta=%g accountant=%s grad_sample_mode=%s noise from %s",
        privacy.noise_multiplier,
        trainer.max_grad_norm,
        delta,
        d.accountant,
        trainer.grad_sample_mode,
        "the seed" if d.noise == "seeded" else "OS entropy",
    )
    n, fraction = len(clients), t.fraction
    return Components(
        trainer=AccountedReports(trainer),
        policy=EqualWeightFedAvg(),
        summation=make_summation(cfg),
        sampler=lambda r: fixed_size_clients(n, fraction, randomness.server_sample(r, CLIENT_SAMPLE_TAG)),
        privacy=privacy,
    )


def _user_level(
    cfg: ExperimentConfig,
    clients: Sequence[ClientData],
    n_mels: int,
    local: LocalConfig,
) -> Components:
    from privfl.fl.dp import AccountedReports, SkipEmptyRounds, UserDPPolicy
    from privfl.privacy import UserLevelPrivacy, check_delta, default_user_delta

    d, t = cfg.dp, cfg.train
    k = len(clients)
    delta = d.delta if d.delta is not None else default_user_delta(k)
    check_delta(delta, k, "the number of clients")
    encrypted = cfg.secure.scheme != "none"
    privacy = UserLevelPrivacy(
        noise_multiplier=d.noise_multiplier,
        target_epsilon=d.target_epsilon,
        clip_norm=d.clip_norm,
        delta=delta,
        accountant=d.accountant,
        sample_rate=t.fraction,
        rounds=t.rounds,
        setting=Setting(d.noise, encrypted, t.record_updates, masked=cfg.secure.scheme == "secaggplus"),
    )
    randomness = PrivacyRandomness(d.noise, cfg.seed)
    policy = UserDPPolicy(
        k,
        privacy,
        randomness,
        noise_on_clients=encrypted,
        clip_norm=d.clip_norm,
        noise_share=_masked_noise_share(cfg, n_mels),
    )
    log.info(
        "user-level DP: sigma=%.4g S=%g q=%g delta=%g accountant=%s noise by %s from %s",
        privacy.noise_multiplier,
        policy.clip_norm,
        t.fraction,
        delta,
        d.accountant,
        "clients" if encrypted else "server",
        "the seed" if d.noise == "seeded" else "OS entropy",
    )
    return Components(
        trainer=AccountedReports(LocalTrainer(cfg.model, n_mels, local, cfg.seed)),
        policy=policy,
        summation=SkipEmptyRounds(make_summation(cfg)),
        sampler=policy.sample,
        privacy=privacy,
    )
