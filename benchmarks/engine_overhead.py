"""What does running on Flower cost per round, against the built-in engine, for the same work?

One process, one Session: the built-in engine (`Federation.run_round`) and Flower's Simulation
Runtime (`FlowerRounds.run_round`: privfl's ServerApp and ClientApp, messages through Flower's
LinkState and Grid, ClientApps run by privfl's in-process backend) run the same round (same
sampled clients, same weights, same per-client seeds), interleaved: builtin, flower, builtin,
flower, ... so load from other processes falls on both alike. No evaluation in the timed rounds.

    python benchmarks/engine_overhead.py [--clients 10] [--repeats 5] [--speakers 24] [--deployment]

With --deployment it also runs the workload on Flower's Deployment Runtime on this machine (a
SuperLink and K SuperNodes as subprocesses, `flwr run`; tests/fl/engines/local_deployment.py), after a
built-in run of the same config, and reports that ratio too (not interleaved: one run each).

Target: the built-in engine at least 3x faster per round at K=10. Prints the ratio of median
round times (flower / builtin) last and writes benchmarks/results/engine_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from privfl.config import ExperimentConfig
from privfl.experiment import Session
from privfl.fl.engines import require_flower


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--speakers", type=int, default=24)
    ap.add_argument("--model", default="cnn", choices=["cnn", "lstm"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--secure-agg", default="none", choices=["none", "ckks"])
    ap.add_argument("--deployment", action="store_true", help="also time SuperLink + SuperNodes + flwr run")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "engine_overhead.json")
    args = ap.parse_args()
    require_flower()
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    from privfl.fl.engines.client_app import make_client_app
    from privfl.fl.engines.server_app import FlowerRounds
    from privfl.fl.engines.simulation import simulate

    cfg = (
        ExperimentConfig()
        .override(
            {
                "model.name": args.model,
                "data.speakers": args.speakers,
                "train.clients": args.clients,
                "train.rounds": args.repeats + 1,
                "secure.scheme": args.secure_agg,
            }
        )
        .validate()
    )
    t0 = time.perf_counter()
    session = Session(cfg, Path(tempfile.mkdtemp(prefix="privfl-engine-bench-")) / "run")
    print(
        f"data and components ready in {time.perf_counter() - t0:.1f} s "
        f"({len(session.data.train)} training utterances, {len(session.data.clients)} clients)"
    )
    federation = session.federation()
    weights = session.weights
    result: dict = {
        "builtin_round_s": [],
        "flower_round_s": [],
        "flower_exchange_s": [],
        "flower_client_train_s": [],
    }
    server_app = ServerApp()

    @server_app.main()
    def bench(grid: Grid, context: Context) -> None:
        flower = FlowerRounds(session, grid)
        t = time.perf_counter()
        flower.connect()
        result["flower_connect_s"] = time.perf_counter() - t
        t = time.perf_counter()
        flower.run_round(1, weights)  # warm-up; the virtual clients build their components here
        result["flower_first_round_s"] = time.perf_counter() - t
        federation.run_round(1, weights)
        for r in range(2, 2 + args.repeats):
            t = time.perf_counter()
            federation.run_round(r, weights)
            result["builtin_round_s"].append(time.perf_counter() - t)
            t = time.perf_counter()
            outcome = flower.run_round(r, weights)
            result["flower_round_s"].append(time.perf_counter() - t)
            result["flower_exchange_s"].append(outcome.stats["exchange_s"])
            result["flower_client_train_s"].append(outcome.stats["train_s"])

    t0 = time.perf_counter()
    simulate(server_app, make_client_app(load_data=lambda _cfg: session.data), num_supernodes=args.clients)
    result["flower_total_s"] = time.perf_counter() - t0

    builtin = statistics.median(result["builtin_round_s"])
    flower = statistics.median(result["flower_round_s"])
    transport = [
        x - t for x, t in zip(result["flower_exchange_s"], result["flower_client_train_s"], strict=True)
    ]
    ratio = flower / builtin
    # paired: each Flower round against the built-in round timed just before it (same load)
    pairs = zip(result["flower_round_s"], result["builtin_round_s"], strict=True)
    paired = statistics.median(f / b for f, b in pairs)
    result.update(
        {
            "clients": args.clients,
            "speakers": args.speakers,
            "model": args.model,
            "secure_agg": args.secure_agg,
            "repeats": args.repeats,
            "n_params": int(np.asarray(weights).shape[0]),
            "median_builtin_round_s": builtin,
            "median_flower_round_s": flower,
            "median_flower_transport_s": statistics.median(transport),
            "ratio_flower_over_builtin": ratio,
            "median_paired_ratio": paired,
            "target": "builtin at least 3x faster per round (ratio >= 3)",
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
            "machine": platform.platform(),
            "note": "rounds interleaved builtin/flower; other CPU-heavy jobs may share the machine "
            "(see load_average); the lead re-runs this on a quiet machine",
        }
    )
    if args.deployment:
        result["deployment"] = deployment_rounds(cfg, args.clients)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"built-in round {builtin:.3f} s, Flower round {flower:.3f} s "
        f"(of which Flower transport {result['median_flower_transport_s']:.3f} s); one-off: roll call "
        f"{result['flower_connect_s']:.2f} s, first round {result['flower_first_round_s']:.2f} s; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    if args.deployment:
        d = result["deployment"]
        print(
            f"deployment: built-in round {d['median_builtin_round_s']:.2f} s, SuperLink+SuperNodes round "
            f"{d['median_deployment_round_s']:.2f} s, ratio {d['ratio_deployment_over_builtin']:.2f}"
        )
    print(
        f"ratio (Flower simulation round / built-in round) at K={args.clients}: {ratio:.2f} "
        f"(paired median {paired:.2f}; target >= 3)"
    )


def deployment_rounds(cfg: ExperimentConfig, clients: int) -> dict:
    """Median round time (no evaluation) of a built-in run and of a local Flower deployment run."""
    from privfl.experiment import train

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: tests/ helpers
    from privfl.runs import RunDir
    from tests.fl.engines.local_deployment import LocalDeployment

    cfg = cfg.override({"train.eval_every": 10_000})  # evaluate only after the last round, not timed
    root = Path(tempfile.mkdtemp(prefix="privfl-engine-bench-deploy-"))

    def median_round(run: Path) -> float:
        return statistics.median(m["seconds"] for m in RunDir(run).metrics()[:-1])

    train(cfg, root / "builtin")
    with LocalDeployment(root / "flower", num_nodes=clients) as fl:
        t0 = time.perf_counter()
        summary = fl.run(cfg, root / "flower" / "run", timeout_s=3600)
        total = time.perf_counter() - t0
    builtin, deployed = median_round(root / "builtin"), median_round(root / "flower" / "run")
    return {
        "builtin_round_s": [m["seconds"] for m in RunDir(root / "builtin").metrics()],
        "deployment_round_s": [m["seconds"] for m in RunDir(root / "flower" / "run").metrics()],
        "median_builtin_round_s": builtin,
        "median_deployment_round_s": deployed,
        "ratio_deployment_over_builtin": deployed / builtin,
        "deployment_setup_s": summary["setup_seconds"],
        "deployment_total_s": total,
    }


if __name__ == "__main__":
    main()
