"""Scoring flat global weights on a held-out set: UAR, accuracy, loss, confusion."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from privfl.config import ExperimentConfig
from privfl.data.dataset import SpeechSet
from privfl.metrics import accuracy, confusion, uar
from privfl.models import build_model, set_flat


class Evaluator:
    """Scores flat global weights on a SpeechSet: UAR, accuracy, loss, confusion."""

    def __init__(self, cfg: ExperimentConfig, n_mels: int, batch_size: int = 256) -> None:
        self.model = build_model(cfg.model, n_mels)
        self.batch_size = batch_size

    def predict(self, weights: np.ndarray, data: SpeechSet) -> tuple[np.ndarray, np.ndarray]:
        """(logits [n, classes], per-sample cross-entropy [n]) under the given weights."""
        set_flat(self.model, weights)
        self.model.eval()
        logits = []
        with torch.inference_mode():
            for s in range(0, len(data), self.batch_size):
                logits.append(
                    self.model(data.x[s : s + self.batch_size], data.lengths[s : s + self.batch_size])
                )
        out = torch.cat(logits) if logits else torch.zeros(0, 4)
        losses = nn.functional.cross_entropy(out, data.y, reduction="none")
        return out.numpy(), losses.numpy()

    def scores(self, weights: np.ndarray, data: SpeechSet) -> dict:
        logits, losses = self.predict(weights, data)
        y, pred = data.y.numpy(), logits.argmax(axis=1)
        return {
            "uar": uar(y, pred, logits.shape[1]),
            "acc": accuracy(y, pred),
            "loss": float(losses.mean()),
            "confusion": confusion(y, pred, logits.shape[1]).tolist(),
        }
