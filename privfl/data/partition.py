"""Training utterances -> client shards.

Each function takes per-sample arrays and a numpy Generator and returns one sorted index array
per client; every sample lands in exactly one client.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from privfl.errors import DataError


def iid_balanced(labels: np.ndarray, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The paper's split: each class's samples dealt evenly across the K clients."""
    labels = np.asarray(labels)
    if n_clients > len(labels):
        raise DataError(f"{n_clients} clients but only {len(labels)} training samples; use fewer clients")
    shards: list[list[int]] = [[] for _ in range(n_clients)]
    offset = 0
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        for j, i in enumerate(idx):
            # rotate the starting client per class so remainders don't pile up on client 0
            shards[(offset + j) % n_clients].append(int(i))
        offset += len(idx)
    return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]


def by_speaker(
    speakers: Sequence[str],
    n_clients: int,
    rng: np.random.Generator,
    genders: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Each client holds whole speakers; with genders given, clients are single-gender where possible.

    Speakers are shuffled, then (if genders are known) ordered by gender, and dealt in contiguous
    runs of near-equal count, so a client mixes genders only when the counts force it.
    """
    speakers = np.asarray(speakers)
    unique = np.array(sorted(set(speakers.tolist())))
    if n_clients > len(unique):
        raise DataError(
            f"by-speaker partition needs at least one speaker per client: {n_clients} clients but "
            f"{len(unique)} training speakers; use --clients {len(unique)} or fewer, or another partition"
        )
    order = rng.permutation(len(unique))
    unique = unique[order]
    if genders is not None:
        g_of = dict(zip(np.asarray(speakers).tolist(), genders, strict=True))
        unique = np.array(sorted(unique.tolist(), key=lambda s: g_of[s]))  # stable: keeps shuffle
    groups = np.array_split(np.arange(len(unique)), n_clients)
    return [np.flatnonzero(np.isin(speakers, unique[g])) for g in groups]


def dirichlet(
    labels: np.ndarray,
    n_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 2,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label skew: each class split across clients by proportions drawn from Dir(alpha).

    Redraws (up to max_tries) until every client has at least min_size samples.
    """
    labels = np.asarray(labels)
    if n_clients * min_size > len(labels):
        raise DataError(
            f"{n_clients} clients x {min_size} samples exceeds the {len(labels)} training samples"
        )
    for _ in range(max_tries):
        shards: list[list[int]] = [[] for _ in range(n_clients)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            p = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for k, part in enumerate(np.split(idx, cuts)):
                shards[k].extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]
    raise DataError(
        f"Dirichlet partition with alpha={alpha} left a client with fewer than {min_size} samples "
        f"after {max_tries} draws; raise --dirichlet-alpha or use fewer clients"
    )


def partition(
    name: str,
    labels: np.ndarray,
    speakers: Sequence[str],
    genders: Sequence[str],
    n_clients: int,
    rng: np.random.Generator,
    alpha: float = 0.5,
) -> list[np.ndarray]:
    """Dispatch on the partition name used in the config ("iid", "by-speaker", "dirichlet")."""
    if name == "iid":
        return iid_balanced(labels, n_clients, rng)
    if name == "by-speaker":
        return by_speaker(speakers, n_clients, rng, genders)
    if name == "dirichlet":
        return dirichlet(labels, n_clients, alpha, rng)
    raise DataError(f"unknown partition {name!r}; use iid, by-speaker or dirichlet")
