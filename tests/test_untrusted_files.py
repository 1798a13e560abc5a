"""Opening a run directory or a cache never runs code from it (issue #21).

Each test plants a file whose unpickling would create a marker file (a pickled object whose
`__reduce__` calls Path.touch) where privfl reads back a checkpoint, a recording or a cache,
then runs resume, `privfl attack` and `privfl bench` on it: each must refuse with one clear line
(exit 2) and the marker must never appear. The payloads are live: the first tests show that
unpickling them does create the marker.
"""

from __future__ import annotations

import ast
import hashlib
import json
import pathlib
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from privfl.cli import main
from privfl.data.features import FeatureConfig, cache_key, extract
from privfl.data.records import Utterance
from privfl.errors import DataError, RunError
from privfl.runs import RunDir

POINT = "fedavg-s0"


class Payload:
    """Unpickling this calls Path.touch(marker): what a malicious file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def evil_pt(path: Path, marker: Path) -> None:
    torch.save({"round": 2, "weights": Payload(marker)}, path)


def evil_npz(path: Path, marker: Path, **plain: np.ndarray) -> None:
    """An .npz whose first array is an object array holding the payload (np.savez pickles it)."""
    np.savez(path, payload=np.array([Payload(marker)], dtype=object), **plain)


def test_the_payloads_run_code_when_unpickled(tmp_path):
    marker = tmp_path / "ran"
    evil_pt(tmp_path / "c.pt", marker)
    torch.load(tmp_path / "c.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()
    evil_npz(tmp_path / "u.npz", marker)
    with np.load(tmp_path / "u.npz", allow_pickle=True) as z:
        z["payload"]
    assert marker.exists()


# --- a finished benchmark point with recorded updates, and the same directory tampered ------------
@pytest.fixture(scope="module")
def bench_out(tmp_path_factory):
    """`privfl bench privacy-utility --no-attacks` on a one-point grid: (grid file, out dir)."""
    from privfl.bench.grid import Grid, GridPoint
    from privfl.config import ExperimentConfig
    from tests.bench.conftest import TINY_ATTACKABLE, TINY_ATTACKS

    grid = Grid(
        "tiny",
        ExperimentConfig().override(TINY_ATTACKABLE),
        (GridPoint("fedavg", "none"),),
        (0,),
        TINY_ATTACKS,
    )
    root = tmp_path_factory.mktemp("untrusted")
    (root / "grid.toml").write_text(grid.to_toml())
    result = _bench(root / "grid.toml", root / "out")
    assert result.exit_code == 0, result.output
    return root / "grid.toml", root / "out"


def _bench(grid: Path, out: Path):
    return CliRunner().invoke(
        main, ["bench", "privacy-utility", "--config", str(grid), "--out", str(out), "--no-attacks"]
    )


def _resume(run: Path):
    return CliRunner().invoke(main, ["train", "--config", str(run / "config.toml"), "--resume", str(run)])


def _attack(run: Path, tmp_path: Path):
    return CliRunner().invoke(
        main, ["attack", "gender", "--run", str(run), "--out", str(tmp_path / "report")]
    )


def _legacy(run: Path, marker: Path) -> None:
    """A run as an older privfl wrote it: a pickled checkpoint.pt, run format 1."""
    (run / "checkpoint.json").unlink()
    for f in run.glob("checkpoint-*.pt"):
        f.unlink()
    evil_pt(run / "checkpoint.pt", marker)
    (run / "run.json").write_text('{"privfl_format": 1}')


def _old_name(run: Path, marker: Path) -> None:
    """A pickled checkpoint.pt in place of checkpoint.json in a run that claims the current format."""
    (run / "checkpoint.json").unlink()
    evil_pt(run / "checkpoint.pt", marker)


def _weights(run: Path, marker: Path) -> None:
    """The weights file replaced by a pickle, with checkpoint.json's digest updated to match it."""
    meta = json.loads((run / "checkpoint.json").read_text())
    path = run / f"checkpoint-{meta['round']:04d}.pt"
    evil_pt(path, marker)
    meta["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (run / "checkpoint.json").write_text(json.dumps(meta))


def _updates(run: Path, marker: Path) -> None:
    """A recorded round whose arrays are the ones privfl writes plus a pickled object array."""
    path = run / "updates" / "round_0001.npz"
    with np.load(path) as z:
        plain = {k: z[k] for k in z.files}
    evil_npz(path, marker, **plain)


def _updates_deltas(run: Path, marker: Path) -> None:
    """A recorded round whose deltas array is the pickled object array."""
    path = run / "updates" / "round_0002.npz"
    with np.load(path) as z:
        plain = {k: z[k] for k in z.files if k != "deltas"}
    np.savez(path, deltas=np.array([Payload(marker)], dtype=object), **plain)


TAMPERED = {
    "legacy checkpoint.pt": (_legacy, "older privfl"),
    "checkpoint.pt without checkpoint.json": (_old_name, "older privfl"),
    "pickled weights file": (_weights, "is not a tensor file privfl wrote"),
    "extra pickled array in updates": (_updates, "round_0001.npz is not a file privfl wrote"),
    "pickled deltas in updates": (_updates_deltas, "round_0002.npz: array 'deltas' has dtype object"),
}


@pytest.fixture(params=list(TAMPERED))
def tampered(request, bench_out, tmp_path):
    """(grid file, out dir, run dir, marker, expected message) of a copy of the point, tampered."""
    grid, out = bench_out
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    run = copy / "points" / POINT
    marker = tmp_path / "ran"
    plant, message = TAMPERED[request.param]
    plant(run, marker)
    return grid, copy, run, marker, message


def _refused(result, message: str, marker: Path) -> None:
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert isinstance(result.exception, SystemExit)
    assert not marker.exists(), "opening the run directory ran code from it"


def test_resume_refuses_a_tampered_run_before_preparing_data(tampered, monkeypatch):
    grid, out, run, marker, message = tampered
    import privfl.experiment

    def no_prepare(*args, **kwargs):
        raise AssertionError("data was prepared before the run directory was checked")

    monkeypatch.setattr(privfl.experiment, "prepare", no_prepare)
    (run / "summary.json").unlink()  # a stopped run, as resume meets it
    _refused(_resume(run), message, marker)


def test_attack_refuses_a_tampered_run(tampered, tmp_path):
    grid, out, run, marker, message = tampered
    _refused(_attack(run, tmp_path), message, marker)
    assert not (tmp_path / "report").exists()


def test_bench_refuses_a_tampered_point_it_would_reuse(tampered):
    grid, out, run, marker, message = tampered
    _refused(_bench(grid, out), message, marker)


def test_bench_refuses_a_tampered_point_it_would_resume(tampered):
    grid, out, run, marker, message = tampered
    (run / "summary.json").unlink()
    _refused(_bench(grid, out), message, marker)


def test_model_pt_is_never_read_back(bench_out, tmp_path):
    """model.pt is an output for users (torch.load(..., weights_only=True)); privfl never reopens it."""
    grid, out = bench_out
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    run = copy / "points" / POINT
    marker = tmp_path / "ran"
    evil_pt(run / "model.pt", marker)
    result = _bench(grid, copy)
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(run / "model.pt", weights_only=True)
    assert not marker.exists()


def test_untampered_copy_is_reused(bench_out, tmp_path):
    """Control: the copy the tampering tests start from is accepted as it is."""
    grid, out = bench_out
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    result = _bench(grid, copy)
    assert result.exit_code == 0, result.output
    doc = json.loads((copy / "results.json").read_text())
    assert [r["status"] for r in doc["timings"]["runs"]] == ["reused"]


# --- recordings and checkpoints that are data but not what privfl wrote ---------------------------
@pytest.fixture()
def point(bench_out, tmp_path) -> RunDir:
    shutil.copytree(bench_out[1] / "points" / POINT, tmp_path / "run")
    return RunDir.open(tmp_path / "run")


def test_recording_with_wrong_dtype_or_shape_is_refused(point):
    path = point.path / "updates" / "round_0001.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(path, **{**arrays, "deltas": arrays["deltas"].astype(np.float32)})
    with pytest.raises(RunError, match=r"round_0001.npz: array 'deltas' has dtype float32, expected float16"):
        point.verify()
    np.savez(path, **{**arrays, "scales": arrays["scales"][:1]})
    with pytest.raises(RunError, match=r"round_0001.npz: array 'scales' has shape \(1,\)"):
        point.load_updates(1)
    np.savez(path, **{**arrays, "weights": arrays["weights"][:-1]})
    with pytest.raises(RunError, match="round_0001.npz: array 'weights' has shape"):
        point.verify()  # one parameter fewer than the checkpoint's model
    np.savez(path, **{k: v for k, v in arrays.items() if k != "genders"})
    with pytest.raises(RunError, match="expected .*'genders'"):
        point.load_updates(1)
    path.write_bytes(b"not a zip")
    with pytest.raises(RunError, match="round_0001.npz is not a file privfl wrote"):
        point.verify()


def test_checkpoint_that_is_not_what_privfl_wrote_is_refused(point):
    meta_path = point.path / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    weights_file = point.path / f"checkpoint-{meta['round']:04d}.pt"

    def refused(change: dict, match: str) -> None:
        meta_path.write_text(json.dumps({**meta, **change}))
        with pytest.raises(RunError, match=match):
            point.load_checkpoint()

    refused({"privfl_format": 99}, "checkpoint format 99")
    refused({"round": 1}, r"checkpoint-0001.pt is missing")
    refused({"round": "2"}, "round is '2', expected a positive integer")
    refused({"weights_sha256": "0" * 64}, "does not match the SHA-256")
    refused({"state": {"loop": 3}}, 'state must be an object with a "loop" object')
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "n_params"}))
    with pytest.raises(RunError, match="expected the keys"):
        point.load_checkpoint()
    meta_path.write_text("{not json")
    with pytest.raises(RunError, match="checkpoint.json is not JSON"):
        point.load_checkpoint()

    # a well-formed tensor file with the wrong contents, digest updated so the contents are checked
    def with_weights(obj, match: str) -> None:
        torch.save(obj, weights_file)
        digest = hashlib.sha256(weights_file.read_bytes()).hexdigest()
        meta_path.write_text(json.dumps({**meta, "weights_sha256": digest}))
        with pytest.raises(RunError, match=match):
            point.load_checkpoint()

    n = meta["n_params"]
    with_weights({"round": meta["round"], "weights": torch.zeros(n, dtype=torch.float16)}, "weights are")
    with_weights({"round": meta["round"], "weights": torch.zeros(n + 1)}, "weights are")
    with_weights({"round": 1, "weights": torch.zeros(n)}, "is for round 1")
    with_weights({"weights": torch.zeros(n)}, r"expected the keys \['round', 'weights'\]")
    torch.save({"round": meta["round"], "weights": torch.zeros(n)}, weights_file)
    digest = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps({**meta, "weights_sha256": digest}))
    assert point.load_checkpoint()["weights"].shape == (n,)  # well formed: read back
    with pytest.raises(RunError, match=f"holds {n} weights, the model of .* has {n + 1}"):
        point.load_checkpoint(n + 1)


