"""How long does `privfl attack all` take on a 16-client by-speaker run of the built-in corpus?

Trains the run once if it is missing (fedavg, paper CNN, by-speaker, 16 clients, --record-updates,
default 30 rounds; cached under bench/), then times the whole command (interpreter start, data
preparation from the feature cache, the gender attack at its defaults (shadow clients the size of
the run's clients, trained with the run's trainer on speed-perturbed auxiliary speech, every
recorded round combined), the speaker- and utterance-level membership attacks, report) as a
subprocess, `--repeats` times.

    python benchmarks/attack_time.py [--run bench/attack-run] [--rounds 30] [--repeats 1]

Target: under 120 s. Prints the time last and writes benchmarks/results/attack_time.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 120.0


def attack_command() -> list[str]:
    """`privfl attack all` once the lead has registered the group, else the same click group directly."""
    from privfl.cli import main

    if "attack" in main.commands:
        exe = shutil.which("privfl") or str(Path(sys.executable).with_name("privfl"))
        return [exe, "attack", "all"]
    return [sys.executable, "-m", "privfl.attacks.cli", "all"]


def ensure_run(path: Path, rounds: int) -> float:
    """Train the benchmark run if it is not there yet; returns the training seconds (0 if cached)."""
    from privfl.experiment import train
    from privfl.runs import RunDir

    if (path / "summary.json").exists() and RunDir(path).recorded_rounds():
        return 0.0
    from privfl.config import ExperimentConfig

    cfg = ExperimentConfig().override(
        {
            "data.partition": "by-speaker",
            "train.clients": 16,
            "train.rounds": rounds,
            "train.record_updates": True,
        }
    )
    t0 = time.perf_counter()
    train(cfg, path, overwrite=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("bench") / "attack-run")
    ap.add_argument(
        "--rounds", type=int, default=30, help="Rounds of the benchmark run if it must be trained."
    )
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "attack_time.json")
    args = ap.parse_args()

    train_s = ensure_run(args.run, args.rounds)
    if train_s:
        print(f"trained the benchmark run in {train_s:.0f} s: {args.run}")
    cmd = attack_command() + ["--run", str(args.run), "--out", str(args.run / "attacks")]
    times, load = [], []
    for _ in range(args.repeats):
        load.append(os.getloadavg()[0])
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    print(done.stdout)
    report = json.loads((args.run / "attacks" / "attack.json").read_text())
    headline = {
        row["name"]: row["metrics"]["auc"]
        for section in report["attacks"].values()
        for row in section["rows"]
        if row["metrics"]
    }
    result = {
        "command": " ".join(cmd),
        "run": str(args.run),
        "seconds": times,
        "median_seconds": statistics.median(times),
        "target_seconds": TARGET_S,
        "auc": headline,
        "load_average_at_start": load,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average at start: {', '.join(f'{x:.1f}' for x in load)} on {os.cpu_count()} CPUs")
    print(f"privfl attack all: {statistics.median(times):.1f} s (target < {TARGET_S:.0f} s)")


if __name__ == "__main__":
    main()
