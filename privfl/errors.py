"""Errors privfl raises for bad input; the CLI prints one line and exits with code 2."""

from __future__ import annotations


class PrivflError(Exception):
    """Base class: the message names the bad value, what was expected, and the fix."""


class ConfigError(PrivflError):
    """A configuration value or combination is invalid."""


class DataError(PrivflError):
    """A corpus, feature cache or partition cannot be built from what was given."""


class CryptoError(PrivflError):
    """Encrypted aggregation received or was configured with something unusable."""


class RunError(PrivflError):
    """A run directory is missing, incomplete, or would be overwritten."""


class PrivacyError(PrivflError):
    """A differential-privacy setting cannot give the guarantee asked for."""


class AttackError(PrivflError):
    """An attack cannot run on the given run directory or corpus."""


class EngineError(PrivflError):
    """A federation engine could not complete a round (a client failed, timed out or is missing)."""
