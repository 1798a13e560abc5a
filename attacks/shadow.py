"""Shadow clients: the attacker's own clients, trained from an observed w_t exactly as real clients train.

The attacker knows the training recipe (E, B, eta, momentum and, where public, the DP settings:
Kerckhoffs) because the server sets it. A shadow client holds a few utterances of one auxiliary
speaker, so its update carries a known label (that speaker's gender).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from privfl.config import ExperimentConfig
from privfl.data.dataset import ClientData, PreparedData, SpeechSet
from privfl.errors import AttackError
from privfl.fl.client import LocalConfig, LocalTrainer
from privfl.parallel import PerThread, thread_map

SHADOW_ID_BASE = 1_000_000
"""Shadow clients get ids far above real ones, so their per-client seeds never equal a real client's."""

Progress = Callable[[int, int], None]


def client_trainer(
    cfg: ExperimentConfig, data: PreparedData, clients: list[ClientData], privacy: dict | None = None
):
    """A trainer for `clients` that trains exactly as the run's real clients did.

    Plain local SGD for fedavg and user-dp (user-level DP clips and noises after local training).
    Record-level DP (mode dp) runs DP-SGD on the client, so shadow clients get the run's DP-SGD
    trainer, built for their own data sizes with the run's sigma and delta (read from summary.json's
    "privacy"; the DP settings are public) rather than a sigma re-solved for other clients.
    """
    t = cfg.train
    if t.mode == "dp":
        from privfl.fl.components import build_components

        overrides: dict = {"secure.scheme": "none"}  # encryption changes nothing a client computes
        if privacy and privacy.get("sigma") is not None:
            overrides.update({"dp.noise_multiplier": float(privacy["sigma"]), "dp.target_epsilon": None})
        if privacy and privacy.get("delta") is not None:
            overrides["dp.delta"] = float(privacy["delta"])
        shadow_data = dataclasses.replace(data, clients=list(clients))
        return build_components(cfg.override(overrides), shadow_data).trainer
    # every local setting of the run (E, B, eta, momentum, class weights, learning-rate schedule)
    return LocalTrainer(cfg.model, data.n_mels, LocalConfig.of(t), cfg.seed)


@dataclass(frozen=True)
class ShadowClient:
    """Which auxiliary utterances a shadow client holds, and the label the attacker attaches to it."""

    indices: np.ndarray
    speaker: str
    gender: str


def known_gender_speakers(aux: SpeechSet) -> dict[str, list[str]]:
    """Auxiliary speakers grouped by gender, unknown gender left out."""
    out: dict[str, list[str]] = {"female": [], "male": []}
    for s, g in sorted(set(zip(aux.speakers, aux.genders, strict=True))):
        if g in out:
            out[g].append(s)
    return out


def check_auxiliary(aux: SpeechSet, minimum_per_gender: int = 1) -> None:
    """Shadow training needs auxiliary speakers of both genders; AttackError says what to change."""
    by_gender = known_gender_speakers(aux)
    if len(aux) == 0:
        raise AttackError(
            "the run has no auxiliary speakers (data.aux_speakers = 0), so the attacker has no labelled "
            "data for shadow clients; retrain with --set data.aux_speakers=4"
        )
    short = [g for g, s in by_gender.items() if len(s) < minimum_per_gender]
    if short:
        counts = ", ".join(f"{len(s)} {g}" for g, s in by_gender.items())
        unknown = sum(1 for g in set(zip(aux.speakers, aux.genders, strict=True)) if g[1] not in by_gender)
        raise AttackError(
            f"shadow training needs auxiliary speakers of both genders, the run's aux split has {counts}"
            + (f" and {unknown} of unknown gender" if unknown else "")
            + "; retrain with more auxiliary speakers (e.g. --set data.aux_speakers=4) on a corpus with "
            "gender labels"
        )


