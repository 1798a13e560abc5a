"""The privacy-utility benchmark: for one corpus and model, what each defence costs and what it stops.

For every grid point and seed (and speaker fold, where the grid lists folds): train (or resume,
or reuse) a run directory under out/points/<point>-s<seed>/ (<point>-s<seed>-f<fold>/), attack it
(gender inference, membership inference), and collect test UAR, (epsilon, delta), attack AUCs and
TPR at 1 % FPR, wall times and upload size. Then write results.csv (one row per point: mean and
spread over seeds and folds), runs.csv (one row per run), results.json (everything, with the grid
and the environment), results.md and three plots.

    from privfl.bench import default_grid, run_privacy_utility
    doc = run_privacy_utility(default_grid(), Path("bench/pu"))
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from privfl import __version__
from privfl.bench.grid import Grid
from privfl.bench.points import DONE, STATUS_WORD, ensure_run, missing_attacks, missing_for, run_state
from privfl.bench.reporter import Reporter
from privfl.errors import AttackError
from privfl.runs import RunDir, atomic_write_bytes, atomic_write_json

TIMING_KEYS = ("point", "seed", "fold", "status", "setup_s", "train_s", "attack_s", "wall_s", "cpu_s")
BENCH_FILE = "bench.json"  # in each point's run directory: its attack summary and the plan that made it


# --- statistics over seeds ------------------------------------------------------------------------
def spread(values: list[float | None]) -> dict[str, Any] | None:
    """mean, sample standard deviation (0 for one value), min, max and n of the non-missing values."""
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None
    return {
        "mean": statistics.fmean(v),
        "sd": statistics.stdev(v) if len(v) > 1 else 0.0,
        "min": min(v),
        "max": max(v),
        "n": len(v),
    }


# --- attack results -> the numbers a table shows -------------------------------------------------
def summarise_attacks(results: list) -> dict[str, Any]:
    """Headline numbers from attacks' AttackResult list.

    gender: the per-client-update attack (the server's view); under secure aggregation the server
    has no per-client update, so that row is unscored and its reason is kept. membership: the
    strongest non-control variant, per metric (the defender's worst case), naming the variant.
    """
    out: dict[str, Any] = {}
    for result in results:
        rows = [r for r in result.rows if not r.control]
        controls = [r for r in result.rows if r.control and r.metrics]
        if result.attack == "gender":
            main = next((r for r in rows if "per-client" in r.name), None)
            agg = next((r for r in rows if "aggregate" in r.name), None)
            g: dict[str, Any] = {"observed": result.observed, "seconds": result.seconds}
            if main is not None and main.metrics is not None:
                m = main.metrics
                g.update(
                    auc=m["auc"],
                    auc_ci95=m.get("auc_ci95"),
                    balanced_accuracy=m["balanced_accuracy"],
                    tpr_at_1pct_fpr=m["tpr_at_1pct_fpr"],
                    n=m["n_positive"] + m["n_negative"],
                )
            else:
                g["reason"] = main.reason if main is not None else "no per-client row"
            if agg is not None and agg.metrics is not None:
                g["aggregate_auc"] = agg.metrics["auc"]
            if controls:
                g["control_auc"] = controls[0].metrics["auc"]
            out["gender"] = g
        elif result.attack == "membership":
            scored = [r for r in rows if r.metrics is not None]
            mem: dict[str, Any] = {"observed": result.observed, "seconds": result.seconds}
            if scored:
                best_auc = max(scored, key=lambda r: r.metrics["auc"])
                best_tpr = max(scored, key=lambda r: r.metrics["tpr_at_1pct_fpr"])
                mem.update(
                    auc=best_auc.metrics["auc"],
                    auc_ci95=best_auc.metrics.get("auc_ci95"),
                    auc_attack=best_auc.name.split(": ", 1)[-1],
                    tpr_at_1pct_fpr=best_tpr.metrics["tpr_at_1pct_fpr"],
                    tpr_attack=best_tpr.name.split(": ", 1)[-1],
                    fpr_resolution=max(r.metrics["fpr_resolution"] for r in scored),
                    variants={
                        r.name.split(": ", 1)[-1]: {
                            "auc": r.metrics["auc"],
                            "tpr_at_1pct_fpr": r.metrics["tpr_at_1pct_fpr"],
                        }
                        for r in scored
                    },
                )
            else:
                mem["reason"] = "; ".join(r.reason for r in rows if r.reason) or "no scored variant"
            checked = [r.dp for r in rows if r.dp]
            if checked:
                mem["dp_bound_respected"] = all(d["respects_bound"] for d in checked)
                mem["empirical_epsilon_lower_bound"] = max(
                    d["empirical_epsilon"]["clopper_pearson"] for d in checked
                )
            if controls:
                mem["control_auc"] = max(r.metrics["auc"] for r in controls)
            out["membership"] = mem
    return out


def bytes_per_client_round(metrics: list[dict]) -> float | None:
    """Mean bytes one participating client uploads in one round (total upload / client-rounds).

    User-level DP runs keep no per-round client count (it would reveal the secret sample): then
    the mean of the per-client upload each round records.
    """
    clients = sum(int(m.get("clients", 0)) for m in metrics)
    if clients:
        return sum(int(m.get("bytes_up", 0)) for m in metrics) / clients
    per_client = [float(m["bytes_per_client"]) for m in metrics if "bytes_per_client" in m]
    return sum(per_client) / len(per_client) if per_client else None


# --- running the grid -----------------------------------------------------------------------------
def run_privacy_utility(
    grid: Grid,
    out: Path,
    *,
    reporter: Reporter | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Run (or reuse) every point x seed (x fold) of `grid` into `out` and write the results; returns
    results.json."""
    started = time.perf_counter()
    rep = reporter or Reporter()
    grid.validate()
    out = Path(out)
    load_before = _loadavg()
    stages = {"setup": 0.0, "train": 0.0, "attacks": 0.0, "report": 0.0}
    # CPU seconds of this process per stage: less sensitive than wall time to other jobs on the machine
    cpu = {"setup+train": 0.0, "attacks": 0.0}

    attack_block = missing_attacks() if grid.attacks.which else None
    if attack_block:
        rep.note(f"attacks skipped: {attack_block}")
    skipped: list[dict] = []
    runnable = []
    for point in grid.points:
        why = missing_for(grid.config_for(point, *grid.repeats()[0]))
        if why:
            skipped.append({"point": point.name, "defence": point.defence, "reason": why})
            rep.note(f"point {point.name} ({point.defence}) skipped: {why}")
        else:
            runnable.append(point)
    # refuse a directory of another experiment before anything trains
    for point in runnable:
        for seed, fold in grid.repeats():
            run_state(_run_path(out, point.name, seed, fold), grid.config_for(point, seed, fold))

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "grid.toml", grid.to_toml().encode())
    rep.grid_started(len(runnable) * len(grid.repeats()))
    runs: list[dict] = []
    for point in runnable:
        for seed, fold in grid.repeats():
            record = _run_point(grid, point, seed, fold, out, rep, stages, cpu, attack_block)
            runs.append(record)
            rep.run_finished(record)

    t_report = time.perf_counter()
    doc = _document(grid, runs, skipped, command, attack_block)
    doc["timings"] = {
        "stages_s": stages,
        "stages_cpu_s": cpu,
        "total_s": None,
        "load_average_before": load_before,
        "runs": [{k: r[k] for k in TIMING_KEYS} for r in runs],
    }
    write_outputs(doc, out)
    stages["report"] = time.perf_counter() - t_report
    doc["timings"]["total_s"] = time.perf_counter() - started
    doc["timings"]["load_average_after"] = _loadavg()
    write_outputs(doc, out, plots=False)  # again, now with the report stage and the total
    return doc


def _run_path(out: Path, point: str, seed: int, fold: int = 0) -> Path:
    return out / "points" / (f"{point}-s{seed}" + (f"-f{fold}" if fold else ""))


def _run_point(
    grid: Grid, point, seed: int, fold: int, out: Path, rep: Reporter, stages: dict, cpu: dict, attack_block
) -> dict:
    cfg = grid.config_for(point, seed, fold)
    path = _run_path(out, point.name, seed, fold)
    label = f"{point.name} s{seed}" + (f" f{fold}" if fold else "")
    state = run_state(path, cfg)
    rep.run_started(label, state, cfg.train.rounds)
    t0, c0 = time.perf_counter(), time.process_time()
    summary, state, spent = ensure_run(cfg, path, on_round=rep.round_done, on_stage=rep.stage)
    c1 = time.process_time()
    cpu["setup+train"] += c1 - c0
    if state != DONE:
        stages["setup"] += summary["setup_seconds"]
        stages["train"] += max(spent - summary["setup_seconds"], 0.0)
    run = RunDir.open(path)
    record: dict[str, Any] = {
        "point": point.name,
        "defence": point.defence,
        "seed": seed,
        "fold": fold,
        "status": STATUS_WORD[state],
        "run_dir": str(path),
        "mode": summary["mode"],
        "secure_aggregation": summary["secure_aggregation"],
        "rounds": summary["rounds"],
        "clients": summary["clients"],
        "test_uar_final": summary["final_test_uar"],
        "test_uar_at_best_val": summary["test_uar_at_best_val"],
        "best_round": summary["best_round"],
        "bytes_up_per_client_round": bytes_per_client_round(run.metrics()),
        "setup_s": summary["setup_seconds"],
        "train_s": summary["train_seconds"],
    }
    privacy = summary.get("privacy")
    if privacy:
        observers = privacy.get("observers", {})
        record.update(
            epsilon=privacy["epsilon"],  # against a holder of the released model
            epsilon_server=_get(observers, "server", "epsilon"),  # None: no bound holds
            epsilon_other_client=_get(observers, "other_client", "epsilon"),
            noise=privacy.get("noise"),  # "os", or "seeded": no DP guarantee against seed holders
            delta=privacy["delta"],
            dp_unit=privacy.get("unit"),
            sigma=privacy.get("sigma"),
        )
    else:
        record.update(
            epsilon=math.inf,
            epsilon_server=math.inf,
            epsilon_other_client=math.inf,
            noise=None,
            delta=None,
            dp_unit=None,
            sigma=None,
        )

    # bench.json: what this benchmark adds to the run directory (corpus version, attack summary)
    bench = _read_json(path / BENCH_FILE) if state == DONE else {"corpus": _corpus_version(cfg)}
    record["corpus"] = bench.get("corpus", {})
    if state == DONE and record["corpus"] and record["corpus"] != _corpus_version(cfg):
        rep.note(
            f"{label} was trained on corpus {record['corpus']}, this privfl makes {_corpus_version(cfg)}; "
            f"delete {path} to retrain it on the current one"
        )
    changed = state != DONE
    attacks: dict[str, Any] = {}
    attack_s = 0.0
    if grid.attacks.which and not attack_block:
        plan = {**grid.attacks.to_dict(), "seed": seed, "rounds": summary["rounds"]}
        # a failed attack is not a result: try it again (the failure may have been fixed since)
        if bench.get("plan") == plan and "attacks" in bench and "error" not in bench["attacks"]:
            attacks, attack_s = bench["attacks"], float(bench.get("attack_s", 0.0))
        else:
            attacks, attack_s = _attack(grid, seed, path, rep)
            bench.update(plan=plan, attacks=attacks, attack_s=attack_s)
            stages["attacks"] += attack_s
            changed = True
        cpu["attacks"] += time.process_time() - c1
    elif grid.attacks.which:
        attacks = {"error": attack_block}
    if changed:
        atomic_write_json(path / BENCH_FILE, bench)
    record["attack_s"] = attack_s
    record["attacks"] = attacks
    record["wall_s"] = time.perf_counter() - t0
    record["cpu_s"] = time.process_time() - c0
    return record


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _attack(grid: Grid, seed: int, path: Path, rep: Reporter) -> tuple[dict, float]:
    """Attack one finished run: (summary of the results, seconds); the full report goes to path/attacks."""
    from privfl.attacks import run_attacks, write_report

    gender, membership = grid.attacks.configs(seed)
    t0 = time.perf_counter()
    try:
        observed, results = run_attacks(
            path, grid.attacks.which, gender=gender, membership=membership, progress=rep.stage
        )
        write_report(path / "attacks", observed, results)
        attacks = summarise_attacks(results)
    except AttackError as exc:
        # the attack does not apply to this run (e.g. no auxiliary speakers); the row says why
        attacks = {"error": str(exc)}
        rep.note(f"{path.name}: attacks not run: {exc}")
    return attacks, time.perf_counter() - t0


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --- results ------------------------------------------------------------------------------------
def _document(grid: Grid, runs: list[dict], skipped: list[dict], command: str, attack_block) -> dict:
    import torch

    points = []
    for point in grid.points:
        mine = [r for r in runs if r["point"] == point.name]
        if not mine:
            continue
        points.append(_aggregate_point(point.name, point.defence, mine))
    baseline = next((p for p in points if p["defence"] == "none"), None)
    for p in points:
        p["vs_baseline"] = _versus(p, baseline) if baseline is not None else None
    return {
        "benchmark": "privacy-utility",
        "privfl_version": __version__,
        "command": command,
        "grid": grid.to_dict(),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            **_corpus_version(grid.base),
        },
        "baseline": baseline["point"] if baseline else None,
        "corpus_versions": sorted({v for r in runs for v in r["corpus"].values()}),
        "points": points,
        "skipped": skipped,
        "attacks_skipped": attack_block,
    }


