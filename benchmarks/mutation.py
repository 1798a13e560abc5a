"""Mutation score of the privacy core: how many plausible one-line bugs do the tests catch?

Runs mutmut (the optional extra `mutation`: pip install -e '.[mutation]') over each core module
in a scratch copy of the tree, running only that module's test files, and records per module the
mutants killed, the survivors (name and diff) and the wall time. Equivalent mutants (no test can
tell them from the original) are listed with a reason in benchmarks/mutation_equivalent.toml and
left out of the score:

    score = killed / (mutants - equivalent)      # timeouts count as killed

    nice -n 10 python benchmarks/mutation.py [--module privfl/metrics.py ...] [--jobs 2]

A benchmark, not a CI job (the whole core takes about an hour on 2 cores). Results of the modules
run are merged into benchmarks/results/mutation.json; the overall score is printed last.
Target: >= 0.90 over the privacy core.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mutation.json"
EQUIVALENT = ROOT / "benchmarks" / "mutation_equivalent.toml"

CORE: dict[str, list[str]] = {
    "privfl/metrics.py": ["tests/test_metrics.py"],
    "privfl/fl/aggregate.py": ["tests/fl/test_aggregate.py", "tests/fl/test_plain_summation_halves.py"],
    "privfl/privacy.py": [
        "tests/test_privacy.py",
        "tests/test_privacy_bounds.py",
        "tests/test_privacy_validation.py",
        "tests/test_privacy_calibration.py",
    ],
    "privfl/fl/dp.py": [
        "tests/fl/test_dp.py",
        "tests/fl/test_dp_policy_edges.py",
        "tests/fl/test_user_dp_exact.py",
        "tests/fl/test_dp_reports_and_sampling.py",
        # the one test of the Dirac canaries DP-SGD appends as per-sample gradients
        "tests/attacks/test_audit_canaries.py::test_dp_sgd_canaries_pass_clipping_and_noise_and_change_only_their_coordinates",
    ],
    "privfl/fl/secure/packing.py": [
        "tests/fl/test_secure.py",
        "tests/fl/test_keyholder_protocol.py",
        "tests/fl/test_packing_bounds.py",
    ],
    "privfl/fl/secure/payload.py": [
        "tests/fl/test_secure.py",
        "tests/fl/test_keyholder_protocol.py",
        "tests/fl/test_payload_format.py",
    ],
    "privfl/fl/secure/keyholder.py": [
        "tests/fl/test_secure.py",
        "tests/fl/test_keyholder_attacks.py",
        "tests/fl/test_keyholder_refusals.py",
    ],
    "privfl/fl/secure/encryptor.py": [
        "tests/fl/test_secure.py",
        "tests/fl/test_keyholder_attacks.py",
        "tests/fl/test_encryptor_refusals.py",
    ],
    "privfl/fl/secure/enrolment.py": [
        "tests/fl/test_keyholder_protocol.py",
        "tests/fl/test_enrolment_files.py",
    ],
    # its unit tests (a key holder in a thread, and two spawned ones); the FedAvg runs through it
    # (tests/fl/test_federation.py, tests/fl/test_keyholder_run.py) train models, seconds a mutant
    "privfl/fl/secure/summation.py": ["tests/fl/test_ckks_summation_relay.py"],
    "privfl/fl/secure/service.py": [
        "tests/fl/test_keyholder_protocol.py",
        "tests/fl/test_keyholder_attacks.py",
        "tests/fl/test_keyholder_service.py",
    ],
    "privfl/fl/secure/masking.py": ["tests/fl/test_secaggplus.py"],
    "privfl/fl/secure/secaggplus.py": [
        "tests/fl/test_secaggplus.py",
        "tests/fl/test_secaggplus_protocol_edges.py",
    ],
    "privfl/fl/secure/secaggplus_summation.py": [
        "tests/fl/test_secaggplus.py",
        "tests/fl/test_secaggplus_summation_wrapper.py",
        "tests/fl/test_secaggplus_flower.py::test_stage_messages_survive_the_wire_format",
    ],
    "privfl/fl/secure/discrete_noise.py": [
        "tests/fl/test_discrete_noise.py",
        # the sampler's and the shares' unit tests, not the training runs beside them
        "tests/fl/test_secaggplus_run.py::test_discrete_gaussian_has_the_stated_moments_and_tau",
        "tests/fl/test_secaggplus_run.py::test_noise_shares_sit_on_the_grid_and_sum_to_the_full_variance",
        "tests/fl/test_noise_regeneration.py::test_client_cannot_regenerate_other_clients_noise_shares",
    ],
    "privfl/data/splits.py": [
        "tests/data/test_splits.py",
        "tests/data/test_splits_edges.py",
        # the unit tests of k-fold and manifest splits, not the training runs beside them
        "tests/test_folds.py::test_folds_cover_every_speaker_once_with_two_of_each_gender",
        "tests/test_folds.py::test_uneven_folds_differ_by_at_most_one_speaker",
        "tests/test_folds.py::test_kfold_split_draws_validation_from_the_training_speakers",
        "tests/test_folds.py::test_too_many_folds_and_bad_fold_numbers_are_refused",
        "tests/data/corpora/test_manifest.py::test_manifest_split_column_gives_the_roles",
    ],
    "privfl/data/partition.py": ["tests/data/test_partition.py", "tests/data/test_partition_edges.py"],
    # prepare() with stand-in features, and the wiring's unit tests; not the runs of prepare() on
    # the synthetic corpus (tests/data/test_dataset.py and three in the wiring file), which extract
    # real features: a mutant that changes the feature settings re-extracts them (tens of seconds)
    "privfl/data/dataset.py": [
        "tests/data/test_dataset_prepare.py",
        "tests/data/test_normalize.py",
        "tests/data/test_dataset_wiring.py::test_auto_split_is_speaker_disjoint_for_other_corpora_and_the_paper_split_for_iemocap",
        "tests/data/test_dataset_wiring.py::test_iemocap_folds_and_loso_hold_out_the_configured_session",
        "tests/data/test_dataset_wiring.py::test_speaker_folds_pick_the_configured_fold",
        "tests/data/test_dataset_wiring.py::test_session_splits_and_fold_zero_are_refused_naming_the_fix",
        "tests/data/test_dataset_wiring.py::test_manifest_split_takes_the_corpus_roles",
        "tests/data/test_dataset_wiring.py::test_aux_count_seed_and_test_gender_reach_the_manifest_and_session_splitters",
        "tests/data/test_dataset_wiring.py::test_each_corpus_gets_its_own_options_and_no_others",
        "tests/data/test_dataset_wiring.py::test_a_split_that_leaves_a_role_empty_is_refused_before_featurising",
        "tests/data/test_dataset_wiring.py::test_utterance_and_no_normalisation_leave_the_sets_as_they_are",
        "tests/data/test_dataset_wiring.py::test_an_empty_role_is_passed_through_normalisation_untouched",
        "tests/data/test_dataset_wiring.py::test_take_and_concat_keep_every_field_of_each_row_together",
    ],
    "attacks/metrics.py": [
        "tests/attacks/test_attack_metrics.py",
        "tests/attacks/test_attack_metrics_report.py",
    ],
    "attacks/gender.py": [
        "tests/attacks/test_gender.py",
        "tests/attacks/test_gender_pieces.py",
        "tests/attacks/test_gender_attack_run.py",
    ],
    "attacks/membership.py": [
        "tests/attacks/test_membership.py",
        "tests/attacks/test_membership_pieces.py",
        # the rows on a stand-in observed run (a tiny CNN, no training)
        "tests/attacks/test_membership_rows.py",
    ],
}
"""Each module of the privacy core and the test files that are meant to pin it down."""


def tree_path(module: str) -> str:
    """Where a core module sits in the scratch copy: attacks/ is copied in as privfl/attacks/, the
    package it installs as, so the mutated copy (not an installed mapping) is what the tests import."""
    return f"privfl/{module}" if module.startswith("attacks/") else module


KILLED = {"killed", "timeout", "segfault", "caught by type check"}
CARRIED = "carried_kills.json"
"""Beside a --recheck's records: the kills it carried over, which mutmut's own records leave unchecked."""


def carried_kills(scratch: Path) -> set[str]:
    """The kills a --recheck in this scratch copy carried over from the run before it (none if not one)."""
    path = scratch / CARRIED
    return set(json.loads(path.read_text())) if path.exists() else set()


def mutmut_config(module: str, tests: list[str]) -> str:
    """The [tool.mutmut] table for one module (forkserver: torch is not fork-safe)."""
    quoted = lambda xs: "[" + ", ".join(json.dumps(x) for x in xs) + "]"  # noqa: E731
    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["privfl"]\n'
        f"only_mutate = {quoted([tree_path(module)])}\n"
        f"pytest_add_cli_args_test_selection = {quoted(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
        'process_isolation = "forkserver"\n'
    )


def scratch_copy(module: str, tests: list[str], workdir: Path) -> Path:
    """A copy of the package, the tests and pyproject.toml with this module's mutmut table appended."""
    dest = workdir / module.replace("/", "_").removesuffix(".py")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("privfl", "tests"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    shutil.copytree(ROOT / "attacks", dest / "privfl" / "attacks", ignore=ignore)
    text = (ROOT / "pyproject.toml").read_text()
    (dest / "pyproject.toml").write_text(text + mutmut_config(module, tests))
    return dest


def statuses(scratch: Path, module: str) -> dict[str, str]:
    """Mutant name -> mutmut status, read from mutmut's per-file record."""
    from mutmut.stats import status_by_exit_code

    meta = json.loads((scratch / "mutants" / f"{tree_path(module)}.meta").read_text())
    return {k: status_by_exit_code[v] for k, v in sorted(meta["exit_code_by_key"].items())}


def show(scratch: Path, env: dict, name: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "show", name], cwd=scratch, env=env, capture_output=True, text=True
    )
    lines = out.stdout.splitlines()
    return "\n".join(
        line for line in lines if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))
    )


