"""Where each party's privacy randomness comes from (`dp.noise`).

Privacy randomness is everything a DP analysis assumes nobody else can predict: DP-SGD's Poisson
sample of records and its Gaussian noise (each client), user-dp noise shares (each client), the
server's user-dp noise and its client sample. With `dp.noise = "os"` (the default) every such
generator is seeded from the operating system's entropy (`secrets`, i.e. os.urandom) by the party
that uses it, where it runs, fresh for every round: the seed is never derived from the config,
never written to the run directory and never sent. With `dp.noise = "seeded"` the generators are
derived from the config seed exactly as privfl 0.x did, so a rerun is bit-identical; the config
seed is in config.toml and in every Flower TrainTask, so such a run carries no DP guarantee against
anyone who holds the seed (`SEEDED_LABEL`).

The experiment seed always fixes what is not privacy randomness: data order within plain local
training, model initialisation, partitions, splits, non-private client selection.

What OS seeding does not fix: torch's CPU generator is a Mersenne Twister and NumPy's is PCG64,
neither a cryptographic generator, and Gaussian samples in floating point are not exactly Gaussian
(Mironov 2012; Jin et al. 2021 on DP-SGD). See docs/privacy.md, "What DP does not protect".
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import torch

from privfl.config import NOISE_SOURCES
from privfl.errors import ConfigError

SEEDED_LABEL = "no DP guarantee against anyone who holds the seed"

# seeded streams, as privfl derived them before dp.noise existed (tests regenerate them from these)
DPSGD_NOISE_STREAM = 1  # derive_seed(derive_seed(seed, round, client), 1) seeds DP-SGD noise
USER_SAMPLE_TAG = 0x05A3D  # user-dp client sample: default_rng([seed, round, tag])
USER_SERVER_NOISE_TAG = 0x0DF5  # user-dp server noise: default_rng([seed, round, tag])
USER_CLIENT_NOISE_TAG = 0x0DFC  # user-dp noise share: default_rng([seed, round, client, tag])
CLIENT_SAMPLE_TAG = 0x5A3  # fixed-size client selection: default_rng([seed, round, tag])


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts, e.g. (seed, round, client); stable across runs."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def _os_torch() -> torch.Generator:
    return torch.Generator().manual_seed(secrets.randbits(64))


def _os_numpy() -> np.random.Generator:
    return np.random.default_rng(secrets.randbits(128))


@dataclass(frozen=True)
class PrivacyRandomness:
    """The generators of one run's privacy randomness; each method is called by the party it names.

    source: "os" or "seeded"; seed: the config seed, read only when source is "seeded".
    """

    source: str
    seed: int

    def __post_init__(self) -> None:
        if self.source not in NOISE_SOURCES:
            raise ConfigError(f"dp.noise {self.source!r} is not one of {', '.join(NOISE_SOURCES)}")

    @property
    def seeded(self) -> bool:
        return self.source == "seeded"

    def client_dpsgd(self, round_index: int, client_id: int) -> tuple[torch.Generator, torch.Generator]:
        """(record sampling, Gaussian noise) generators for one client's DP-SGD in one round."""
        if not self.seeded:
            return _os_torch(), _os_torch()
        base = derive_seed(self.seed, round_index, client_id)
        return (
            torch.Generator().manual_seed(base),
            torch.Generator().manual_seed(derive_seed(base, DPSGD_NOISE_STREAM)),
        )

    def client_noise_share(self, round_index: int, client_id: int) -> np.random.Generator:
        """A user-dp client's noise share under encrypted aggregation."""
        if not self.seeded:
            return _os_numpy()
        return np.random.default_rng([self.seed, round_index, client_id, USER_CLIENT_NOISE_TAG])

    def server_noise(self, round_index: int) -> np.random.Generator:
        """The server's user-dp noise (all of it in plaintext runs, dropped shares under CKKS)."""
        if not self.seeded:
            return _os_numpy()
        return np.random.default_rng([self.seed, round_index, USER_SERVER_NOISE_TAG])

    def server_sample(self, round_index: int, tag: int) -> np.random.Generator:
        """The server's client sample; the clients never learn who else was sampled."""
        if not self.seeded:
            return _os_numpy()
        return np.random.default_rng([self.seed, round_index, tag])