def _corpus_version(cfg) -> dict[str, str]:
    """The synthetic generator's version: its corpus, and so the numbers, change when it does."""
    if cfg.data.dataset != "synthetic":
        return {}
    from privfl.data.synthesis import GENERATOR_VERSION

    return {"synthetic_generator": GENERATOR_VERSION}


def _get(r: dict, *keys: str) -> Any:
    node: Any = r
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


def _aggregate_point(name: str, defence: str, runs: list[dict]) -> dict:
    eps = [r["epsilon"] for r in runs]
    finite = [e for e in eps if e is not None and math.isfinite(e)]
    gender_reasons = sorted(
        {_get(r, "attacks", "gender", "reason") or _get(r, "attacks", "error") or "" for r in runs} - {""}
    )
    mem_attack = sorted({_get(r, "attacks", "membership", "auc_attack") or "" for r in runs} - {""})
    respected = [_get(r, "attacks", "membership", "dp_bound_respected") for r in runs]
    respected = [x for x in respected if x is not None]
    return {
        "point": name,
        "defence": defence,
        "seeds": [r["seed"] for r in runs],
        "folds": [r.get("fold", 0) for r in runs],
        "status": sorted({r["status"] for r in runs}),
        "epsilon": spread(finite) if finite else None,
        "epsilon_server": _observer_spread(runs, "epsilon_server"),
        "epsilon_other_client": _observer_spread(runs, "epsilon_other_client"),
        "noise": ", ".join(sorted({r.get("noise") or "" for r in runs} - {""})) or None,
        "delta": max((r["delta"] for r in runs if r["delta"] is not None), default=None),
        "dp_unit": runs[0]["dp_unit"],
        "sigma": runs[0]["sigma"],
        "test_uar_final": spread([r["test_uar_final"] for r in runs]),
        "test_uar_at_best_val": spread([r["test_uar_at_best_val"] for r in runs]),
        "gender_auc": spread([_get(r, "attacks", "gender", "auc") for r in runs]),
        "gender_control_auc": spread([_get(r, "attacks", "gender", "control_auc") for r in runs]),
        "gender_note": "; ".join(gender_reasons),
        "membership_auc": spread([_get(r, "attacks", "membership", "auc") for r in runs]),
        "membership_tpr_at_1pct_fpr": spread(
            [_get(r, "attacks", "membership", "tpr_at_1pct_fpr") for r in runs]
        ),
        "membership_attack": ", ".join(mem_attack),
        "membership_control_auc": spread([_get(r, "attacks", "membership", "control_auc") for r in runs]),
        "dp_bound_respected": all(respected) if respected else None,
        "empirical_epsilon_lower_bound": spread(
            [_get(r, "attacks", "membership", "empirical_epsilon_lower_bound") for r in runs]
        ),
        "bytes_up_per_client_round": spread([r["bytes_up_per_client_round"] for r in runs]),
        "train_s": spread([r["setup_s"] + r["train_s"] for r in runs]),
        "attack_s": spread([r["attack_s"] for r in runs]),
        "runs": runs,
    }