def test_a_crash_between_the_two_checkpoint_writes_keeps_the_previous_checkpoint(point):
    before = point.load_checkpoint()
    torch.save({"round": before["round"] + 1, "weights": torch.zeros(3)}, point.path / "checkpoint-0099.pt")
    after = point.load_checkpoint()  # checkpoint.json still names the last whole checkpoint
    assert after["round"] == before["round"]
    np.testing.assert_array_equal(after["weights"], before["weights"])
    point.save_checkpoint(before["round"] + 1, before["weights"], before["state"])
    assert sorted(p.name for p in point.path.glob("checkpoint-*.pt")) == [
        f"checkpoint-{before['round'] + 1:04d}.pt"
    ]


# --- the feature cache -------------------------------------------------------------------------------
def test_feature_cache_is_read_as_data_only(tmp_path):
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"never read: the cache is")
    utts = [Utterance("a", str(wav), "s1", "female", "neutral")]
    cfg = FeatureConfig(max_frames=10)
    path = tmp_path / "cache" / f"features-{cache_key(utts, cfg, 1.0)}.npz"
    path.parent.mkdir()
    marker = tmp_path / "ran"
    x = np.zeros((1, 10, cfg.n_mels), dtype=np.float32)
    lengths = np.array([10], dtype=np.int64)

    np.savez(path, x=np.array([Payload(marker)], dtype=object), lengths=lengths)
    with pytest.raises(DataError, match=f"{re.escape(str(path))} is not a file privfl wrote.*delete"):
        extract(utts, cfg, cache_dir=path.parent)
    assert not marker.exists()
    evil_npz(path, marker, x=x, lengths=lengths)
    with pytest.raises(DataError, match="Object arrays cannot be loaded"):
        extract(utts, cfg, cache_dir=path.parent)
    assert not marker.exists()
    np.savez(path, x=x[:, :5], lengths=lengths)
    with pytest.raises(DataError, match=r"array 'x' has shape \(1, 5, 40\), expected \(1, 10, 40\)"):
        extract(utts, cfg, cache_dir=path.parent)
    np.savez(path, x=x, lengths=np.array([11]))
    with pytest.raises(DataError, match="frame counts"):
        extract(utts, cfg, cache_dir=path.parent)
    np.savez(path, x=x + 1, lengths=lengths)
    got = extract(utts, cfg, cache_dir=path.parent)  # the cache privfl writes is read back
    np.testing.assert_array_equal(got.x, x + 1)


