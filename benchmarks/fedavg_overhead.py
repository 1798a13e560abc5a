"""How much does the federated machinery cost on top of the local training it runs?

Times full FedAvg rounds (client sampling, loading global weights, local SGD, flattening the
update, weighting, summation, server step) against the pure local-training compute they contain
(the same SGD steps on the same batches with a model and optimizer already in place), interleaved
and repeated, and reports the ratio of medians plus the process's peak memory.

    python benchmarks/fedavg_overhead.py [--model cnn] [--clients 5] [--repeats 5]

Target: ratio <= 1.10. Prints the ratio last and writes benchmarks/results/fedavg_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from privfl.config import ExperimentConfig
from privfl.data.dataset import prepare
from privfl.fl.client import derive_seed, sgd_epochs
from privfl.fl.components import build_components
from privfl.fl.federation import Federation
from privfl.models import build_model, initial_weights, set_flat


def pure_local_compute(cfg: ExperimentConfig, data, weights, round_index: int) -> float:
    """Seconds of the local SGD alone: same clients, batches and steps, no federation around it."""
    models = []
    for client in data.clients:  # set-up outside the timed region
        model = build_model(cfg.model, data.n_mels)
        set_flat(model, weights)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum)
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, round_index, client.client_id))
        models.append((client, model, opt, gen))
    t0 = time.perf_counter()
    for client, model, opt, gen in models:
        sgd_epochs(model, opt, client, cfg.train.local_epochs, cfg.train.batch_size, gen)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn", choices=["cnn", "lstm"])
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fedavg_overhead.json")
    args = ap.parse_args()

    cfg = ExperimentConfig().override({"model.name": args.model, "train.clients": args.clients}).validate()
    t0 = time.perf_counter()
    data = prepare(cfg)
    print(f"data ready in {time.perf_counter() - t0:.1f} s ({len(data.train)} training utterances)")
    comps = build_components(cfg, data)
    fed = Federation(comps.trainer, data.clients, comps.sampler, comps.policy, comps.summation)
    weights = initial_weights(cfg.model, data.n_mels, cfg.seed)
    fed.run_round(1, weights)  # warm-up: allocator, kernels
    pure_local_compute(cfg, data, weights, 1)

    rounds, pure = [], []
    for r in range(2, 2 + args.repeats):
        t0 = time.perf_counter()
        fed.run_round(r, weights)
        rounds.append(time.perf_counter() - t0)
        pure.append(pure_local_compute(cfg, data, weights, r))
    ratio = statistics.median(rounds) / statistics.median(pure)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "model": args.model,
        "clients": args.clients,
        "repeats": args.repeats,
        "round_s": rounds,
        "pure_local_s": pure,
        "median_round_s": statistics.median(rounds),
        "median_pure_local_s": statistics.median(pure),
        "overhead_ratio": ratio,
        "peak_rss_mib": peak_mib,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"round {statistics.median(rounds):.3f} s, pure local training {statistics.median(pure):.3f} s, "
        f"peak RSS {peak_mib:.0f} MiB"
    )
    print(f"overhead ratio (round / pure local compute): {ratio:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