def _observer_spread(runs: list[dict], key: str) -> dict | str | None:
    """An observer's epsilon over seeds: a spread, "none" where no bound holds, None without DP."""
    values = [r.get(key) for r in runs]
    if any(v is None for v in values):
        return "none"
    finite = [v for v in values if math.isfinite(v)]
    return spread(finite) if finite else None


def _versus(p: dict, base: dict) -> dict:
    """Utility cost and attack success removed relative to the undefended point (means over seeds)."""

    def mean(d: dict, key: str) -> float | None:
        return d[key]["mean"] if d.get(key) else None

    out: dict[str, Any] = {}
    u, u0 = mean(p, "test_uar_final"), mean(base, "test_uar_final")
    out["uar_cost_pp"] = None if u is None or u0 is None else 100.0 * (u0 - u)
    for key in ("gender_auc", "membership_auc"):
        a, a0 = mean(p, key), mean(base, key)
        out[f"{key}_drop"] = None if a is None or a0 is None else a0 - a
    return out


# --- files --------------------------------------------------------------------------------------
POINT_COLUMNS = [
    "point",
    "defence",
    "n_seeds",
    "n_folds",
    "epsilon",
    "epsilon_server",
    "epsilon_other_client",
    "dp_noise",
    "delta",
    "sigma",
    "test_uar_mean",
    "test_uar_sd",
    "test_uar_best_val_mean",
    "gender_auc_mean",
    "gender_auc_sd",
    "membership_auc_mean",
    "membership_auc_sd",
    "membership_tpr_1pct_mean",
    "membership_tpr_1pct_sd",
    "uar_cost_pp",
    "gender_auc_drop",
    "membership_auc_drop",
    "bytes_up_per_client_round",
    "train_s_mean",
    "attack_s_mean",
    "dp_bound_respected",
]
RUN_COLUMNS = [
    "point",
    "defence",
    "seed",
    "fold",
    "status",
    "epsilon",
    "epsilon_server",
    "epsilon_other_client",
    "dp_noise",
    "delta",
    "test_uar_final",
    "test_uar_at_best_val",
    "best_round",
    "gender_auc",
    "membership_auc",
    "membership_auc_attack",
    "membership_tpr_1pct",
    "membership_tpr_attack",
    "bytes_up_per_client_round",
    "setup_s",
    "train_s",
    "attack_s",
    "run_dir",
]


