"""The run directory: config, per-round metrics, checkpoints, recorded updates, summary, model.

Layout of runs/<name>/:
  config.toml       the resolved ExperimentConfig (enough to rerun)
  skipped.csv       files and label lines the corpus loader could not use, and why (header only if none)
  metrics.jsonl     one JSON line per round
  checkpoint.pt     latest global weights + loop state (written to a temp file, then renamed)
  updates/          with record_updates: round_0001.npz ... (each client's update, float16 + scale)
  summary.json      written last: its presence marks a finished run
  model.pt          final global model state dict
  curves.png        UAR over rounds
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privfl.config import ExperimentConfig
from privfl.errors import RunError

FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, then rename over `path` (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


class RunDir:
    """A run directory; create() for a new run, open() for resume and for attacks."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # --- lifecycle ----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, config: ExperimentConfig, overwrite: bool = False) -> RunDir:
        """Make a new run directory; refuses an existing one unless overwrite."""
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise RunError(
                    f"run directory {path} already exists; pass --resume {path} to continue it, "
                    "--overwrite to replace it, or --out with a new name"
                )
            if not (path / "config.toml").exists():
                raise RunError(
                    f"{path} is not a privfl run directory (no config.toml); refusing to overwrite it, "
                    "choose another --out"
                )
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        config.to_toml(path / "config.toml")
        atomic_write_json(path / "run.json", {"privfl_format": FORMAT_VERSION})
        return run

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An existing run directory (for resume or attacks); checks it is privfl's."""
        path = Path(path)
        if not (path / "config.toml").is_file():
            raise RunError(f"{path} is not a privfl run directory (no config.toml); check the path")
        run = cls(path)
        fmt = run.format_version()
        if fmt != FORMAT_VERSION:
            raise RunError(
                f"{path} was written by a privfl with run format {fmt}, this privfl reads format "
                f"{FORMAT_VERSION}; rerun the training with this version"
            )
        return run

    def format_version(self) -> int | None:
        meta = self.path / "run.json"
        return json.loads(meta.read_text()).get("privfl_format") if meta.exists() else None

    def config(self) -> ExperimentConfig:
        return ExperimentConfig.from_toml(self.path / "config.toml")

    @property
    def finished(self) -> bool:
        return (self.path / "summary.json").exists()

    # --- metrics ------------------------------------------------------------------------------
    def append_metrics(self, row: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, last_round: int) -> None:
        """Drop metric lines after `last_round` (written after the checkpoint a resume starts from)."""
        rows = [r for r in self.metrics() if r["round"] <= last_round]
        atomic_write_bytes(
            self.path / "metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
        )

    # --- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, round_index: int, weights: np.ndarray, state: dict) -> None:
        """Global weights after `round_index` and whatever loop state resume needs."""
        import io

        buf = io.BytesIO()
        torch.save({"round": round_index, "weights": torch.from_numpy(weights.copy()), "state": state}, buf)
        atomic_write_bytes(self.path / "checkpoint.pt", buf.getvalue())

    def load_checkpoint(self) -> dict | None:
        path = self.path / "checkpoint.pt"
        if not path.exists():
            return None
        ckpt = torch.load(path, weights_only=False)
        ckpt["weights"] = ckpt["weights"].numpy()
        return ckpt

    # --- recorded updates ---------------------------------------------------------------------
    def record_updates(
        self, round_index: int, weights_before: np.ndarray, updates: Sequence, clients
    ) -> None:
        """Save each client's update of this round compactly: float16 of delta/scale, plus scale.

        Also stores the global weights the round started from (w_t), which an attacker observes.
        """
        folder = self.path / "updates"
        folder.mkdir(exist_ok=True)
        scales = np.array([max(float(np.abs(u.delta).max()), 1e-30) for u in updates], dtype=np.float32)
        deltas = (
            np.stack([(u.delta / s).astype(np.float16) for u, s in zip(updates, scales, strict=True)])
            if updates
            else (np.zeros((0, weights_before.shape[0]), dtype=np.float16))
        )
        ids = np.array([u.client_id for u in updates], dtype=np.int64)
        tmp = folder / f".round_{round_index:04d}.{os.getpid()}.tmp.npz"
        np.savez_compressed(
            tmp,
            round=round_index,
            weights=weights_before.astype(np.float32),
            client_ids=ids,
            num_samples=np.array([u.num_samples for u in updates], dtype=np.int64),
            scales=scales,
            deltas=deltas,
            speakers=np.array(["|".join(clients[i].speakers) for i in ids], dtype=str),
            genders=np.array(["|".join(clients[i].genders) for i in ids], dtype=str),
        )
        tmp.replace(folder / f"round_{round_index:04d}.npz")

    def recorded_rounds(self) -> list[int]:
        folder = self.path / "updates"
        if not folder.is_dir():
            return []
        return sorted(int(p.stem.split("_")[1]) for p in folder.glob("round_*.npz"))

    def load_updates(self, round_index: int) -> dict[str, np.ndarray]:
        """One recorded round: weights [P], client_ids [k], num_samples [k], deltas float32 [k, P], ..."""
        path = self.path / "updates" / f"round_{round_index:04d}.npz"
        if not path.exists():
            raise RunError(
                f"{self.path} has no recorded updates for round {round_index}; train with --record-updates"
            )
        with np.load(path) as z:
            out = {k: z[k] for k in z.files}
        out["deltas"] = out["deltas"].astype(np.float32) * out["scales"][:, None]
        return out

    # --- data -------------------------------------------------------------------------------
    def write_skipped(self, skipped: Sequence) -> None:
        """skipped.csv: one row (path, reason) per file or label line the loader left out."""
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", "reason"])
        writer.writerows([s.path, s.reason] for s in skipped)
        atomic_write_bytes(self.path / "skipped.csv", buf.getvalue().encode("utf-8"))

    # --- outputs ------------------------------------------------------------------------------
    def save_model(self, state_dict: dict) -> None:
        import io

        buf = io.BytesIO()
        torch.save(state_dict, buf)
        atomic_write_bytes(self.path / "model.pt", buf.getvalue())

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.path / "summary.json", summary)

    def summary(self) -> dict:
        path = self.path / "summary.json"
        if not path.exists():
            raise RunError(
                f"{self.path} has not finished (no summary.json); resume it with --resume {self.path}"
            )
        return json.loads(path.read_text())
