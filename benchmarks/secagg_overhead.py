"""What does CKKS secure aggregation add to a FedAvg round, next to the plaintext sum?

For stand-ins of the paper's models (CNN ~85k, LSTM ~105k parameters: 100_000 and 250_000) and
K=10 clients, runs the same weighted contributions through `PlainSummation` and `CkksSummation`
(client encryption, aggregation, key-holder decryption, all in this process) and reports, per
round: seconds of each step, upload bytes per parameter, the decrypted sum's error against the
plaintext sum, and the first (calibration) round separately. The aggregator's memory is measured
in fresh subprocesses for K=5 and K=20 (peak RSS; SEAL allocates outside tracemalloc's view).

    python benchmarks/secagg_overhead.py [--clients 10] [--sizes 100000 250000] [--repeats 3]
                                         [--train-round-s 2.0]

Targets: a CKKS round <= 1.25x a plaintext round, where a plaintext round is --train-round-s of
local training (2-5 s for K=10 on this project's CPU) plus the plaintext sum; <= 30 upload bytes
per parameter; error <= 1e-6 relative to max|sum|; aggregator memory flat in K. Prints the ratios
last and writes benchmarks/results/secagg_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from privfl.fl.aggregate import Contribution, PlainSummation
from privfl.fl.secure import Aggregator, CkksParams, CkksSummation, Encryptor, KeyHolder, RoundSpec


def contributions(n_params: int, clients: int, round_index: int) -> Iterator[Contribution]:
    """FedAvg-like, one at a time: weight n_k in [32, 256), update ~ N(0, 0.01^2), vector = n_k * update."""
    rng = np.random.default_rng([n_params, clients, round_index])
    for k in range(clients):
        n_k = float(rng.integers(32, 256))
        yield Contribution(k, rng.normal(0.0, 0.01, n_params) * n_k, n_k)


def plain_round(batch: list[Contribution], n_params: int) -> float:
    summation = PlainSummation()
    t0 = time.perf_counter()
    summation.begin_round(0, n_params)
    for c in batch:
        summation.add(c)
    summation.finish()
    return time.perf_counter() - t0


def ckks_round(summation: CkksSummation, batch: list[Contribution], n_params: int, round_index: int) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    summation.begin_round(round_index, n_params)
    for c in batch:
        summation.add(c)
    result = summation.finish()
    stats = dict(result.stats)
    stats["round_s"] = time.perf_counter() - t0
    stats["round_cpu_s"] = time.process_time() - c0  # less sensitive to other load on the machine
    stats["bytes_per_param"] = stats["bytes_per_client"] / n_params
    return stats


def peak_rss_mib() -> float:
    """This process's RSS high-water mark (VmHWM; ru_maxrss would count the parent's, kept over exec)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def memory_probe(n_params: int, clients: int) -> dict:
    """Run in a fresh process: stream `clients` payloads into one Aggregator; RSS after each add."""
    key_holder = KeyHolder(CkksParams())
    public = key_holder.public_context()
    spec = RoundSpec(1, n_params, (12,))
    encryptor, aggregator = Encryptor(public), Aggregator(public, spec)
    page = os.sysconf("SC_PAGE_SIZE")
    rss = []
    for c in contributions(n_params, clients, 99):
        payload = encryptor.encrypt(c, spec)
        aggregator.add(c.client_id, payload)
        del payload
        with open("/proc/self/statm") as f:
            rss.append(int(f.read().split()[1]) * page / 2**20)
    return {
        "clients": clients,
        "peak_rss_mib": peak_rss_mib(),
        "rss_after_each_add_mib": rss,
        "aggregate_bytes": len(aggregator.result()),
    }