# --- no way back to pickle in the package -------------------------------------------------------------
def test_no_source_loads_with_pickle():
    """Every torch.load in privfl/ and attacks/ passes weights_only=True, every np.load allow_pickle=False,
    and neither `weights_only=False` nor `allow_pickle=True` nor pickle.load appears anywhere."""
    root = Path(__file__).resolve().parents[1]
    sources = sorted([*(root / "privfl").rglob("*.py"), *(root / "attacks").rglob("*.py")])
    assert len(sources) > 20
    required = {("torch", "load"): ("weights_only", True), ("np", "load"): ("allow_pickle", False)}
    bad, calls = [], 0
    for path in sources:
        text = path.read_text()
        where = path.relative_to(root)
        for needle in ("weights_only=False", "allow_pickle=True", "pickle.load", "pickle.Unpickler"):
            if needle in text:
                bad.append(f"{where}: {needle}")
        for node in ast.walk(ast.parse(text)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            key = (owner.id if isinstance(owner, ast.Name) else "", node.func.attr)
            if key in required:
                calls += 1
                name, value = required[key]
                given = {k.arg: k.value for k in node.keywords}
                if not (isinstance(given.get(name), ast.Constant) and given[name].value is value):
                    bad.append(f"{where}:{node.lineno}: {'.'.join(key)} without {name}={value}")
    assert calls >= 2  # the checkpoint reader and the .npz reader (privfl.npz) were seen
    assert not bad, bad
