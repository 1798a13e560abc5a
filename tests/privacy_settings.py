"""The accountant settings the privacy tests start from; each test overrides what it is about."""

from __future__ import annotations

from privfl.privacy import RecordLevelPrivacy, UserLevelPrivacy


def record_level(**overrides) -> RecordLevelPrivacy:
    """Two clients (q_k 0.25 and 0.1, 4 and 10 steps a round), 3 rounds, sigma 1.1, C 1, delta 1e-3."""
    kwargs = dict(
        noise_multiplier=1.1,
        target_epsilon=None,
        max_grad_norm=1.0,
        delta=1e-3,
        accountant="rdp",
        sample_rates={0: 0.25, 1: 0.1},
        steps_per_round={0: 4, 1: 10},
        rounds=3,
    )
    kwargs.update(overrides)
    return RecordLevelPrivacy(**kwargs)


def user_level(**overrides) -> UserLevelPrivacy:
    """q 0.3, 5 rounds, sigma 1, S 0.5, delta 1e-2."""
    kwargs = dict(
        noise_multiplier=1.0,
        target_epsilon=None,
        clip_norm=0.5,
        delta=1e-2,
        accountant="rdp",
        sample_rate=0.3,
        rounds=5,
    )
    kwargs.update(overrides)
    return UserLevelPrivacy(**kwargs)
