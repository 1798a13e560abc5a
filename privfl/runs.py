"""The run directory: config, per-round metrics, checkpoints, recorded updates, summary, model.

Layout of runs/<name>/:
  config.toml       the resolved ExperimentConfig (enough to rerun)
  skipped.csv       files and label lines the corpus loader could not use, and why (header only if none)
  metrics.jsonl     one JSON line per round
  checkpoint.json   last checkpoint: its round, loop/privacy/summation state, and the weights file's SHA-256
  checkpoint-NNNN.pt  the global weights after round NNNN (tensors only), written before checkpoint.json
  updates/          with record_updates: round_0001.npz ... (each client's update, float16 + scale)
  summary.json      written last: its presence marks a finished run
  model.pt          final global model state dict (torch.load(..., weights_only=True) reads it)
  curves.png        UAR over rounds

Everything is read back as data only (JSON, TOML, CSV, tensors with weights_only=True, .npz
without pickle) and checked against what privfl writes, because run directories are shared:
opening one must never run code from it. Run format 1 (earlier privfl) pickled checkpoint.pt;
such runs are refused, not unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privfl import npz
from privfl.config import ExperimentConfig
from privfl.errors import RunError

FORMAT_VERSION = 2
"""2: checkpoint.json + checkpoint-NNNN.pt (no pickle). 1: a pickled checkpoint.pt (refused)."""
CHECKPOINT_META = "checkpoint.json"
WEIGHT_DTYPES = ("float32", "float64")
UPDATES_SPEC: npz.Spec = {
    "round": ("int64", ()),
    "weights": ("float32", ("P",)),
    "client_ids": ("int64", ("k",)),
    "num_samples": ("int64", ("k",)),
    "scales": ("float32", ("k",)),
    "deltas": ("float16", ("k", "P")),
    "speakers": ("str", ("k",)),
    "genders": ("str", ("k",)),
}
"""updates/round_NNNN.npz as record_updates writes it (k clients, P parameters)."""
_ROUND_FILE = re.compile(r"round_\d{4,}\.npz")
_CHECKPOINT_KEYS = {"privfl_format", "round", "n_params", "dtype", "weights_sha256", "state"}


def checkpoint_weights_name(round_index: int) -> str:
    return f"checkpoint-{round_index:04d}.pt"


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
        if fmt == 1 or (fmt is None and (path / "checkpoint.pt").exists()):
            raise RunError(_legacy_message(path / "checkpoint.pt", path))
        if fmt != FORMAT_VERSION:
            raise RunError(
                f"{path} was written by a privfl with run format {fmt}, this privfl reads format "
                f"{FORMAT_VERSION}; rerun the training with this version ({_retrain(path)})"
            )
        return run

    def format_version(self) -> int | None:
        meta = self.path / "run.json"
        if not meta.exists():
            return None
        raw = read_json(meta, f'it should hold {{"privfl_format": {FORMAT_VERSION}}}')
        return raw.get("privfl_format") if isinstance(raw, dict) else None

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
        """Global weights after `round_index` (checkpoint-NNNN.pt) and loop state (checkpoint.json).

        The weights file is written first under a name of its own; checkpoint.json, written last
        and renamed into place, names its round and SHA-256, so a crash between the two leaves
        the previous checkpoint whole. Older weights files are removed after.
        """
        weights = np.array(weights, copy=True)  # the caller keeps training with its array
        if weights.ndim != 1 or weights.dtype.name not in WEIGHT_DTYPES:
            raise RunError(
                f"checkpoint weights must be a flat {' or '.join(WEIGHT_DTYPES)} vector, got "
                f"{weights.dtype} {weights.shape}"
            )
        buf = io.BytesIO()
        torch.save({"round": int(round_index), "weights": torch.from_numpy(weights)}, buf)
        data = buf.getvalue()
        meta = {
            "privfl_format": FORMAT_VERSION,
            "round": int(round_index),
            "n_params": int(weights.shape[0]),
            "dtype": weights.dtype.name,
            "weights_sha256": hashlib.sha256(data).hexdigest(),
            "state": state,
        }
        # serialised before anything is written: a state that is not plain JSON data fails here
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        name = checkpoint_weights_name(round_index)
        atomic_write_bytes(self.path / name, data)
        atomic_write_bytes(self.path / CHECKPOINT_META, text.encode())
        for old in self.path.glob("checkpoint-*.pt"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def load_checkpoint(self, n_params: int | None = None) -> dict | None:
        """{"round", "weights" [P], "state"} of the last checkpoint, or None before the first one.

        Read as data only (JSON, and tensors with weights_only=True) and checked against what
        save_checkpoint writes; RunError naming the file and what is wrong otherwise. With
        n_params, the weights must have that many values (the model of the run's config).
        """
        meta_path = self.path / CHECKPOINT_META
        if not meta_path.exists():
            legacy = self.path / "checkpoint.pt"
            if legacy.exists():
                raise RunError(_legacy_message(legacy, self.path))
            return None  # stopped before its first checkpoint (an orphan weights file is ignored)
        fix = f"the run directory was changed after privfl wrote it; retrain it ({_retrain(self.path)})"
        meta = read_json(meta_path, fix)
        _check_checkpoint_meta(meta_path, meta, fix)
        round_index = meta["round"]
        wpath = self.path / checkpoint_weights_name(round_index)
        if not wpath.is_file():
            raise RunError(f"{meta_path} is for round {round_index}, but {wpath.name} is missing; {fix}")
        data = wpath.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["weights_sha256"]:
            raise RunError(f"{wpath} does not match the SHA-256 recorded in {meta_path}; {fix}")
        try:
            ckpt = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunError(f"{wpath} is not a tensor file privfl wrote ({first}); {fix}") from None
        if not isinstance(ckpt, dict) or set(ckpt) != {"round", "weights"}:
            got = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
            raise RunError(f"{wpath} holds {got}, expected the keys ['round', 'weights']; {fix}")
        w = ckpt["weights"]
        if type(ckpt["round"]) is not int or ckpt["round"] != round_index:
            raise RunError(
                f"{wpath} is for round {ckpt['round']!r}, {meta_path} for round {round_index}; {fix}"
            )
        want = (meta["n_params"],)
        if (
            not isinstance(w, torch.Tensor)
            or w.layout != torch.strided
            or tuple(w.shape) != want
            or (str(w.dtype).removeprefix("torch.") != meta["dtype"])
        ):
            got = f"{w.dtype} {tuple(w.shape)}" if isinstance(w, torch.Tensor) else type(w).__name__
            raise RunError(f"{wpath}: weights are {got}, expected {meta['dtype']} {want}; {fix}")
        if n_params is not None and meta["n_params"] != n_params:
            raise RunError(
                f"{wpath} holds {meta['n_params']} weights, the model of {self.path / 'config.toml'} has "
                f"{n_params}; {fix}"
            )
        return {"round": round_index, "weights": w.numpy(), "state": meta["state"]}

    def verify(self, n_params: int | None = None) -> dict | None:
        """Check every file a resume or an attack reads back (checkpoint, recorded updates) before
        anything starts; RunError naming the first file that is not what privfl wrote. Returns
        the checkpoint (as load_checkpoint)."""
        ckpt = self.load_checkpoint(n_params)
        sizes = {} if ckpt is None else {"P": int(ckpt["weights"].shape[0])}
        for r in self.recorded_rounds():
            bound = npz.headers(self._updates_path(r), UPDATES_SPEC, RunError, self._updates_fix(), sizes)
            sizes = {"P": bound["P"]}  # every round and the checkpoint hold the same model
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
            # the partition's sizes (they follow from config.toml); DP clients do not report them
            num_samples=np.array([clients[u.client_id].num_samples for u in updates], dtype=np.int64),
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
        return sorted(
            int(p.stem[len("round_") :]) for p in folder.glob("round_*.npz") if _ROUND_FILE.fullmatch(p.name)
        )

    def load_updates(self, round_index: int) -> dict[str, np.ndarray]:
        """One recorded round: weights [P], client_ids [k], num_samples [k], deltas float32 [k, P], ...

        Read without pickle and checked against what record_updates writes (RunError otherwise).
        """
        path = self._updates_path(round_index)
        if not path.exists():
            raise RunError(
                f"{self.path} has no recorded updates for round {round_index}; train with --record-updates"
            )
        out, _ = npz.read_npz(path, UPDATES_SPEC, RunError, self._updates_fix())
        if int(out["round"]) != round_index:
            raise RunError(
                f"{path} holds round {int(out['round'])}, not {round_index}; {self._updates_fix()}"
            )
        out["deltas"] = out["deltas"].astype(np.float32) * out["scales"][:, None]
        return out

    def _updates_path(self, round_index: int) -> Path:
        return self.path / "updates" / f"round_{round_index:04d}.npz"

    def _updates_fix(self) -> str:
        return f"the run directory was changed after privfl wrote it; retrain it ({_retrain(self.path)})"

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


def read_json(path: Path, fix: str) -> Any:
    """The JSON value in `path`; RunError naming the file and `fix` if it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path} is not JSON ({exc}); {fix}") from None


