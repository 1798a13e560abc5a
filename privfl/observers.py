"""Epsilon per observer: who sees what in each DP mode, and which bound holds against each.

A DP guarantee is against an observer with a given view. privfl names four (docs/privacy.md has
the table this module computes):

  released_model   whoever holds the global models (model.pt, each round's weights), nothing else
  run_directory    whoever reads the run directory: config.toml (the seed), metrics, checkpoints,
                   recorded updates
  server           the process that samples clients, receives their reports and sums them
  other_client     a participating client: the global weights it is sent, its task, the models

Subsampling amplifies the bound only against an observer who does not know the sample: a client's
Poisson sample of records (record-level) is secret to everyone but that client; the user-level
client sample is the server's secret, so against the server, and against a client told the
round's count k (user-dp with CKKS), the figure without amplification (q = 1) applies. Noise
seeded from the config seed (`dp.noise = "seeded"`) is no noise to anyone who holds the seed:
config.toml, the server and (Flower sends the config in every TrainTask) every client.
"""

from __future__ import annotations

from dataclasses import dataclass

from privfl.randomness import SEEDED_LABEL

OBSERVERS = ("released_model", "run_directory", "server", "other_client")
OBSERVER_NAMES = {
    "released_model": "released model",
    "run_directory": "run directory",
    "server": "server",
    "other_client": "another client",
}


@dataclass(frozen=True)
class Setting:
    """What decides the observers' views: the noise source, encrypted sums, recorded updates."""

    noise: str = "os"
    encrypted: bool = False
    recorded_updates: bool = False
    masked: bool = False  # the encrypted sum is a SecAgg+ masked sum (no key holder)


def bound(epsilon: float, delta: float, why: str) -> dict:
    return {"epsilon": float(epsilon), "delta": float(delta), "bound": "(eps, delta)-DP", "why": why}


def no_bound(why: str) -> dict:
    return {"epsilon": None, "delta": None, "bound": "none", "why": why}


def _seeded(observers: dict[str, dict]) -> dict[str, dict]:
    """A seeded run: only a holder of the released models alone keeps the accounted bound."""
    holds = {
        "run_directory": "config.toml holds the seed",
        "server": "the server holds the config and its seed",
        "other_client": "every client is sent the config and its seed",
    }
    out = dict(observers)
    for name, where in holds.items():
        out[name] = no_bound(f"dp.noise = seeded: {SEEDED_LABEL} ({where}); the noise can be regenerated")
    return out


def record_level(epsilon: float, delta: float, setting: Setting) -> dict[str, dict]:
    """DP-SGD on every client: the same per-client bound against every observer."""
    secret = "each client's Poisson sample of records and its noise come from its own OS entropy"
    sent = "the sum of the updates" if setting.encrypted else "each client's DP-SGD output"
    observers = {
        "released_model": bound(epsilon, delta, f"sees the global models; {secret}"),
        "run_directory": bound(
            epsilon,
            delta,
            "metrics and recorded updates hold only DP-SGD outputs and accounted figures; " + secret,
        ),
        "server": bound(epsilon, delta, f"sees {sent} and the client's id, nothing else; {secret}"),
        "other_client": bound(epsilon, delta, f"sees the global models it is sent; {secret}"),
    }
    return _seeded(observers) if setting.noise == "seeded" else observers


def user_level(
    amplified: float, unamplified: float, delta: float, sample_rate: float, setting: Setting
) -> dict[str, dict]:
    """DP-FedAvg: amplified at q only against observers who do not know the client sample."""
    q = f"q = {sample_rate:g}"
    secret = f"the client sample ({q}) is the server's secret, drawn from its OS entropy"
    observers = {
        "released_model": bound(amplified, delta, f"sees the global models; {secret}"),
        "run_directory": (
            no_bound("train.record_updates keeps each sampled client's raw update")
            if setting.recorded_updates
            else bound(
                amplified,
                delta,
                "metrics leave out who and how many were sampled; " + secret,
            )
        ),
        "server": (
            bound(
                unamplified,
                delta,
                "knows the sample, so no amplification (q = 1); sees only the unmasked sum of the "
                "survivors, noised by their discrete-Gaussian shares (provisioned for "
                "secure.max_dropout); assumes it follows the protocol and fewer than t of any client's "
                "neighbours collude with it",
            )
            if setting.encrypted and setting.masked
            else bound(
                unamplified,
                delta,
                "knows the sample, so no amplification (q = 1); sees only the decrypted sum, noised by "
                "the clients' shares; assumes the CKKS key holder decrypts nothing but the sum and no "
                "client colludes",
            )
            if setting.encrypted
            else no_bound("sees every clipped update in the clear before it adds the noise")
        ),
        "other_client": (
            bound(
                unamplified,
                delta,
                "is told the round's count k for its noise share, which the subsampling analysis does "
                "not cover, so no amplification (q = 1)",
            )
            if setting.encrypted
            else bound(
                amplified,
                delta,
                "learns only that it was itself sampled (independent of the others under Poisson "
                f"sampling) and the global models; {secret}",
            )
        ),
    }
    return _seeded(observers) if setting.noise == "seeded" else observers


def guarantee(setting: Setting) -> str:
    """The one-line label of a run: what kind of guarantee its numbers are."""
    return SEEDED_LABEL if setting.noise == "seeded" else "(eps, delta)-DP"


def describe(observers: dict[str, dict]) -> str:
    """One line: each observer's bound, e.g. 'released model eps 3.1 | server none (...)'."""
    parts = []
    for name in OBSERVERS:
        o = observers[name]
        label = OBSERVER_NAMES[name]
        parts.append(f"{label} eps {o['epsilon']:.3g}" if o["epsilon"] is not None else f"{label} none")
    return " | ".join(parts)