def _m(d: dict | None, key: str = "mean") -> Any:
    return None if d is None else d[key]


def point_row(p: dict) -> dict:
    """A results.csv row of one aggregated point."""
    vs = p.get("vs_baseline") or {}
    return {
        "point": p["point"],
        "defence": p["defence"],
        "n_seeds": len(set(p["seeds"])),
        "n_folds": len(set(p.get("folds", ())) - {0}),
        "epsilon": _m(p["epsilon"]) if p["epsilon"] else math.inf,
        "epsilon_server": _observer_cell(p.get("epsilon_server")),
        "epsilon_other_client": _observer_cell(p.get("epsilon_other_client")),
        "dp_noise": p.get("noise"),
        "delta": p["delta"],
        "sigma": p["sigma"],
        "test_uar_mean": _m(p["test_uar_final"]),
        "test_uar_sd": _m(p["test_uar_final"], "sd"),
        "test_uar_best_val_mean": _m(p["test_uar_at_best_val"]),
        "gender_auc_mean": _m(p["gender_auc"]),
        "gender_auc_sd": _m(p["gender_auc"], "sd"),
        "membership_auc_mean": _m(p["membership_auc"]),
        "membership_auc_sd": _m(p["membership_auc"], "sd"),
        "membership_tpr_1pct_mean": _m(p["membership_tpr_at_1pct_fpr"]),
        "membership_tpr_1pct_sd": _m(p["membership_tpr_at_1pct_fpr"], "sd"),
        "uar_cost_pp": vs.get("uar_cost_pp"),
        "gender_auc_drop": vs.get("gender_auc_drop"),
        "membership_auc_drop": vs.get("membership_auc_drop"),
        "bytes_up_per_client_round": _m(p["bytes_up_per_client_round"]),
        "train_s_mean": _m(p["train_s"]),
        "attack_s_mean": _m(p["attack_s"]),
        "dp_bound_respected": p["dp_bound_respected"],
    }


