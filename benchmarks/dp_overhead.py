"""What does record-level DP-SGD cost over plain local SGD, per model and per-sample gradient engine?

Times one client's local training (one round: E epochs at batch size B) with the non-private
`LocalTrainer` and with `DPSGDTrainer` under every grad_sample_mode (microbatch, and Opacus's hooks,
functorch, ew = expanded weights, ghost = ghost clipping) on the same client data of the built-in
corpus, interleaved and repeated, and reports the ratio of medians (wall clock) per engine. CPU time
(process_time) is recorded too: it is less disturbed by other processes on a shared machine.

    python benchmarks/dp_overhead.py [--models cnn lstm] [--repeats 5] [--threads N]

Target: best ratio <= 2.0 for both models; `dp.grad_sample_mode = "auto"` uses the best measured
here (privfl.fl.dp.AUTO_GRAD_SAMPLE_MODE). Prints the ratios last and writes
benchmarks/results/dp_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from privfl.config import ExperimentConfig
from privfl.data.dataset import prepare
from privfl.fl.client import LocalConfig, LocalTrainer
from privfl.fl.dp import AUTO_GRAD_SAMPLE_MODE, GRAD_SAMPLE_MODES, DPSGDTrainer
from privfl.models import initial_weights
from privfl.privacy import RecordLevelPrivacy
from privfl.randomness import PrivacyRandomness

ENGINES = tuple(m for m in GRAD_SAMPLE_MODES if m != "auto")
SLOW = 6.0  # an engine slower than this many times plain is timed once, not `repeats` times


def dp_trainer(cfg: ExperimentConfig, n_mels: int, local: LocalConfig, client, mode: str) -> DPSGDTrainer:
    """A DP-SGD trainer for one client: sigma 1, C 1 (the cost does not depend on them)."""
    n = client.num_samples
    privacy = RecordLevelPrivacy(
        noise_multiplier=1.0,
        target_epsilon=None,
        max_grad_norm=1.0,
        delta=1e-5,
        accountant="rdp",
        sample_rates={client.client_id: local.batch_size / n},
        steps_per_round={client.client_id: local.epochs * -(-n // local.batch_size)},
        rounds=1000,
    )
    randomness = PrivacyRandomness(cfg.dp.noise, cfg.seed)
    return DPSGDTrainer(
        cfg.model, n_mels, local, randomness, privacy, mode, max_grad_norm=cfg.dp.max_grad_norm
    )


def timed(trainer, client, weights, round_index: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one local-training call."""
    w0, c0 = time.perf_counter(), time.process_time()
    trainer.train(client, weights, round_index)
    return time.perf_counter() - w0, time.process_time() - c0


def bench_model(name: str, data, args) -> dict:
    cfg = ExperimentConfig().override({"model.name": name}).validate()
    t = cfg.train
    local = LocalConfig.of(t)
    client = data.clients[0]
    weights = initial_weights(cfg.model, data.n_mels, cfg.seed)
    variants = {"plain": LocalTrainer(cfg.model, data.n_mels, local, cfg.seed)}
    for mode in args.modes:
        variants[mode] = dp_trainer(cfg, data.n_mels, local, client, mode)
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for trainer in variants.values():  # warm-up: allocator, kernels, hooks
        timed(trainer, client, weights, 1)
    plain_first = timed(variants["plain"], client, weights, 1)[0]
    keys = list(variants)
    for r in range(args.repeats):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:  # rotate the order each repeat
            if r > 0 and key != "plain" and wall[key] and wall[key][0] > SLOW * plain_first:
                continue
            w, c = timed(variants[key], client, weights, 2 + r)
            wall[key].append(w)
            cpu[key].append(c)
            print(f"  {name} {key:<10} repeat {r + 1}: wall {w:.3f} s, cpu {c:.3f} s", flush=True)
    plain_wall, plain_cpu = statistics.median(wall["plain"]), statistics.median(cpu["plain"])
    engines = {}
    for mode in args.modes:
        engines[mode] = {
            "wall_s": wall[mode],
            "cpu_s": cpu[mode],
            "ratio_wall": statistics.median(wall[mode]) / plain_wall,
            "ratio_cpu": statistics.median(cpu[mode]) / plain_cpu,
        }
    best = min(engines, key=lambda m: engines[m]["ratio_wall"])
    return {
        "client_utterances": client.num_samples,
        "mean_frames": float(client.lengths.float().mean()),
        "batch_size": t.batch_size,
        "local_epochs": t.local_epochs,
        "plain_wall_s": wall["plain"],
        "plain_cpu_s": cpu["plain"],
        "engines": engines,
        "best": best,
        "auto": AUTO_GRAD_SAMPLE_MODE.get(name),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cnn", "lstm"], choices=["cnn", "lstm"])
    ap.add_argument("--modes", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads [torch's default]")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dp_overhead.json")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    data = prepare(ExperimentConfig())  # the default built-in corpus, 5 clients
    results = {name: bench_model(name, data, args) for name in args.models}
    out = {
        "models": results,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "processor": platform.processor(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")

    for name, res in results.items():
        print(
            f"{name}: plain local training {statistics.median(res['plain_wall_s']):.3f} s "
            f"({res['client_utterances']} utterances, B={res['batch_size']}, E={res['local_epochs']})"
        )
        for mode, e in sorted(res["engines"].items(), key=lambda kv: kv[1]["ratio_wall"]):
            print(
                f"  {mode:<10} wall x{e['ratio_wall']:.2f}  cpu x{e['ratio_cpu']:.2f}  (n={len(e['wall_s'])})"
            )
    for name, res in results.items():
        e = res["engines"][res["best"]]
        print(
            f"DP-SGD / plain time, {name}: {e['ratio_wall']:.2f}x with {res['best']} "
            f"(auto = {res['auto']}; target <= 2.0)"
        )


if __name__ == "__main__":
    main()