def run_memory_probe(n_params: int, clients: int) -> dict:
    cmd = [sys.executable, __file__, "--memory-probe", str(clients), "--sizes", str(n_params)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 250_000])
    ap.add_argument("--repeats", type=int, default=3, help="steady-state rounds after the calibration round")
    ap.add_argument(
        "--train-round-s", type=float, default=2.0, help="local training time of a K-client round"
    )
    ap.add_argument("--memory-probe", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "secagg_overhead.json")
    args = ap.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(args.sizes[0], args.memory_probe)))
        return

    params = CkksParams()
    load_before = os.getloadavg()
    results = []
    for n in args.sizes:
        summation = CkksSummation(params, debug_check=True)
        first = ckks_round(summation, list(contributions(n, args.clients, 0)), n, 0)
        steady, plain = [], []
        for r in range(1, args.repeats + 1):
            batch = list(contributions(n, args.clients, r))
            plain.append(plain_round(batch, n))
            steady.append(ckks_round(summation, batch, n, r))
        keys = ("encrypt_s", "aggregate_s", "decrypt_s", "round_s", "round_cpu_s")
        med = {k: statistics.median(s[k] for s in steady) for k in keys}
        plain_s = statistics.median(plain)
        row = {
            "n_params": n,
            "clients": args.clients,
            "plain_sum_s": plain_s,
            "ckks_round_s": med["round_s"],
            "ckks_round_cpu_s": med["round_cpu_s"],
            "ckks_encrypt_s": med["encrypt_s"],
            "ckks_encrypt_per_client_s": med["encrypt_s"] / args.clients,
            "ckks_aggregate_s": med["aggregate_s"],
            "ckks_decrypt_s": med["decrypt_s"],
            "bytes_per_param": statistics.median(s["bytes_per_param"] for s in steady),
            "plain_bytes_per_param": 4.0,  # float32 update
            "max_rel_error": max(s["max_rel_error"] for s in steady),
            "max_abs_error": max(s["max_abs_error"] for s in steady),
            "bound_bits": steady[-1]["he_bound_bits"],
            "calibration_round": {
                k: first[k] for k in ("round_s", "bytes_per_param", "max_rel_error", "he_bound_bits")
            },
            "round_ratio": (args.train_round_s + med["round_s"]) / (args.train_round_s + plain_s),
            "round_ratio_cpu": (args.train_round_s + med["round_cpu_s"]) / (args.train_round_s + plain_s),
            "steady_rounds": steady,
        }
        results.append(row)
        print(
            f"n={n:>7} K={args.clients}: CKKS round {row['ckks_round_s']:.3f} s wall, "
            f"{row['ckks_round_cpu_s']:.3f} s CPU (encrypt {med['encrypt_s']:.3f}, "
            f"aggregate {med['aggregate_s']:.3f}, decrypt {med['decrypt_s']:.3f} wall); "
            f"plaintext sum {plain_s:.4f} s"
        )
        print(
            f"          upload {row['bytes_per_param']:.2f} B/param; "
            f"max rel error {row['max_rel_error']:.2e}; "
            f"calibration round {first['round_s']:.3f} s, {first['bytes_per_param']:.1f} B/param, "
            f"error {first['max_rel_error']:.2e}"
        )

    memory = [run_memory_probe(args.sizes[0], k) for k in (5, 20)]
    for m in memory:
        rss = m["rss_after_each_add_mib"]
        print(
            f"aggregator, n={args.sizes[0]}, K={m['clients']:>2}: peak RSS {m['peak_rss_mib']:.0f} MiB, RSS "
            f"after first/last add {rss[0]:.0f}/{rss[-1]:.0f} MiB, "
            f"aggregate {m['aggregate_bytes'] / 2**20:.1f} MiB"
        )
    memory_ratio = memory[1]["peak_rss_mib"] / memory[0]["peak_rss_mib"]
    result = {
        "params": {
            "poly_modulus_degree": params.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
            "global_scale_bits": params.global_scale_bits,
            "calibration_bound_bits": list(params.calibration_bound_bits),
            "margin_bits": params.margin_bits,
        },
        "train_round_s": args.train_round_s,
        "results": results,
        "memory": memory,
        "memory_ratio_k20_over_k5": memory_ratio,
        "load_average_before_after": [load_before, os.getloadavg()],
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"load average before/after: {load_before[0]:.1f}/{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    for row in results:
        print(
            f"n={row['n_params']}: round ratio (train {args.train_round_s:.1f} s + CKKS) / (train + plain) = "
            f"{row['round_ratio']:.3f} wall, {row['round_ratio_cpu']:.3f} CPU (target <= 1.25); "
            "bytes ratio CKKS/float32 = "
            f"{row['bytes_per_param'] / 4:.2f} ({row['bytes_per_param']:.2f} B/param, target <= 30)"
        )
    print(f"aggregator peak RSS ratio K=20 / K=5: {memory_ratio:.3f} (flat: ~1.0)")


if __name__ == "__main__":
    main()