def run_module(
    module: str,
    tests: list[str],
    workdir: Path,
    jobs: int,
    budget_s: float | None,
    collect: bool,
    names: list[str] | None = None,
) -> tuple[Path, dict, float, bool]:
    """Run mutmut on one module (only the mutants `names` if given; or only read a previous run's
    records); stops after budget_s seconds."""
    scratch = workdir / module.replace("/", "_").removesuffix(".py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the mutated copy must win
    env.setdefault("PRIVFL_CACHE", str(workdir / "cache"))
    # one corpus and feature cache for every mutant's test session (tests/conftest.py), filled by
    # mutmut's first, unmutated run. Sound because the cache writers (synthesis, features) are not
    # mutated and name each file by the hash of what it was computed from: a mutant that asks for
    # other data gets other files, never the original's with other contents
    env["PRIVFL_TEST_CACHE"] = str(workdir / "test-cache")
    wall, complete = 0.0, True
    if not collect:
        scratch = scratch_copy(module, tests, workdir)
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *(names or [])],
            cwd=scratch,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its workers share the group, so a budget stop ends them all
        )
        try:
            out, _ = proc.communicate(timeout=budget_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            out, _ = proc.communicate()
            complete = False
        wall = time.perf_counter() - started
        meta = scratch / "mutants" / f"{tree_path(module)}.meta"
        if not meta.exists() or (complete and set(statuses(scratch, module).values()) == {"not checked"}):
            # e.g. the unmutated tests failed (mutmut then checks nothing)
            raise SystemExit(f"mutmut failed on {module} (exit {proc.returncode}):\n{out[-3000:]}")
    return scratch, env, wall, complete


def summarise(
    module: str,
    tests: list[str],
    scratch: Path,
    env: dict,
    equivalent: dict[str, str],
    wall: float,
    complete: bool,
    carried: set[str] | None = None,
) -> dict:
    """Counts, score and survivors (with diffs) of one module; unchecked mutants stay out of the score.

    carried: mutants an earlier complete run of the same source killed (a --recheck re-tests only
    its survivors); they count as killed unless re-tested here."""
    status = statuses(scratch, module)
    if carried:
        status = {n: "killed" if s == "not checked" and n in carried else s for n, s in status.items()}
    counts: dict[str, int] = {}
    for s in status.values():
        counts[s] = counts.get(s, 0) + 1
    checked = {n: s for n, s in status.items() if s != "not checked"}
    equiv = sorted(n for n in checked if n in equivalent)
    killed = sum(1 for n, s in checked.items() if s in KILLED and n not in equivalent)
    survivors = [n for n, s in checked.items() if s not in KILLED and n not in equivalent]
    scored = len(checked) - len(equiv)
    return {
        "tests": tests,
        "mutants": len(status),
        "checked": len(checked),
        "complete": complete and len(checked) == len(status),
        "equivalent": len(equiv),
        "killed": killed,
        "survived": len(survivors),
        "score": killed / scored if scored else None,
        "statuses": counts,
        "wall_s": round(wall, 1),
        # a "no tests" mutant's diff is left out: one `mutmut show` each, and a module with hundreds
        # of them (attacks/membership.py: 969) spent longer on them than on the mutants
        "survivors": [
            {"name": n, "status": status[n], "diff": show(scratch, env, n) if status[n] != "no tests" else ""}
            for n in survivors
        ],
    }


def totals(results: dict) -> dict:
    """The overall counts and score over every module recorded."""
    mods = results["modules"].values()
    killed, scored = sum(m["killed"] for m in mods), sum(m["checked"] - m["equivalent"] for m in mods)
    return {
        "killed": killed,
        "scored": scored,
        "score": killed / scored if scored else None,
        "modules_covered": sorted(results["modules"]),
    }


def rescore(out: Path, equivalent: dict[str, str], modules: list[str] | None) -> None:
    """Move recorded survivors that the equivalent list now names out of the score."""
    results = json.loads(out.read_text())
    for module, r in results["modules"].items():
        if modules and module not in modules:
            continue
        now = [s for s in r["survivors"] if s["name"] in equivalent]
        r["survivors"] = [s for s in r["survivors"] if s["name"] not in equivalent]
        r["equivalent"] += len(now)
        r["survived"] = len(r["survivors"])
        scored = r["checked"] - r["equivalent"]
        r["score"] = r["killed"] / scored if scored else None
        print(f"  {module}: {len(now)} more equivalent, score {r['score']:.3f}")
    results.update(totals(results))
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"mutation score over {len(results['modules'])} modules: {results['score']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--module", action="append", choices=sorted(CORE), help="repeatable; default: all")
    ap.add_argument("--jobs", type=int, default=2, help="mutants tested in parallel")
    ap.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "mutation", help="scratch copies")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--budget-s", type=float, default=None, help="stop a module after this many seconds")
    ap.add_argument("--collect", action="store_true", help="only read the records of earlier (stopped) runs")
    ap.add_argument(
        "--rescore",
        action="store_true",
        help="only re-apply the equivalent list to the recorded survivors (no mutmut run)",
    )
    ap.add_argument(
        "--recheck",
        action="store_true",
        help="re-test only the survivors of the module's last complete run (same source, new tests)",
    )
    ap.add_argument(
        "--changed",
        default="",
        metavar="FUNC[,FUNC]",
        help="with --recheck: the module's functions edited since that run; every mutant of theirs is "
        "re-tested, the rest must be the run's own",
    )
    args = ap.parse_args()
    if importlib.util.find_spec("mutmut") is None:
        raise SystemExit("mutmut is not installed: pip install -e '.[mutation]' (the optional extra)")
    equivalent = tomllib.loads(EQUIVALENT.read_text()).get("equivalent", {}) if EQUIVALENT.exists() else {}
    results = json.loads(args.out.read_text()) if args.out.exists() else {"modules": {}}
    if args.rescore:
        rescore(args.out, equivalent, args.module)
        return
    changed = [f.strip() for f in args.changed.split(",") if f.strip()]
    if changed and not args.recheck:
        raise SystemExit(
            f"--changed {args.changed} only goes with --recheck (a full run re-tests everything)"
        )
    edited = lambda name: any(name.rsplit(".", 1)[-1].startswith(f"x_{f}__mutmut_") for f in changed)  # noqa: E731
    for module in args.module or list(CORE):
        print(f"mutating {module} against {' '.join(CORE[module])} ...", flush=True)
        earlier = results["modules"].get(module, {})
        names = carried = None
        if args.recheck:
            meta = (
                args.workdir
                / module.replace("/", "_").removesuffix(".py")
                / "mutants"
                / f"{tree_path(module)}.meta"
            )
            old = statuses(meta.parents[len(Path(tree_path(module)).parts)], module) if meta.exists() else {}
            old_hashes = (
                json.loads(meta.read_text()).get("hash_by_function_name", {}) if meta.exists() else {}
            )
            if changed and not old:
                raise SystemExit(f"--changed needs the records of {module}'s earlier run in {args.workdir}")
            if earlier.get("complete"):
                names = [s["name"] for s in earlier["survivors"] if s["name"] not in equivalent]
            elif earlier and meta.exists():  # a stopped run: its survivors and the mutants it never reached
                prior = carried_kills(
                    meta.parents[len(Path(tree_path(module)).parts)]
                )  # a stopped --recheck's
                names = [
                    n for n, st in old.items() if st not in KILLED and n not in equivalent and n not in prior
                ]
            else:
                raise SystemExit(
                    f"--recheck needs an earlier run of {module} in {args.out} (and its records)"
                )
            names = [n for n in names if not edited(n)]
        patterns = [f"{tree_path(module)[:-3].replace('/', '.')}.x_{f}__mutmut_*" for f in changed]
        scratch, env, wall, complete = run_module(
            module,
            CORE[module],
            args.workdir,
            args.jobs,
            args.budget_s,
            args.collect,
            (names or []) + patterns if args.recheck else names,
        )
        if args.recheck:
            now = statuses(scratch, module)
            meta = scratch / "mutants" / f"{tree_path(module)}.meta"
            hashes = json.loads(meta.read_text()).get("hash_by_function_name", {})
            # mutmut hashes each function's source: any other function that changed must be named too
            moved_fns = sorted(
                f
                for f in set(hashes) | set(old_hashes)
                if hashes.get(f) != old_hashes.get(f) and not edited(f"{f}__mutmut_0")
            )
            if old_hashes and moved_fns:
                raise SystemExit(
                    f"{module}: {', '.join(moved_fns)} changed since its last run too: name them in "
                    "--changed, or run the module in full"
                )
            if changed and {n for n in now if not edited(n)} != {n for n in old if not edited(n)}:
                raise SystemExit(
                    f"{module} changed outside {', '.join(changed)} since its last run; run it in full"
                )
            carried = {n for n in now if not edited(n)} - set(names)
            (scratch / CARRIED).write_text(json.dumps(sorted(carried)) + "\n")  # so a stopped one can resume
        elif args.collect:
            carried = carried_kills(scratch)
        r = summarise(module, CORE[module], scratch, env, equivalent, wall, complete, carried)
        if args.recheck:
            # the same source gives the same mutants: same count, and each survivor the same diff
            before = {s["name"]: s["diff"] for s in earlier["survivors"]}
            moved = [
                s["name"]
                for s in r["survivors"]
                if not edited(s["name"]) and before.get(s["name"], s["diff"]) != s["diff"]
            ]
            if (r["mutants"] != earlier["mutants"] and not changed) or moved:
                raise SystemExit(f"{module} changed since its last complete run; run it in full")
            r["recheck_of"] = {
                "command": earlier.get("command"),
                "wall_s": earlier.get("wall_s"),
                "survivors_retested": len(names),
            }
            if changed:
                r["recheck_of"]["changed_functions"] = changed
        # re-read: a run of other modules may have written the file since this one started
        results = json.loads(args.out.read_text()) if args.out.exists() else {"modules": {}}
        before = results["modules"].get(module, {})
        if args.collect and before.get("mutants") == r["mutants"] and "command" in before:
            # re-scored (e.g. a longer equivalent list): the run's own command, wall time and load stand
            r.update({k: before[k] for k in ("command", "wall_s", "load_1min_after") if k in before})
        elif args.collect:  # the stopped run's span: from its scratch copy to its last record
            meta = scratch / "mutants" / f"{tree_path(module)}.meta"
            r["wall_s"] = round(meta.stat().st_mtime - (scratch / "pyproject.toml").stat().st_mtime, 1)
            r["load_1min_after"] = os.getloadavg()[0]
        else:
            r["load_1min_after"] = os.getloadavg()[0]
            r["command"] = "nice -n 10 python benchmarks/mutation.py " + " ".join(sys.argv[1:])
        results["modules"][module] = r
        print(
            f"  {module}: {r['killed']}/{r['checked'] - r['equivalent']} killed "
            f"({r['checked']} of {r['mutants']} checked) "
            f"({r['equivalent']} equivalent), score {r['score']:.3f}, {r['wall_s']:.0f} s",
            flush=True,
        )
        mods = results["modules"].values()
        killed, scored = sum(m["killed"] for m in mods), sum(m["checked"] - m["equivalent"] for m in mods)
        results.update(
            command="nice -n 10 python benchmarks/mutation.py",
            tool="mutmut "
            + subprocess.run([sys.executable, "-m", "pip", "show", "mutmut"], capture_output=True, text=True)
            .stdout.split("Version: ")[1]
            .split()[0],
            machine=f"{platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}",
            killed=killed,
            scored=scored,
            score=killed / scored if scored else None,
            modules_covered=sorted(results["modules"]),
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"mutation score over {len(results['modules'])} modules: {results['score']:.3f}")


if __name__ == "__main__":
    main()
