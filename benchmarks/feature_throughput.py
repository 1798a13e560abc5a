"""Log-Mel feature extraction throughput, as a multiple of real time, WAV decoding included.

Reads the built-in corpus's 16 kHz WAV files (generated into $PRIVFL_CACHE on first use) and
times `privfl.data.features.extract` on them without its cache, on one worker process and on
every core, interleaved and repeated. Then times a warm `prepare()` (what a second training run
pays before its first round: corpus listing + cached features + partition).

    python benchmarks/feature_throughput.py [--utterances 960] [--repeats 3]

Target: >= 500x real time on the 2-core CPU machine. Prints the ratios last and writes
benchmarks/results/feature_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import soundfile as sf

from privfl.config import ExperimentConfig
from privfl.data.dataset import load_corpus_for, prepare
from privfl.data.features import FeatureConfig, extract
from privfl.parallel import default_workers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", type=int, default=960, help="How many corpus files to featurise.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "feature_throughput.json")
    args = ap.parse_args()

    cfg = ExperimentConfig()
    corpus = load_corpus_for(cfg.data)
    utts = list(corpus.utterances)[: args.utterances]
    audio_s = sum(sf.info(u.path).duration for u in utts)
    fcfg = FeatureConfig(n_mels=cfg.data.n_mels, max_frames=cfg.data.max_frames)
    settings = sorted({1, default_workers()})
    print(f"{len(utts)} utterances, {audio_s:.0f} s of audio; workers {settings}")

    extract(utts[:8], fcfg, workers=1)  # warm-up: imports, filterbank, allocator
    wall: dict[int, list[float]] = {w: [] for w in settings}
    for rep in range(args.repeats):
        for w in settings:
            t0 = time.perf_counter()
            extract(utts, fcfg, workers=w)
            wall[w].append(time.perf_counter() - t0)
            s = wall[w][-1]
            print(f"  repeat {rep + 1} workers {w}: {s:.2f} s ({audio_s / s:.0f}x real time)")

    prepare(cfg)  # make sure every feature cache entry exists
    t0 = time.perf_counter()
    prepare(cfg)
    warm_prepare_s = time.perf_counter() - t0

    ratios = {w: audio_s / statistics.median(v) for w, v in wall.items()}
    result = {
        "utterances": len(utts),
        "audio_seconds": audio_s,
        "repeats": args.repeats,
        "wall_s": {str(w): v for w, v in wall.items()},
        "realtime_factor": {str(w): r for w, r in ratios.items()},
        "warm_prepare_s": warm_prepare_s,
        "target_realtime_factor": 500.0,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": default_workers()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"warm prepare() (a second run's set-up before round 1): {warm_prepare_s:.2f} s")
    for w, r in ratios.items():
        print(f"feature throughput, {w} worker(s): {r:.0f}x real time (target >= 500x)")


if __name__ == "__main__":
    main()