def _check_checkpoint_meta(path: Path, meta: Any, fix: str) -> None:
    """RunError unless `meta` is a checkpoint.json this privfl writes."""
    if not isinstance(meta, dict) or set(meta) != _CHECKPOINT_KEYS:
        got = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise RunError(f"{path} holds {got}, expected the keys {sorted(_CHECKPOINT_KEYS)}; {fix}")
    if meta["privfl_format"] != FORMAT_VERSION:
        raise RunError(
            f"{path} has checkpoint format {meta['privfl_format']!r}, this privfl reads "
            f"{FORMAT_VERSION}; {fix}"
        )
    for key in ("round", "n_params"):
        if type(meta[key]) is not int or meta[key] < 1:
            raise RunError(f"{path}: {key} is {meta[key]!r}, expected a positive integer; {fix}")
    if meta["dtype"] not in WEIGHT_DTYPES:
        raise RunError(
            f"{path}: dtype is {meta['dtype']!r}, expected one of {', '.join(WEIGHT_DTYPES)}; {fix}"
        )
    digest = meta["weights_sha256"]
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise RunError(f"{path}: weights_sha256 is {digest!r}, expected 64 hex digits; {fix}")
    state = meta["state"]
    if not isinstance(state, dict) or not isinstance(state.get("loop"), dict):
        raise RunError(f'{path}: state must be an object with a "loop" object; {fix}')
    for key in ("summation", "privacy"):
        if key in state and not isinstance(state[key], dict):
            raise RunError(f"{path}: state.{key} is {type(state[key]).__name__}, expected an object; {fix}")


def _retrain(path: Path) -> str:
    return f"privfl train --config {Path(path) / 'config.toml'} --out <new dir>"


def _legacy_message(legacy: Path, path: Path) -> str:
    return (
        f"{path} was written by an older privfl (run format 1): its {legacy.name} is a pickle, which this "
        "privfl does not open because unpickling a file can run code from it; rerun the training with "
        f"this privfl ({_retrain(path)})"
    )