def sample_shadow_clients(
    aux: SpeechSet, n_clients: int, size: int, rng: np.random.Generator
) -> list[ShadowClient]:
    """n_clients shadow clients, genders alternating, speakers taken in turn within a gender.

    Each holds `size` utterances of one speaker drawn without replacement (at most all of them),
    so shadow clients of one speaker differ in their utterances, not only in their shuffling.
    """
    by_gender = known_gender_speakers(aux)
    speakers_arr = np.asarray(aux.speakers)
    order = {g: [s[i] for i in rng.permutation(len(s))] for g, s in by_gender.items()}
    out = []
    for i in range(n_clients):
        gender = ("female", "male")[i % 2]
        pool = order[gender]
        speaker = pool[(i // 2) % len(pool)]
        own = np.flatnonzero(speakers_arr == speaker)
        pick = rng.choice(own, size=min(size, len(own)), replace=False)
        out.append(ShadowClient(np.sort(pick), speaker, gender))
    return out


def shadow_client_data(aux: SpeechSet, shadows: list[ShadowClient]) -> list[ClientData]:
    """The shadow clients as ClientData, with ids from SHADOW_ID_BASE (never a real client's id)."""
    out = []
    for i, sh in enumerate(shadows):
        part = aux.take(sh.indices)
        out.append(ClientData(SHADOW_ID_BASE + i, part.x, part.lengths, part.y, (sh.speaker,), (sh.gender,)))
    return out


def local_updates(
    trainer,
    clients: list[ClientData],
    weights: np.ndarray,
    round_index: int,
    progress: Progress | None = None,
) -> np.ndarray:
    """Train every client from w_t with `trainer`; returns the deltas float32 [n, P].

    Plain local SGD trains the clients in parallel, one per core, each worker on its own copy of the
    trainer (torch single-threaded there; each client's shuffling comes from its own seed, so its
    delta is the same whichever worker trains it). DP-SGD trainers parallelise within a batch
    instead, so their clients train one after another.
    """
    out = np.empty((len(clients), weights.shape[0]), dtype=np.float32)
    if isinstance(trainer, LocalTrainer) and trainer.canaries is None:
        replicas = PerThread(lambda: copy.deepcopy(trainer))

        def one(i: int) -> np.ndarray:
            return replicas.get().train(clients[i], weights, round_index).delta

        for i, delta in enumerate(thread_map(one, len(clients), progress)):
            out[i] = delta
        return out
    for i, client in enumerate(clients):
        out[i] = trainer.train(client, weights, round_index).delta
        if progress is not None:
            progress(i + 1, len(clients))
    return out


def shadow_federation(
    cfg: ExperimentConfig,
    data: PreparedData,
    utterances: SpeechSet,
    seed: int,
    privacy: dict | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Replay the run's FedAvg recipe on other data (a LiRA shadow model); returns the final weights [P].

    Same model, w0, rounds, clients, fraction, partition and local training as the run; the
    shuffling seed differs. Client selection follows McMahan et al.'s rule (m = max(round(C K), 1)
    without replacement) with the attacker's own generator.
    """
    from privfl.data.partition import partition
    from privfl.models import initial_weights

    t = cfg.train
    rng = np.random.default_rng([seed, 0x5ADE])
    n_clients = (
        min(t.clients, len(set(utterances.speakers))) if cfg.data.partition == "by-speaker" else t.clients
    )
    shards = partition(
        cfg.data.partition,
        utterances.y.numpy(),
        utterances.speakers,
        utterances.genders,
        n_clients,
        rng,
        alpha=cfg.data.dirichlet_alpha,
    )
    clients = []
    for cid, idx in enumerate(shards):
        part = utterances.take(idx)
        clients.append(ClientData(cid, part.x, part.lengths, part.y))
    trainer = client_trainer(cfg.override({"seed": seed}), data, clients, privacy)
    weights = initial_weights(cfg.model, data.n_mels, cfg.seed)
    m = n_clients if t.fraction >= 1.0 else max(int(round(t.fraction * n_clients)), 1)
    for r in range(1, t.rounds + 1):
        chosen = sorted(rng.choice(n_clients, size=m, replace=False).tolist())
        active = [clients[cid] for cid in chosen if clients[cid].num_samples]
        total = np.zeros_like(weights, dtype=np.float64)
        n_sum = 0
        for client, delta in zip(active, local_updates(trainer, active, weights, r), strict=True):
            total += client.num_samples * delta.astype(np.float64)
            n_sum += client.num_samples
        if n_sum:
            weights = (weights + total / n_sum).astype(np.float32)
        if progress is not None:
            progress(r, t.rounds)
    return weights


SPEED_MARK = "@speed"
"""Speaker ids of speed-perturbed auxiliary speech read `<speaker>@speed<factor>`: a voice of its own."""


def auxiliary_speech(data: PreparedData, cfg: ExperimentConfig, speeds: tuple[float, ...]) -> SpeechSet:
    """The auxiliary speakers' utterances at every speed factor, each (speaker, factor) a voice of its own.

    Speed perturbation by f scales pitch and formants by f, as another speaker of that gender
    would (0.9-1.1 stays well inside one gender: the female/male gap is about an octave in F0 and
    15-20 % in formants). Features are normalised as the run's config says; for "global"
    normalisation the training set's statistics are used, which the server that distributes the
    normaliser holds. Factor 1.0 is `data.aux` itself.
    """
    from privfl.data.dataset import featurise
    from privfl.data.features import apply_band_stats, band_stats, normalise_groups

    parts = [data.aux]
    others = [f for f in speeds if f != 1.0]
    if not others:
        return data.aux
    roles = data.split.roles()
    utts = sorted((u for u in data.corpus.utterances if roles.get(u.speaker) == "aux"), key=lambda u: u.id)
    mode = cfg.data.normalize
    for f in others:
        s = featurise(utts, cfg.data, speed=f)
        x, lengths = s.x.numpy(), s.lengths.numpy()
        if mode == "speaker":
            s = dataclasses.replace(s, x=torch_from(normalise_groups(x, lengths, s.speakers)))
        elif mode == "global":
            stats = band_stats(data.train.x.numpy(), data.train.lengths.numpy())
            s = dataclasses.replace(s, x=torch_from(apply_band_stats(x, lengths, stats)))
        parts.append(dataclasses.replace(s, speakers=tuple(f"{sp}{SPEED_MARK}{f:g}" for sp in s.speakers)))
    return SpeechSet.concat(parts)


def torch_from(x: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x))
