from __future__ import annotations

import sys
from pathlib import Path

import pytest

from privfl.data.corpora import DATASETS, audio_problem, load_corpus, loader_for
from privfl.errors import ConfigError

from .corpus_trees import LFS_POINTER, write_emodb, write_empty, write_header_only, write_truncated, write_wav


def test_dataset_names() -> None:
    assert DATASETS == ("synthetic", "iemocap", "crema-d", "ravdess", "emodb", "manifest")
    for name in DATASETS[1:]:
        assert callable(loader_for(name))
    assert loader_for("crema_d") is loader_for("CREMA-D")


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        load_corpus("msp-podcast", Path("."))
    assert "msp-podcast" in str(info.value)
    for name in DATASETS:
        assert name in str(info.value)


def test_real_loaders_do_not_import_synthetic(tmp_path: Path, monkeypatch) -> None:
    # removed for this test only: later tests that patch the module must find the one they imported
    monkeypatch.delitem(sys.modules, "privfl.data.corpora.synthetic", raising=False)
    load_corpus("emodb", write_emodb(tmp_path))
    assert "privfl.data.corpora.synthetic" not in sys.modules


def test_loader_without_options_rejects_any(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="accepted: none"):
        load_corpus("emodb", tmp_path, merge_excited=True)


def test_audio_problem_kinds(tmp_path: Path) -> None:
    assert audio_problem(write_wav(tmp_path / "ok.wav", seconds=0.03)) is None
    assert audio_problem(write_wav(tmp_path / "ok48k.wav", seconds=0.03, sample_rate=48_000)) is None
    assert audio_problem(write_wav(tmp_path / "short.wav", seconds=0.02)).startswith("too short: 20.0 ms")
    assert audio_problem(write_empty(tmp_path / "zero.wav")).startswith("empty")
    assert audio_problem(write_header_only(tmp_path / "header.wav")).startswith("empty")
    assert audio_problem(write_truncated(tmp_path / "cut.wav")).startswith("truncated")
    (tmp_path / "lfs.wav").write_bytes(LFS_POINTER)
    assert audio_problem(tmp_path / "lfs.wav").startswith("git-lfs pointer")
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x01junk" * 10)
    assert audio_problem(tmp_path / "junk.wav").startswith("unreadable")
    assert audio_problem(tmp_path / "missing.wav").startswith("unreadable")


def test_synthetic_is_registered_when_present() -> None:
    pytest.importorskip("privfl.data.corpora.synthetic")
    assert loader_for("synthetic").__name__ == "load_synthetic"


def test_loader_without_strict_parameter_is_called_without_it(monkeypatch, tmp_path: Path) -> None:
    import privfl.data.corpora as registry

    seen = {}

    def load_plain(root: Path) -> str:
        seen["root"] = root
        return "corpus"

    monkeypatch.setattr(registry, "loader_for", lambda name: load_plain)
    assert registry.load_corpus("synthetic", tmp_path, strict=True) == "corpus"
    assert seen["root"] == tmp_path
