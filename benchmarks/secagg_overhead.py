"""What do CKKS and SecAgg+ secure aggregation add to a FedAvg round, beside a plaintext sum?

For stand-ins of the paper's models (CNN ~85k, LSTM ~105k parameters: 100_000 and 250_000) and
K=10 clients, runs the same weighted contributions through `PlainSummation` and through the
built-in engine's `CkksSummation`: simulated clients pack, encrypt and sign in this process;
the relay forwards each payload over loopback to a `privfl keyholder serve` child process, which
verifies the signature, adds the ciphertext into its running sum, and releases one decrypted sum.

Reported per round (median of --repeats adapted rounds after round 0): client encryption per
client, the relay + key-holder aggregation, the release, upload bytes per parameter, the released
sum's error against the plaintext sum, and the key holder's CPU seconds (utime + stime from
/proc/<pid>/stat) and resident memory (VmRSS, VmHWM) over the round.

SecAgg+ (secure.scheme "secaggplus", no key holder): the same contributions through the four
stages with `ClientRound` and `ServerRound` in this process, each party's CPU timed on its own:
per client (encode, keys, shares, masking, unmask shares; the median client), the server (route
keys and shares, sum, rebuild seeds and remove masks), upload and download bytes per parameter,
the server's peak traced memory (tracemalloc in one extra round, around the server's steps only:
its state plus its largest step), and the same
with 10% of the clients dropping after their masked input (the server rebuilds their sk1 and
strips their pairwise masks) and 10% dropping after sharing keys.

Round time. Clients encrypt in parallel in a deployment, so a CKKS round costs
    train + one client's encryption + the key holder's aggregation of K payloads + the release
against train + the plaintext sum; the built-in engine, which encrypts all K clients one after
the other in one process, is reported too (round_ratio_sequential).

    nice -n 10 python benchmarks/secagg_overhead.py [--clients 10 50] [--sizes 100000]
                                                    [--repeats 3] [--train-round-s 3.0]

SecAgg+'s round trips (four, against CKKS's one) are not in these figures: they add network
latency, not CPU.

Targets: <= 30 upload bytes per parameter; a CKKS round <= 1.25x a plaintext round when local
training takes >= 3 s a round; error <= 1e-6 relative to max|sum|. Prints the ratios last and
writes benchmarks/results/secagg_overhead.json with the load average it ran under.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from privfl.config import ExperimentConfig
from privfl.fl.aggregate import Contribution, PlainSummation
from privfl.fl.secure.masking import FixedPoint
from privfl.fl.secure.secaggplus import ClientRound, ServerRound
from privfl.fl.secure.secaggplus_summation import EXTRA_VALUES, encode_keys, message_bytes
from privfl.fl.secure.summation import CkksSummation


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


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_memory_mib(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return {"rss_mib": out["VmRSS"], "peak_rss_mib": out["VmHWM"]}


def ckks_round(summation: CkksSummation, batch: list[Contribution], n_params: int, r: int) -> dict:
    t0 = time.perf_counter()
    summation.begin_round(r, n_params)
    pid = summation._process.process.pid
    kh_cpu0 = process_cpu_s(pid)
    for c in batch:
        summation.add(c)
    result = summation.finish()
    stats = dict(result.stats)
    stats["round_s"] = time.perf_counter() - t0
    stats["keyholder_cpu_s"] = process_cpu_s(pid) - kh_cpu0
    stats.update({f"keyholder_{k}": v for k, v in process_memory_mib(pid).items()})
    stats["bytes_per_param"] = stats["bytes_per_client"] / n_params
    return stats


def secagg_round(
    batch: list[Contribution], n_params: int, drop_after_mask: float, drop_after_keys: float, trace: bool
) -> dict:
    """One SecAgg+ round (t = floor(K/2) + 1 of all K): per-party CPU seconds, bytes, and with
    `trace` the server's memory (tracemalloc around each server step only; it slows what it traces,
    so the CPU figures come from rounds without it)."""
    import tracemalloc

    k = len(batch)
    fixed = FixedPoint(62, 65536.0, k)
    n_values = n_params + EXTRA_VALUES
    clients = {c.client_id: ClientRound(c.client_id) for c in batch}
    encoded = {}
    cpu = dict.fromkeys(clients, 0.0)
    up = dict.fromkeys(clients, 0)
    down = dict.fromkeys(clients, 0)
    server_cpu = 0.0
    peak = 0

    def client(cid, fn, *args):
        c0 = time.process_time()
        out = fn(*args)
        cpu[cid] += time.process_time() - c0
        up[cid] += message_bytes(out)
        return out

    def server(fn, *args):
        nonlocal server_cpu, peak
        if trace:  # what this step allocates, transient and kept (the state it keeps from earlier
            tracemalloc.start()  # steps is counted once, below)
        c0 = time.process_time()
        out = fn(*args)
        server_cpu += time.process_time() - c0
        if trace:
            peak = max(peak, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        return out

    keys = {}
    for c in batch:
        values = np.concatenate([c.vector, [c.weight]])
        encoded[c.client_id] = client(
            c.client_id, lambda v: np.concatenate([fixed.encode(v)[0], np.zeros(1, np.uint64)]), values
        )
        keys[c.client_id] = client(c.client_id, clients[c.client_id].advertise)
        up[c.client_id] = len(encode_keys(*keys[c.client_id]))  # the encoded vector stays on the client
    drop_keys = set(list(clients)[: int(drop_after_keys * k)])
    drop_mask = set(
        list(clients)[int(drop_after_keys * k) : int(drop_after_keys * k) + int(drop_after_mask * k)]
    )
    state = ServerRound(0, fixed, None, 0.5, n_values)
    to_send = server(state.collect_keys, keys, list(clients))
    shares = {}
    for cid, request in to_send.items():
        down[cid] += message_bytes(request)
        shares[cid] = client(cid, clients[cid].share_keys, *request)
    inbox = server(state.route_shares, shares)
    for cid, got in inbox.items():
        if cid in drop_keys:
            continue
        down[cid] += message_bytes(got)
        y = client(cid, clients[cid].masked_input, got, encoded[cid], fixed)
        server(state.add_masked, cid, y)
    requests = server(state.unmask_requests)
    replies = {}
    for cid, request in requests.items():
        if cid in drop_mask:
            continue
        down[cid] += message_bytes(request)
        replies[cid] = client(cid, clients[cid].unmask, *request)
    total = server(state.unmask, replies)
    server_state = state.masked_sum.nbytes + sum(message_bytes(v) for v in shares.values())
    decoded = fixed.decode(total)[:n_params]
    survivors = [c for c in batch if c.client_id not in drop_keys]
    want = sum(c.vector for c in survivors)
    return {
        "client_cpu_s": statistics.median(cpu.values()),
        "server_cpu_s": server_cpu,
        "upload_bytes_per_param": statistics.median(up.values()) / n_params,
        "download_bytes_per_param": statistics.median(down.values()) / n_params,
        "server_peak_mib": (peak + server_state) / 2**20 if trace else None,
        "survivors": len(survivors),
        "max_abs_error": float(np.max(np.abs(decoded - want))),
        "error_bound": fixed.sum_error_bound(len(survivors)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    ap.add_argument("--repeats", type=int, default=3, help="adapted rounds measured after round 0")
    ap.add_argument("--train-round-s", type=float, default=3.0, help="local training time of a round")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "secagg_overhead.json")
    args = ap.parse_args()

    load_before = os.getloadavg()
    results = []
    train = args.train_round_s
    for k in args.clients:
        cfg = ExperimentConfig().override({"secure.scheme": "ckks", "train.clients": k}).validate()
        for n in args.sizes:
            row = {"n_params": n, "clients": k, **ckks_rows(cfg, n, k, args.repeats, train)}
            for name, drop in (("secagg", 0.0), ("secagg_drop", 0.1)):
                traced = secagg_round(list(contributions(n, k, 0)), n, drop, drop, trace=True)
                runs = [
                    secagg_round(list(contributions(n, k, r)), n, drop, drop, trace=False)
                    for r in range(1, args.repeats + 1)
                ]
                med = {
                    key: statistics.median(s[key] for s in runs)
                    for key in runs[0]
                    if key != "server_peak_mib"
                }
                row[name] = {
                    **med,
                    "server_peak_mib": traced["server_peak_mib"],
                    "max_abs_error": max(s["max_abs_error"] for s in runs),
                    "round_ratio_cpu": (train + med["client_cpu_s"] + med["server_cpu_s"])
                    / (train + row["plain_sum_s"]),
                }
            results.append(row)
            c, s_, d = row, row["secagg"], row["secagg_drop"]
            print(
                f"n={n:>7} K={k:>3}: CKKS {c['bytes_per_param']:.2f} B/param up, client "
                f"{c['ckks_encrypt_per_client_cpu_s']:.3f} CPU s, key holder "
                f"{c['keyholder_cpu_s_per_round']:.2f} CPU s, RSS peak {c['keyholder_peak_rss_mib']:.0f} MiB"
            )
            print(
                f"          SecAgg+ {s_['upload_bytes_per_param']:.2f} B/param up "
                f"({s_['download_bytes_per_param']:.2f} down), client {s_['client_cpu_s']:.3f} CPU s, "
                f"server {s_['server_cpu_s']:.3f} CPU s, server peak {s_['server_peak_mib']:.1f} MiB, "
                f"error {s_['max_abs_error']:.1e} (bound {s_['error_bound']:.1e})"
            )
            print(
                f"          SecAgg+ with 10% dropping after keys and 10% after masking: server "
                f"{d['server_cpu_s']:.3f} CPU s, client {d['client_cpu_s']:.3f} CPU s, "
                f"{d['survivors']:.0f} survivors, error {d['max_abs_error']:.1e}"
            )
    result = {
        "command": "nice -n 10 python " + shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "train_round_s": args.train_round_s,
        "results": results,
        "load_average_before_after": [load_before, os.getloadavg()],
        "cpus": os.cpu_count(),
        "niceness": os.nice(0),
        "machine": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"load average before/after: {load_before[0]:.1f}/{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    for row in results:
        print(
            f"n={row['n_params']} K={row['clients']}: round ratio (train {train:.1f} s + scheme) / "
            f"(train + plain): CKKS {row['round_ratio_cpu']:.3f} CPU ({row['round_ratio']:.3f} wall), "
            f"SecAgg+ {row['secagg']['round_ratio_cpu']:.3f} CPU "
            f"({row['secagg_drop']['round_ratio_cpu']:.3f} with 20% dropouts); upload B/param: plain 4, "
            f"CKKS {row['bytes_per_param']:.2f}, SecAgg+ {row['secagg']['upload_bytes_per_param']:.2f}; "
            f"server memory MiB: CKKS key holder {row['keyholder_peak_rss_mib']:.0f} (RSS), SecAgg+ server "
            f"{row['secagg']['server_peak_mib']:.1f} (traced)"
        )


def ckks_rows(cfg: ExperimentConfig, n: int, k: int, repeats: int, train: float) -> dict:
    """The CKKS figures (and the plaintext sum's time) for K = k clients and n parameters."""
    summation = CkksSummation(cfg, debug_check=True)
    try:
        first = ckks_round(summation, list(contributions(n, k, 0)), n, 0)
        steady, plain = [], []
        for r in range(1, repeats + 1):
            batch = list(contributions(n, k, r))
            plain.append(plain_round(batch, n))
            steady.append(ckks_round(summation, batch, n, r))
    finally:
        summation.close()
    keys = ("encrypt_s", "encrypt_cpu_s", "aggregate_s", "decrypt_s", "round_s", "keyholder_cpu_s")
    med = {key: statistics.median(s[key] for s in steady) for key in keys}
    plain_s = statistics.median(plain)
    encrypt_one, encrypt_one_cpu = med["encrypt_s"] / k, med["encrypt_cpu_s"] / k
    parallel = encrypt_one + med["aggregate_s"] + med["decrypt_s"]
    # CPU view, less sensitive to other load: one client's encryption, then the key holder's
    # CPU for verifying, summing and releasing (the relay's own work overlaps with it)
    parallel_cpu = encrypt_one_cpu + med["keyholder_cpu_s"]
    return {
        "plain_sum_s": plain_s,
        "ckks_round_s_sequential": med["round_s"],
        "ckks_round_s_parallel_clients": parallel,
        "ckks_encrypt_per_client_s": encrypt_one,
        "ckks_encrypt_per_client_cpu_s": encrypt_one_cpu,
        "ckks_round_cpu_s_parallel_clients": parallel_cpu,
        "ckks_relay_and_keyholder_sum_s": med["aggregate_s"],
        "ckks_release_s": med["decrypt_s"],
        "keyholder_cpu_s_per_round": med["keyholder_cpu_s"],
        "keyholder_rss_mib": steady[-1]["keyholder_rss_mib"],
        "keyholder_peak_rss_mib": max(s["keyholder_peak_rss_mib"] for s in steady),
        "bytes_per_param": statistics.median(s["bytes_per_param"] for s in steady),
        "plain_bytes_per_param": 4.0,  # float32 update
        "max_rel_error": max(s["max_rel_error"] for s in steady),
        "round0": {
            key: first[key] for key in ("round_s", "bytes_per_param", "max_rel_error", "he_bound_bits")
        },
        "bound_bits": steady[-1]["he_bound_bits"],
        "round_ratio": (train + parallel) / (train + plain_s),
        "round_ratio_cpu": (train + parallel_cpu) / (train + plain_s),
        "round_ratio_sequential": (train + med["round_s"]) / (train + plain_s),
    }


if __name__ == "__main__":
    main()
