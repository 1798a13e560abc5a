"""Differentially private federated training: DP-SGD on every client, DP-FedAvg on the server.

Record-level (`--mode dp`): `DPSGDTrainer` runs Abadi et al.'s DP-SGD on each client — Poisson
batches at rate q_k = B / n_k, every per-sample gradient clipped to C, Gaussian noise of std
sigma * C added to their sum — and composes each step into that client's accountant, which lives
for the whole run (`privfl.privacy.RecordLevelPrivacy`). It returns the same flat weight layout as
`LocalTrainer`, so FedAvg (plain or encrypted) does not care which clients were private.

User-level (`--mode user-dp`): `UserDPPolicy` is McMahan et al.'s (2018) DP-FedAvg as a `Policy`:
clients are Poisson-sampled at rate q, each update is clipped to L2 norm S and weighted 1, and
the server adds N(0, sigma^2 S^2) to the sum and divides by the expected count qK. With CKKS
aggregation the server never sees an un-noised sum: the k sampled clients each add a share
N(0, sigma^2 S^2 / k) before encrypting, so the decrypted sum carries exactly the noise the
analysis assumes (see docs/privacy.md for why k, and what dropouts would do).

Privacy randomness (record samples, DP-SGD noise, noise shares, server noise, the client sample)
comes from `privfl.randomness`: each party's OS entropy unless `dp.noise = "seeded"`. Under either
mode a client discloses only its update (`AccountedReports`): no sample count, loss or clip count.

The mechanisms own their parameters (clip bound, noise multiplier's use); the accountants in
`privfl.privacy` only account and report. `privfl.fl.components` builds and wires both.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn

from privfl.canaries import GradientCanaries, dirac_rows
from privfl.config import GRAD_SAMPLE_MODES, ModelConfig
from privfl.data.dataset import ClientData
from privfl.errors import ConfigError, PrivacyError
from privfl.fl.aggregate import (
    Contribution,
    ContributionRule,
    RoundKeys,
    Summation,
    SumResult,
    Upload,
    clip_update,
    gaussian_noise,
)
from privfl.fl.client import LocalConfig, Update
from privfl.fl.federation import FedAvgPolicy
from privfl.models import PaperLSTM, build_model, canonical_parameters, get_flat, set_flat
from privfl.parallel import thread_map, torch_threads
from privfl.privacy import RecordLevelPrivacy, UserLevelPrivacy
from privfl.randomness import USER_SAMPLE_TAG, PrivacyRandomness

log = logging.getLogger(__name__)

AUTO_GRAD_SAMPLE_MODE = {"cnn": "microbatch", "lstm": "microbatch"}
"""What grad_sample_mode = "auto" picks per model: the fastest in benchmarks/dp_overhead.py."""


# --- checks ------------------------------------------------------------------------------------------
def validate_dp_model(model: nn.Module) -> None:
    """Raise PrivacyError listing every layer Opacus cannot give per-sample gradients for."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        listed = "; ".join(str(e) for e in errors)
        raise PrivacyError(
            f"model {type(model).__name__} has layers DP-SGD cannot train privately: {listed}. "
            "Replace them (e.g. BatchNorm -> GroupNorm, nn.LSTM -> opacus.layers.DPLSTM), "
            "or use opacus.validators.ModuleValidator.fix(model)"
        )


def resolve_grad_sample_mode(mode: str, model_name: str) -> str:
    """The per-sample gradient engine for a model; 'auto' is the measured fastest."""
    if mode not in GRAD_SAMPLE_MODES:
        raise ConfigError(f"dp.grad_sample_mode {mode!r} is not one of {', '.join(GRAD_SAMPLE_MODES)}")
    return AUTO_GRAD_SAMPLE_MODE.get(model_name, "hooks") if mode == "auto" else mode