def _observer_cell(v: dict | str | None) -> Any:
    if v is None:
        return math.inf
    return v if isinstance(v, str) else v["mean"]


def run_row(r: dict) -> dict:
    """A runs.csv row of one (point, seed) run."""
    return {
        "point": r["point"],
        "defence": r["defence"],
        "seed": r["seed"],
        "fold": r.get("fold", 0),
        "status": r["status"],
        "epsilon": r["epsilon"],
        "epsilon_server": "none" if r.get("epsilon_server", math.inf) is None else r.get("epsilon_server"),
        "epsilon_other_client": (
            "none" if r.get("epsilon_other_client", math.inf) is None else r.get("epsilon_other_client")
        ),
        "dp_noise": r.get("noise"),
        "delta": r["delta"],
        "test_uar_final": r["test_uar_final"],
        "test_uar_at_best_val": r["test_uar_at_best_val"],
        "best_round": r["best_round"],
        "gender_auc": _get(r, "attacks", "gender", "auc"),
        "membership_auc": _get(r, "attacks", "membership", "auc"),
        "membership_auc_attack": _get(r, "attacks", "membership", "auc_attack"),
        "membership_tpr_1pct": _get(r, "attacks", "membership", "tpr_at_1pct_fpr"),
        "membership_tpr_attack": _get(r, "attacks", "membership", "tpr_attack"),
        "bytes_up_per_client_round": r["bytes_up_per_client_round"],
        "setup_s": r["setup_s"],
        "train_s": r["train_s"],
        "attack_s": r["attack_s"],
        "run_dir": r["run_dir"],
    }


