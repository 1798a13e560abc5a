"""privfl: privacy-hardened federated learning for speech emotion recognition."""

__version__ = "0.1.0"
