"""The `privfl` command line: parse, call the library, print. No logic of its own."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from privfl.clickgroup import LazyGroup
from privfl.config import (
    ACCOUNTANTS,
    DATASETS,
    FLAG_FIELDS,
    MODELS,
    MODES,
    NOISE_SOURCES,
    NORMALIZE,
    PARTITIONS,
    SECURE_SCHEMES,
    SPLITS,
    ExperimentConfig,
    parse_sets,
)


@click.group(
    cls=LazyGroup,
    name="privfl",
    lazy={  # command groups beside the training CLI, imported when used
        "attack": "privfl.attacks.cli:attack",
        "bench": "privfl.bench.cli:bench",
        "deploy": "privfl.deploy.cli:deploy",
        "keyholder": "privfl.keyholder_cli:keyholder",
    },
)
@click.version_option(package_name="privfl")
@click.option("-v", "--verbose", is_flag=True, help="Log diagnostics to stderr.")
def main(verbose: bool) -> None:
    """privfl: federated speech emotion recognition with differential privacy, secure
    aggregation and privacy attacks. Start with `privfl train --mode fedavg`."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def _train_options(f):
    """The `privfl train` flags; each maps onto one config field (privfl.config.FLAG_FIELDS)."""
    opts = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False, path_type=Path),
            help="TOML config (e.g. a run's config.toml); flags override it.",
        ),
        click.option(
            "--out",
            type=click.Path(file_okay=False, path_type=Path),
            help="Run directory to create [default: runs/<mode>-<model>-<dataset>-s<seed>-<time>].",
        ),
        click.option(
            "--resume",
            type=click.Path(file_okay=False, path_type=Path),
            help="Continue a stopped run from its last checkpoint (its config unless --config).",
        ),
        click.option("--overwrite", is_flag=True, help="Replace an existing run directory."),
        click.option(
            "--set",
            "sets",
            multiple=True,
            metavar="KEY=VALUE",
            help="Set any config field, e.g. --set data.speakers=32 (TOML value syntax).",
        ),
        click.option(
            "--seed", type=int, help="Seed for everything (split, init, sampling, shuffling, noise)."
        ),
        click.option(
            "--mode",
            type=click.Choice(MODES),
            help="central (one client, all data), fedavg (the paper), dp (record-level DP-SGD "
            "on clients), user-dp (DP-FedAvg).",
        ),
        click.option("--dataset", type=click.Choice(DATASETS), help="Corpus [default: synthetic, built in]."),
        click.option("--data-dir", type=str, help="Root of a real corpus on disk."),
        click.option("--speakers", type=int, help="Speakers of the built-in synthetic corpus [24]."),
        click.option("--split", type=click.Choice(SPLITS), help="Speaker split protocol [auto]."),
        click.option(
            "--strict", is_flag=True, default=None, help="Fail on unreadable files instead of skipping."
        ),
        click.option(
            "--folds",
            type=int,
            help="Speaker-independent k-fold CV: K runs under one parent (IEMOCAP: 5, one per session).",
        ),
        click.option("--fold", type=int, help="Run only fold 1..K of --folds [0: all]."),
        click.option(
            "--normalize",
            type=click.Choice(NORMALIZE),
            help="Log-Mel mean/variance normalisation per utterance (paper), speaker, global, or none.",
        ),
        click.option(
            "--partition",
            type=click.Choice(PARTITIONS),
            help="iid (paper: classes dealt evenly), by-speaker, dirichlet.",
        ),
        click.option(
            "--dirichlet-alpha", type=float, help="Label-skew concentration for --partition dirichlet."
        ),
        click.option("--model", type=click.Choice(MODELS), help="Paper CNN or LSTM [cnn]."),
        click.option("--engine", type=click.Choice(["builtin", "flower-sim"]), help="Federation engine."),
        click.option("--clients", type=int, help="K, number of clients [5]."),
        click.option("--fraction", type=float, help="C, fraction of clients per round [1.0]."),
        click.option("--rounds", type=int, help="Communication rounds."),
        click.option("--batch-size", type=int, help="B, local minibatch size [10]."),
        click.option("--local-epochs", type=int, help="E, local epochs per round [1]."),
        click.option("--lr", type=float, help="eta, local SGD learning rate [0.01]."),
        click.option(
            "--momentum", type=float, help="Local SGD momentum, restarted every round [0.9; 0 = plain SGD]."
        ),
        click.option(
            "--server-lr",
            type=float,
            help="Server step on the averaged update, eta_s [1.0 = FedAvg; fedavg only].",
        ),
        click.option("--eval-every", type=int, help="Evaluate on val/test every N rounds [1]."),
        click.option(
            "--record-updates",
            is_flag=True,
            default=None,
            help="Keep every client's update per round (for privfl attack).",
        ),
        click.option("--noise-multiplier", type=float, help="DP: Gaussian noise multiplier sigma."),
        click.option("--target-epsilon", type=float, help="DP: solve sigma to reach this epsilon."),
        click.option("--delta", type=float, help="DP: delta [below 1/n]."),
        click.option("--max-grad-norm", type=float, help="dp: per-sample clipping bound C [1.0]."),
        click.option("--clip-norm", type=float, help="user-dp: per-update clipping bound S [1.0]."),
        click.option("--accountant", type=click.Choice(ACCOUNTANTS), help="DP accountant [rdp]."),
        click.option(
            "--dp-noise",
            type=click.Choice(NOISE_SOURCES),
            help="DP randomness: each party's OS entropy [os], or seeded from --seed (no DP "
            "guarantee against anyone who holds the seed; for bit-identical reruns).",
        ),
        click.option(
            "--secure-agg",
            type=click.Choice(SECURE_SCHEMES),
            help="Secure aggregation: ckks (key holder) or secaggplus (masking, no key holder).",
        ),
        click.option(
            "--insecure-he",
            is_flag=True,
            default=None,
            help="Allow CKKS parameters below 128-bit security (testing only).",
        ),
        click.option(
            "--canaries",
            type=int,
            help="Audit canaries for `privfl attack audit`, each inserted with probability 1/2 "
            "(gradient canaries for dp, canary clients for user-dp; docs/auditing.md) [0].",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def resolve_config(
    config_path: Path | None, resume: Path | None, sets: tuple[str, ...], flags: dict
) -> ExperimentConfig:
    """Config file (or the resumed run's), then --set, then explicit flags."""
    if config_path is not None:
        cfg = ExperimentConfig.from_toml(config_path)
    elif resume is not None:
        from privfl.runs import RunDir

        cfg = RunDir.open(resume).config()
    else:
        cfg = ExperimentConfig()
    dotted = parse_sets(sets)
    for name, value in flags.items():
        if value is not None:
            dotted[FLAG_FIELDS[name]] = value
    return cfg.override(dotted) if dotted else cfg


@main.command()
@_train_options
def train(config_path, out, resume, overwrite, sets, **flags) -> None:
    """Train a federated SER model and write a run directory.

    \b
    privfl train --mode fedavg                      # built-in corpus, paper CNN, K=5
    privfl train --mode fedavg --model lstm --clients 10 --rounds 200 --batch-size 10 --lr 0.01
    privfl train --resume runs/x                    # continue a stopped run
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from privfl.experiment import train as run_training

    cfg = resolve_config(config_path, resume, sets, flags).validate()
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        stages: dict[str, int] = {}

        def on_stage(stage: str, done: int, total: int) -> None:
            if stage not in stages:
                stages[stage] = progress.add_task(stage, total=total, info="")
            progress.update(stages[stage], completed=done)

        rounds = progress.add_task("rounds", total=cfg.train.rounds, info="", start=False)

        def on_round(row: dict) -> None:
            progress.start_task(rounds)
            info = f"val UAR {row['val_uar']:.3f}" if "val_uar" in row else ""
            if "epsilon" in row:
                info += f"  eps {row['epsilon']:.2f}"
                if row.get("noise") == "seeded":
                    info += " (seeded noise: no DP guarantee against seed holders)"
            progress.update(rounds, completed=row["round"], info=info)

        if cfg.data.folds and not cfg.data.fold:
            from privfl.folds import run_folds

            def on_fold(fold: int, s: dict) -> None:
                progress.reset(rounds, start=False)
                console.print(
                    f"fold {fold}/{cfg.data.folds} (test {', '.join(s['split']['test'])}): test UAR "
                    f"{s['test_uar_at_best_val']:.3f} at best-val round {s['best_round']}"
                )

            summary = run_folds(
                cfg,
                out,
                resume=resume,
                overwrite=overwrite,
                on_fold=on_fold,
                on_round=on_round,
                on_stage=on_stage,
            )
        else:
            summary = run_training(
                cfg, out, resume=resume, overwrite=overwrite, on_round=on_round, on_stage=on_stage
            )
    if summary.get("kind") == "folds":
        _echo_folds(summary)
        return
    click.echo(
        f"{summary['mode']} {summary['model']} on {summary['dataset']}: "
        f"test UAR {summary['test_uar_at_best_val']:.3f} at best-val round {summary['best_round']} "
        f"(val UAR {summary['best_val_uar']:.3f}); final test UAR {summary['final_test_uar']:.3f}"
    )
    if "privacy" in summary:
        click.echo(privacy_line(summary["privacy"]))
    skipped = summary["corpus"]["skipped"]
    if skipped:
        click.echo(
            f"{skipped} corpus file(s) or label line(s) were skipped: see {summary['run_dir']}/skipped.csv"
        )
    click.echo(f"run directory: {summary['run_dir']}")


def privacy_line(p: dict) -> str:
    """The printed privacy line: the bound against each observer the mode names, at one delta."""
    from privfl.observers import describe

    head = f"privacy ({p['unit']}, delta {p['delta']:.3g}, accountant {p['accountant']}"
    if p.get("noise") == "seeded":
        return (
            f"{head}): dp.noise = seeded, {p['guarantee']}; against a holder of the released model "
            f"alone: eps {p['epsilon']:.3g}; {describe(p['observers'])}"
        )
    return f"{head}): (eps, delta)-DP against {describe(p['observers'])}"


def _echo_folds(summary: dict) -> None:
    recall = ", ".join(f"{e} {r:.3f}" for e, r in summary["per_class_recall"].items() if r is not None)
    click.echo(
        f"{summary['mode']} {summary['model']} on {summary['dataset']}, {len(summary['folds'])} folds: "
        f"test UAR {summary['test_uar_mean']:.3f} +- {summary['test_uar_sd']:.3f} at best-val rounds "
        f"(final {summary['final_test_uar_mean']:.3f} +- {summary['final_test_uar_sd']:.3f}); "
        f"per-class recall {recall}; {summary['seconds_total']:.0f} s"
    )
    click.echo(f"run directory: {summary['run_dir']} (confusion.png, fold_NN/)")


@main.group()
def data() -> None:
    """Corpora: write the built-in synthetic corpus, check a real one."""


@data.command()
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Directory to write."
)
@click.option("--speakers", default=24, show_default=True, help="Number of speakers (half female).")
@click.option("--utterances-per-emotion", default=10, show_default=True, help="Per speaker and emotion.")
@click.option("--seed", default=0, show_default=True)
def synth(out: Path, speakers: int, utterances_per_emotion: int, seed: int) -> None:
    """Write the built-in synthetic emotional speech corpus as 16 kHz WAV + metadata.csv."""
    from rich.progress import Progress

    from privfl.data.synthesis import SynthConfig, generate_corpus

    cfg = SynthConfig(speakers=speakers, utterances_per_emotion=utterances_per_emotion, seed=seed)
    cfg.validate()
    with Progress(transient=True) as progress:
        task = progress.add_task("synthesising", total=None)
        generate_corpus(
            out, cfg, progress=lambda done, total: progress.update(task, completed=done, total=total)
        )
    click.echo(f"wrote {speakers * utterances_per_emotion * 4} utterances to {out}")


@data.command()
@click.option(
    "--dataset", type=click.Choice(DATASETS), help="Corpus [default: the config's, else synthetic]."
)
@click.option("--data-dir", type=str, help="Corpus root (not needed for synthetic).")
@click.option("--split", type=click.Choice(SPLITS), help="Speaker split protocol [auto].")
@click.option("--strict", is_flag=True, default=None, help="Fail on the first unreadable file or label line.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config whose [data] section (and seed) to check, e.g. a run's config.toml.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set any config field, e.g. --set data.val_speakers=1 for a small corpus such as EmoDB.",
)
@click.option("--seed", type=int, help="Seed of the speaker split [0].")
@click.option("--folds", type=int, help="K-fold speaker CV: list every fold's test speakers, report --fold.")
@click.option("--fold", type=int, help="Which fold's roles to report [1].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(config_path: Path | None, sets: tuple[str, ...], as_json: bool, **flags) -> None:
    """Count utterances per emotion/speaker/gender/split and list problems found.

    \b
    privfl data check --dataset iemocap --data-dir /data/IEMOCAP_full_release
    privfl data check --dataset emodb --data-dir /data/emodb --set data.aux_speakers=0
    """
    from rich.console import Console

    from privfl.data.check import corpus_report, render_report
    from privfl.data.dataset import load_corpus_for, split_for

    cfg = resolve_config(config_path, None, sets, flags).validate()
    if cfg.data.folds and not cfg.data.fold:
        cfg = cfg.override({"data.fold": 1})
    corpus = load_corpus_for(cfg.data)
    report = corpus_report(corpus, split_for(corpus, cfg.data, cfg.seed))
    if cfg.data.folds:
        report["folds"] = {
            str(i): list(split_for(corpus, cfg.override({"data.fold": i}).data, cfg.seed).test)
            for i in range(1, cfg.data.folds + 1)
        }
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True, default=str))
        return
    render_report(report, Console())
    for i, test in report.get("folds", {}).items():
        click.echo(
            f"fold {i} test speakers: {', '.join(test)}"
            + ("  (roles above)" if int(i) == cfg.data.fold else "")
        )


if __name__ == "__main__":
    main()