def poisson_batch(n: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of a Poisson batch: each of n records independently with probability sample_rate."""
    return torch.nonzero(torch.rand(n, generator=generator) < sample_rate).flatten()


@contextlib.contextmanager
def _quiet_first_layer_hook() -> Iterator[None]:
    # Opacus's hooks on the first layer fire with no input gradient (the features need none)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        yield


# --- per-sample gradient engines ---------------------------------------------------------------------
class _Engine:
    """A per-sample gradient engine: backward() leaves per-sample gradients (or, for ghost
    clipping, the clipped sum) where the Opacus optimizer from optimizer() expects them."""

    threads: int | None = None  # torch intra-op threads while backward runs (None: leave as is)

    def __init__(self, model: nn.Module) -> None:
        self.module = model
        self.params = _trainable(model)

    def optimizer(self, base: torch.optim.Optimizer, **kwargs):
        from opacus.optimizers import DPOptimizer

        return DPOptimizer(base, **kwargs)

    def empty(self) -> None:
        """The state of a step with no samples (a Poisson batch can be empty)."""
        for p in self.params:
            p.grad_sample = p.new_zeros((0, *p.shape))


class _Microbatch(_Engine):
    """Exact per-sample gradients: one forward/backward per sample through the ordinary model.

    Each sample runs alone at its own length, so fused kernels (nn.LSTM) do the work and no
    padding is computed; on CPU this beats Opacus's engines for both paper models.
    """

    threads: int | None = 1  # batch-1 kernels do not parallelise; extra OpenMP threads only spin

    def backward(
        self, x: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor, optimizer
    ) -> tuple[float, torch.Tensor]:
        """Leave per-sample gradients in p.grad_sample; return (summed loss, per-sample norms [b])."""

        def one(i: int) -> tuple[float, tuple[torch.Tensor, ...]]:
            t = int(lengths[i])
            loss = nn.functional.cross_entropy(
                self.module(x[i : i + 1, :t], lengths[i : i + 1]), y[i : i + 1]
            )
            return float(loss.detach()), torch.autograd.grad(loss, self.params)

        done = thread_map(one, int(y.shape[0]))  # samples in parallel, one per core
        for j, p in enumerate(self.params):
            p.grad_sample = torch.stack([grads[j] for _, grads in done])
        return sum(loss for loss, _ in done), _per_sample_norms(self.params)


class _LSTMMicrobatch(_Engine):
    """PaperLSTM: microbatching where it pays, batching where it does not.

    Only the recurrence and its mean over frames run per sample (fused nn.LSTM at the sample's own
    length, forward and backward); the head (fc1, ReLU, fc2, loss) runs once for the whole batch
    and its per-sample gradients are outer products of activations and output gradients. It
    mirrors PaperLSTM.forward; tests hold it to the model's own per-sample gradients.
    """

    threads: int | None = 1  # batch-1 kernels do not parallelise; extra OpenMP threads only spin

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.lstm_params = [p for name, p in canonical_parameters(model) if name.startswith("lstm.")]

    def backward(
        self, x: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor, optimizer
    ) -> tuple[float, torch.Tensor]:
        m = self.module

        def recurrence(i: int) -> torch.Tensor:  # [1, H]: the mean over this sample's real frames
            out, _ = m.lstm(x[i : i + 1, : int(lengths[i])])
            return out.mean(dim=1)

        pooled_graphs = thread_map(recurrence, int(y.shape[0]))  # samples in parallel, one per core
        pooled = torch.cat([p.detach() for p in pooled_graphs]).requires_grad_(True)
        z1 = nn.functional.linear(pooled, m.fc1.weight, m.fc1.bias)
        a1 = torch.relu(z1)
        z2 = nn.functional.linear(a1, m.fc2.weight, m.fc2.bias)
        losses = nn.functional.cross_entropy(z2, y, reduction="none")
        d_pooled, d_z1, d_z2 = torch.autograd.grad(losses.sum(), [pooled, z1, z2])
        per_sample = thread_map(
            lambda i: torch.autograd.grad(
                pooled_graphs[i], self.lstm_params, grad_outputs=d_pooled[i : i + 1]
            ),
            len(pooled_graphs),
        )
        grads = {name: torch.stack([g[j] for g in per_sample]) for j, name in enumerate(_LSTM_NAMES)}
        grads["fc1.weight"] = d_z1.unsqueeze(2) * pooled.detach().unsqueeze(1)
        grads["fc1.bias"] = d_z1
        grads["fc2.weight"] = d_z2.unsqueeze(2) * a1.detach().unsqueeze(1)
        grads["fc2.bias"] = d_z2
        for name, p in canonical_parameters(m):
            p.grad_sample = grads[name]
        return float(losses.detach().sum()), _per_sample_norms(self.params)


_LSTM_NAMES = ("lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0")


class _OpacusEngine(_Engine):
    """Opacus's per-sample gradients (hooks, functorch, ew) on the DP model, e.g. DPLSTM."""

    def __init__(self, model: nn.Module, mode: str) -> None:
        from opacus.grad_sample import prepare_module

        super().__init__(model)
        self.wrapped = prepare_module(model, grad_sample_mode=mode, batch_first=True, loss_reduction="mean")

    def backward(
        self, x: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor, optimizer
    ) -> tuple[float, torch.Tensor]:
        losses = nn.functional.cross_entropy(self.wrapped(x, lengths), y, reduction="none")
        with _quiet_first_layer_hook():
            losses.mean().backward()
        return float(losses.detach().sum()), _per_sample_norms(self.params)


class _GhostEngine(_Engine):
    """Opacus ghost clipping: per-sample norms without per-sample gradients, then a second backward."""

    def __init__(self, model: nn.Module, max_grad_norm: float) -> None:
        from opacus.grad_sample import GradSampleModuleFastGradientClipping

        super().__init__(model)
        self.wrapped = GradSampleModuleFastGradientClipping(
            model,
            batch_first=True,
            loss_reduction="mean",
            max_grad_norm=max_grad_norm,
            use_ghost_clipping=True,
        )

    def optimizer(self, base: torch.optim.Optimizer, **kwargs):
        from opacus.optimizers import DPOptimizerFastGradientClipping

        return DPOptimizerFastGradientClipping(base, **kwargs)

    def backward(
        self, x: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor, optimizer
    ) -> tuple[float, torch.Tensor]:
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        criterion = DPLossFastGradientClipping(self.wrapped, optimizer, nn.CrossEntropyLoss(), "mean")
        loss = criterion(self.wrapped(x, lengths), y)
        with _quiet_first_layer_hook():
            loss.backward()  # both passes: norms, then the clipped sum into p.grad
        return float(loss.loss_per_sample.detach().sum()), self.wrapped.per_sample_gradient_norms.detach()

    def empty(self) -> None:
        for p in self.params:
            p.grad = torch.zeros_like(p)


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters in the canonical flat order, so noise lands alike for every engine."""
    return [p for _, p in canonical_parameters(model) if p.requires_grad]


def _per_sample_norms(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """L2 norm of each sample's whole gradient [b], from p.grad_sample [b, *p.shape]."""
    per_param = [p.grad_sample.reshape(p.grad_sample.shape[0], -1).norm(2, dim=1) for p in params]
    return torch.stack(per_param, dim=1).norm(2, dim=1)


def _engine(model_cfg: ModelConfig, n_mels: int, mode: str, max_grad_norm: float):
    if mode == "microbatch":
        model = build_model(model_cfg, n_mels, dp=False)
        return _LSTMMicrobatch(model) if isinstance(model, PaperLSTM) else _Microbatch(model)
    model = build_model(model_cfg, n_mels, dp=True)  # DPLSTM: Opacus sees its per-step linears
    if mode == "ghost":
        return _GhostEngine(model, max_grad_norm)
    return _OpacusEngine(model, mode)


# --- record-level DP ---------------------------------------------------------------------------------
class DPSGDTrainer:
    """DP-SGD local training (Abadi et al. 2016) that spends each client's privacy in one accountant.

    A Trainer: train(data, global_weights, round_index) -> Update. The record sample and the
    noise come from `randomness.client_dpsgd(round, client)` (the client's OS entropy unless
    seeded); the optimizer is rebuilt every call (momentum restarts, as in LocalTrainer), the
    accountants in `privacy` never are.

    canaries: gradient canaries (`privfl.canaries`, for `privfl attack audit`): each included
    canary a client holds is one more record, Poisson-sampled at q_k every step from its own
    OS-seeded generator, whose per-sample gradient (a Dirac of norm C) joins the batch's before
    Opacus clips and noises it. The record sample and the noise draw what they would without them.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        n_mels: int,
        local: LocalConfig,
        randomness: PrivacyRandomness,
        privacy: RecordLevelPrivacy,
        grad_sample_mode: str = "auto",
        *,
        max_grad_norm: float,
        canaries: GradientCanaries | None = None,
    ) -> None:
        self.local = local
        self.canaries = canaries
        self.randomness = randomness
        self.privacy = privacy
        self.max_grad_norm = float(max_grad_norm)  # the mechanism's clip bound C
        self.grad_sample_mode = resolve_grad_sample_mode(grad_sample_mode, model_cfg.name)
        validate_dp_model(build_model(model_cfg, n_mels, dp=True))
        if canaries is not None and self.grad_sample_mode == "ghost":
            raise PrivacyError(
                "gradient canaries join the per-sample gradients, which ghost clipping never forms; "
                "use --set dp.grad_sample_mode=microbatch"
            )
        self.engine = _engine(model_cfg, n_mels, self.grad_sample_mode, self.max_grad_norm)
        self.model = self.engine.module

    def train(self, data: ClientData, global_weights: np.ndarray, round_index: int) -> Update:
        cid = data.client_id
        if cid not in self.privacy.sample_rates:
            raise PrivacyError(f"client {cid} has no accountant; build the trainer with every client's data")
        rate = self.privacy.sample_rates[cid]
        steps = self.privacy.steps_per_round[cid]
        if not math.isclose(rate, self.local.batch_size / data.num_samples):
            raise PrivacyError(
                f"client {cid} now holds {data.num_samples} utterances, its accountant was planned for "
                f"{round(self.local.batch_size / rate)}; rebuild the components for the new data"
            )
        sampling, noise = self.randomness.client_dpsgd(round_index, cid)
        batches = (poisson_batch(data.num_samples, rate, sampling) for _ in range(steps))
        if self.canaries is None:
            update = self._run(data, global_weights, round_index, batches, noise)
        else:
            coords, values = self.canaries.held(cid)
            plan = self.canaries.poisson_plan(cid, steps, rate)
            rows = ((coords[i], values[i]) for i in plan)
            update = self._run(data, global_weights, round_index, batches, noise, rows)
        self.privacy.spend(cid, steps, rate, round_index)
        return update

    def _run(
        self,
        data: ClientData,
        global_weights: np.ndarray,
        round_index: int,
        batches: Iterable[torch.Tensor],
        noise: torch.Generator,
        canary_rows: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> Update:
        """DP-SGD over the given index batches; no accounting (tests feed fixed batches here).

        canary_rows: per step, (flat coordinates, values) of the Dirac canaries in its batch.
        """
        canary_steps = iter(canary_rows) if canary_rows is not None else None
        set_flat(self.model, global_weights)
        base = torch.optim.SGD(self.engine.params, lr=self.local.lr, momentum=self.local.momentum)
        optimizer = self.engine.optimizer(
            base,
            noise_multiplier=self.privacy.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=self.local.batch_size,
            loss_reduction="mean",
            generator=noise,
            secure_mode=False,
        )
        self.model.train()
        loss_sum, seen, clipped, steps, empty = 0.0, 0, 0, 0, 0
        with torch_threads(self.engine.threads):
            for idx in batches:
                optimizer.zero_grad(set_to_none=True)
                if idx.numel() == 0:
                    self.engine.empty()  # the step still happens: noise only, and it is accounted
                    empty += 1
                else:
                    batch_loss, norms = self.engine.backward(
                        data.x[idx], data.lengths[idx], data.y[idx], optimizer
                    )
                    loss_sum += batch_loss
                    seen += int(idx.numel())
                    clipped += int((norms > self.max_grad_norm).sum())
                if canary_steps is not None:  # after the real batch (or the empty one)
                    self._append_canaries(*next(canary_steps))
                optimizer.step()
                steps += 1
        optimizer.zero_grad(set_to_none=True)
        delta = get_flat(self.model) - global_weights
        stats = {"steps": steps, "per_sample_grads": seen, "clipped": clipped, "empty_batches": empty}
        return Update(data.client_id, round_index, delta, data.num_samples, loss_sum / max(seen, 1), stats)

    def _append_canaries(self, coordinates: np.ndarray, values: np.ndarray) -> None:
        """Add this step's canaries as per-sample gradient rows, before clipping and noise."""
        if coordinates.shape[0] == 0:
            return
        params = self.engine.params
        rows = dirac_rows([p.shape for p in params], coordinates, values, params[0].dtype)
        for p, row in zip(params, rows, strict=True):
            p.grad_sample = torch.cat([p.grad_sample, row])


# --- user-level DP -----------------------------------------------------------------------------------
def poisson_clients(n_clients: int, rate: float, rng: np.random.Generator) -> list[int]:
    """Each client independently with probability `rate`, drawn from rng (may be empty)."""
    return np.flatnonzero(rng.random(n_clients) < rate).tolist()


def fixed_size_clients(n_clients: int, fraction: float, rng: np.random.Generator) -> list[int]:
    """McMahan et al.'s selection, m = max(round(C*K), 1) clients without replacement, from rng."""
    if fraction >= 1.0:
        return list(range(n_clients))
    m = max(int(round(fraction * n_clients)), 1)
    return sorted(rng.choice(n_clients, size=m, replace=False).tolist())


def disclosed(update: Update) -> Update:
    """What the server learns of a DP client's round besides its contribution: who and when.

    The sample count, training loss and per-step statistics (clip counts, steps, empty batches)
    are not covered by the analysis, so they never leave the client (docs/privacy.md).
    """
    return Update(update.client_id, update.round, update.delta, 0, math.nan, {})


class AccountedReports:
    """A Trainer whose Updates carry only what a DP client discloses (`disclosed`)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def train(self, data: ClientData, global_weights: np.ndarray, round_index: int) -> Update:
        return disclosed(self.inner.train(data, global_weights, round_index))


class EqualWeightFedAvg(FedAvgPolicy):
    """FedAvg with weight 1 per client (record-level DP): w + sum_k delta_k / k.

    Sample-count weights would need n_k in the clear, and n_k is what add/remove-one adjacency
    changes; the CKKS sum carries the count k it divides by.
    """

    def contribution(self, update: Update) -> Contribution:
        return Contribution(update.client_id, update.delta.astype(np.float64), 1.0)


class NoiseShare(Protocol):
    """How a user-dp client noises its clipped update inside an encrypted or masked sum."""

    def sensitivity(self, clip_norm: float) -> float: ...

    def add(
        self, vector: np.ndarray, sigma: float, clip_norm: float, sampled: int, rng: np.random.Generator
    ) -> np.ndarray: ...

    def missing(self, sampled: int, survivors: int) -> float: ...


class UserDPPolicy:
    """DP-FedAvg (McMahan et al. 2018) as a Policy; `sample` is its client sampler.

    contribution: clip the update to L2 norm S, weight 1 (plus this client's noise share when the
    sum is encrypted). server_step: add N(0, sigma^2 S^2) unless the clients did, divide by the
    expected count qK (a fixed denominator, so one client moves the result by at most S / qK),
    and compose one round into the accountant. The sample and the server's noise come from the
    server's randomness, each noise share from the client's own (`privfl.randomness`).

    On a client process (Flower) `announce(round, k)` replaces `sample`: the client learns only
    that it was sampled and the round's count k, which its noise share needs.
    """

    def __init__(
        self,
        n_clients: int,
        privacy: UserLevelPrivacy,
        randomness: PrivacyRandomness,
        noise_on_clients: bool = False,
        *,
        clip_norm: float,
        noise_share: NoiseShare | None = None,
    ) -> None:
        self.n_clients = n_clients
        self.privacy = privacy
        self.randomness = randomness
        self.noise_on_clients = noise_on_clients
        self.clip_norm = float(clip_norm)  # the mechanism's clip bound S
        self.noise_share = noise_share  # None: a float Gaussian share of sigma^2 S^2 / k
        self._round: int | None = None
        self._sampled = 0

    @property
    def expected_clients(self) -> float:
        return self.privacy.sample_rate * self.n_clients

    def sample(self, round_index: int) -> list[int]:
        rng = self.randomness.server_sample(round_index, USER_SAMPLE_TAG)
        chosen = poisson_clients(self.n_clients, self.privacy.sample_rate, rng)
        self._round, self._sampled = round_index, len(chosen)
        return chosen

    def announce(self, round_index: int, sampled_count: int) -> None:
        """What a sampled client is told of the round's sample: its size k (>= 1, itself included)."""
        if sampled_count < 1:
            raise PrivacyError(
                f"round {round_index}: a sampled client was told the round has {sampled_count} clients; "
                "server and client must run the same privfl version"
            )
        self._round, self._sampled = round_index, int(sampled_count)

    def contribution(self, update: Update) -> Contribution:
        if update.round != self._round:
            raise RuntimeError(
                f"UserDPPolicy.sample() was not called for round {update.round}; use it as the sampler"
            )
        vector, was_clipped = clip_update(update.delta.astype(np.float64), self.clip_norm)
        if self.noise_on_clients:
            # k sampled clients each add variance sigma^2 S^2 / k: the decrypted sum has exactly
            # the server noise of the analysis, whatever k the Poisson draw gave
            rng = self.randomness.client_noise_share(update.round, update.client_id)
            sigma = self.privacy.noise_multiplier
            if self.noise_share is not None:  # e.g. a discrete Gaussian on a masking grid
                vector = self.noise_share.add(vector, sigma, self.clip_norm, self._sampled, rng)
            else:
                std = sigma * self.clip_norm / math.sqrt(self._sampled)
                vector = vector + gaussian_noise(vector.shape[0], std, rng)
        return Contribution(update.client_id, vector, 1.0, clipped=was_clipped)

    def server_step(
        self, weights: np.ndarray, result: SumResult, round_index: int
    ) -> tuple[np.ndarray, dict]:
        share = self.noise_share
        sensitivity = share.sensitivity(self.clip_norm) if share is not None else self.clip_norm
        std = self.privacy.noise_multiplier * sensitivity
        total = np.asarray(result.vector, dtype=np.float64) if result.count else np.zeros(weights.shape[0])
        # share of the required variance sigma^2 S^2 the server must add itself: all of it without
        # client noise or when nobody was sampled; the missing shares when an encrypted aggregator
        # dropped contributions (the server then saw an under-noised sum: logged, not hidden)
        if self.noise_on_clients and share is not None:
            # a share provisioned for dropouts: the server tops every round up to one variance
            missing = share.missing(self._sampled if result.count else 0, result.count)
        elif not self.noise_on_clients or result.count == 0:
            missing = 1.0
        else:
            missing = max(self._sampled - result.count, 0) / self._sampled
            if missing > 0:
                log.warning(
                    "round %d: %d of %d noise shares missing from the decrypted sum; the server adds them "
                    "so the released model keeps its guarantee, but it saw a sum with less noise",
                    round_index,
                    self._sampled - result.count,
                    self._sampled,
                )
        if missing > 0:
            rng = self.randomness.server_noise(round_index)
            total = total + gaussian_noise(weights.shape[0], std * math.sqrt(missing), rng)
        new = (weights.astype(np.float64) + total / self.expected_clients).astype(np.float32)
        self.privacy.spend_round()
        # the clipped fraction and the missing share depend on who was sampled: the server may
        # know them, the run directory must not (UserLevelPrivacy.withheld drops them)
        stats = {
            "clipped_fraction": result.clipped / result.count if result.count else 0.0,
            "noise_std": std / self.expected_clients,
            "server_noise_share": missing,
        }
        return new, stats


class SkipEmptyRounds:
    """Summation wrapper: a round nobody was sampled for sums to zero without asking the inner one.

    Poisson sampling can pick no client; an encrypted aggregator has nothing to decrypt then.
    """

    def __init__(self, inner: Summation) -> None:
        self.inner = inner
        self._n_params = 0
        self._count = 0

    def __getattr__(self, name: str):
        """The inner summation's own capabilities (e.g. SecAgg+'s use_relay, respond, close)."""
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def begin_round(self, round_index: int, n_params: int) -> RoundKeys:
        self._n_params, self._count = n_params, 0
        return self.inner.begin_round(round_index, n_params)

    def encode(self, update: Update, contribution: ContributionRule, keys: RoundKeys) -> Upload:
        return self.inner.encode(update, contribution, keys)

    def submit(self, upload: Upload, contribution: ContributionRule) -> None:
        self._count += 1
        self.inner.submit(upload, contribution)

    def add(self, contribution: Contribution) -> None:
        """Both sides in one process: add one contribution (see PlainSummation.add)."""
        self._count += 1
        self.inner.add(contribution)

    def finish(self) -> SumResult:
        if self._count == 0:
            return SumResult(np.zeros(self._n_params), 0.0, 0, {})
        return self.inner.finish()

    def state(self) -> dict:
        return self.inner.state()

    def load_state(self, state: dict) -> None:
        self.inner.load_state(state)