def _csv(rows: list[dict], columns: list[str]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: _cell(row.get(k)) for k in columns})
    return buf.getvalue().encode()


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.6g}"
    return v


def _jsonable(node: Any) -> Any:
    """JSON has no infinity: epsilon of an undefended run is written as the string "inf"."""
    if isinstance(node, dict):
        return {k: _jsonable(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_jsonable(v) for v in node]
    if isinstance(node, float) and not math.isfinite(node):
        return "inf" if node > 0 else None
    return node


def write_outputs(doc: dict, out: Path, plots: bool = True) -> None:
    """results.json, results.csv, runs.csv, results.md and (with plots) the figures."""
    out = Path(out)
    atomic_write_json(out / "results.json", _jsonable(doc))
    atomic_write_bytes(out / "results.csv", _csv([point_row(p) for p in doc["points"]], POINT_COLUMNS))
    atomic_write_bytes(
        out / "runs.csv", _csv([run_row(r) for p in doc["points"] for r in p["runs"]], RUN_COLUMNS)
    )
    if plots:
        from privfl.bench.plots import attack_vs_epsilon, frontier, uar_vs_epsilon

        uar_vs_epsilon(doc["points"], out / "uar_vs_epsilon.png")
        attack_vs_epsilon(doc["points"], out / "attack_vs_epsilon.png")
        frontier(doc["points"], out / "frontier.png")
    atomic_write_bytes(out / "results.md", markdown(doc).encode())


PLOTS = ("uar_vs_epsilon.png", "attack_vs_epsilon.png", "frontier.png")


def _pm(d: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    if d is None:
        return "n/a"
    if d["n"] > 1:
        return f"{scale * d['mean']:.{digits}f} ± {scale * d['sd']:.{digits}f}"
    return f"{scale * d['mean']:.{digits}f}"


def _eps_cell(p: dict) -> str:
    if p["epsilon"] is None:
        return "∞"
    e = p["epsilon"]["mean"]
    return f"{e:.3g}" if e < 1e4 else f"{e:.2e}"


def _observer_eps_cell(v: dict | str | None) -> str:
    if v is None:
        return "∞"
    if isinstance(v, str):
        return v
    e = v["mean"]
    return f"{e:.3g}" if e < 1e4 else f"{e:.2e}"


def _noise_cell(p: dict) -> str:
    return {"os": "OS", "seeded": "seeded ³"}.get(p.get("noise") or "", p.get("noise") or "")


def _delta_cell(delta: float | None) -> str:
    return "" if delta is None else f"{delta:.0e}"


def _bytes(v: float | None) -> str:
    if v is None:
        return "n/a"
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if v >= size:
            return f"{v / size:.3g} {unit}"
    return f"{v:.0f} B"


def markdown_table(doc: dict) -> str:
    """The results table in Markdown: one row per grid point, mean ± sd over seeds (and folds)."""
    head = (
        "| point | defence | DP noise | ε released model | ε server | ε another client | δ "
        "| test UAR % | gender AUC | membership AUC | membership TPR@1%FPR | upload / client / round "
        "| train s | attack s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for p in doc["points"]:
        gender = _pm(p["gender_auc"])
        if p["gender_auc"] is None and p["gender_note"]:
            gender = "n/a ¹" if "secure aggregation" in p["gender_note"] else "n/a ²"
        lines.append(
            f"| {p['point']} | {p['defence']} | {_noise_cell(p)} | {_eps_cell(p)} | "
            f"{_observer_eps_cell(p.get('epsilon_server', p['epsilon']))} | "
            f"{_observer_eps_cell(p.get('epsilon_other_client', p['epsilon']))} | "
            f"{_delta_cell(p['delta'])} | {_pm(p['test_uar_final'], 100, 1)} | "
            f"{gender} | {_pm(p['membership_auc'])} | {_pm(p['membership_tpr_at_1pct_fpr'])} | "
            f"{_bytes(_m(p['bytes_up_per_client_round']))} | {_pm(p['train_s'], digits=0)} | "
            f"{_pm(p['attack_s'], digits=0)} |"
        )
    return "\n".join(lines)


def markdown_versus(doc: dict) -> str:
    """What each defence costs (UAR points) and removes (attack AUC) against the undefended point."""
    lines = ["| point | UAR cost (pp) | gender AUC removed | membership AUC removed |", "|---|---|---|---|"]
    for p in doc["points"]:
        vs = p.get("vs_baseline") or {}
        if p["point"] == doc.get("baseline"):
            continue
        f = lambda v, d=3: "n/a" if v is None else f"{v:+.{d}f}"  # noqa: E731
        gender = f(vs.get("gender_auc_drop"))
        if vs.get("gender_auc_drop") is None and "secure aggregation" in p["gender_note"]:
            gender = "all ¹"  # the per-client update it reads is never seen
        member = f(vs.get("membership_auc_drop"))
        lines.append(f"| {p['point']} | {f(vs.get('uar_cost_pp'), 1)} | {gender} | {member} |")
    return "\n".join(lines)


def markdown(doc: dict) -> str:
    """results.md: the command, the table, costs against the baseline, notes and the plots."""
    grid = doc["grid"]
    base = grid["base"]
    t = base.get("train", {})
    d = base.get("data", {})
    env = doc["environment"]
    parts = [
        f"# Privacy-utility benchmark: {grid['name']}",
        "",
        f"`{doc['command']}`" if doc.get("command") else "",
        "",
        f"{d.get('dataset')} corpus, {base.get('model', {}).get('name')} model, K={t.get('clients')} clients "
        f"({d.get('partition')}), {t.get('rounds')} rounds, B={t.get('batch_size')}, "
        f"E={t.get('local_epochs')}, lr={t.get('lr')}, momentum={t.get('momentum')}; seeds {grid['seeds']}"
        + (f", speaker folds {grid['folds']} of {d.get('folds')}" if grid.get("folds") else "")
        + f". Values are mean ± sd over {'folds' if grid.get('folds') else 'seeds'}; UAR of the "
        f"final model on the test speakers. privfl {doc['privfl_version']}, torch {env['torch']}, "
        f"{env['cpus']} CPUs"
        + (f", synthetic corpus {env['synthetic_generator']}." if env.get("synthetic_generator") else "."),
        "",
        markdown_table(doc),
        "",
    ]
    if doc.get("baseline"):
        parts += [f"Against the undefended point ({doc['baseline']}):", "", markdown_versus(doc), ""]
    notes = [
        "ε is for the unit each mode protects (record-level DP: one utterance of one client; user-level DP: "
        "all data of one client); record-level ε is the largest over clients. ∞: no DP. Per observer "
        "(docs/privacy.md): the released model's ε uses subsampling amplification; against the server "
        "and another client amplification applies only where they do not know the sample; none: no "
        "bound holds against that observer (user-level DP without secure aggregation: the server sees "
        "every clipped update).",
        "DP noise: OS = every party's noise and sample from its own OS entropy; seeded ³ = derived from "
        "the config seed for bit-identical reruns.",
        "gender AUC: shadow-model attribute inference on each client's update (what the server sees without "
        "secure aggregation).",
        "membership AUC and TPR@1%FPR: the strongest non-control membership attack of the run, per metric "
        "(loss threshold on the final model, update alignment on per-client or aggregate updates).",
        "upload: bytes one participating client sends per round (CKKS ciphertexts under secure aggregation).",
        "train s: data preparation + training wall time of one run; attack s: both attacks on it.",
    ]
    if any(p.get("noise") == "seeded" for p in doc["points"]):
        notes.append("³ seeded noise: no DP guarantee against anyone who holds the seed")
    gender_na = sorted(
        {p["gender_note"] for p in doc["points"] if p["gender_auc"] is None and p["gender_note"]}
    )
    for n in gender_na:
        mark = "¹" if "secure aggregation" in n else "²"
        notes.append(f"{mark} gender n/a: {n}")
    if len(doc.get("corpus_versions", [])) > 1:
        notes.append(
            "the points were trained on different synthetic corpus versions "
            f"({', '.join(doc['corpus_versions'])}): delete the older point directories and rerun"
        )
    for s in doc.get("skipped", []):
        notes.append(f"skipped point {s['point']} ({s['defence']}): {s['reason']}")
    if doc.get("attacks_skipped"):
        notes.append(f"attacks skipped: {doc['attacks_skipped']}")
    parts += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    timings = doc.get("timings")
    if timings:
        st = timings["stages_s"]
        parts += [
            "Wall time of this invocation by stage (s): "
            + ", ".join(f"{k} {v:.0f}" for k, v in st.items())
            + (f"; total {timings['total_s']:.0f}" if timings.get("total_s") else "")
            + (
                f"; load average before {timings['load_average_before']}"
                if timings.get("load_average_before")
                else ""
            ),
            "",
        ]
    parts += [f"![{name}]({name})" for name in PLOTS] + [""]
    return "\n".join(parts)
