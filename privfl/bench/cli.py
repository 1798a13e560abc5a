"""`privfl bench`: the privacy-utility grid and the paper's Figure 2. Parse, call privfl.bench, print.

Registered in privfl/cli.py with `main.add_command(bench)`; benchmarks/*.py call the same group.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from privfl.bench.reporter import Reporter
from privfl.clickgroup import PrivflGroup
from privfl.config import DATASETS, MODELS, PARTITIONS, parse_sets
from privfl.errors import ConfigError


@click.group(cls=PrivflGroup)
def bench() -> None:
    """Benchmarks: what each defence costs and stops (privacy-utility), the paper's Figure 2 (paper-fig2)."""


# --- shared -------------------------------------------------------------------------------------
def _seeds(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        seeds = tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError as exc:
        raise ConfigError(
            f"--seeds takes a comma-separated list of integers, e.g. 0,1,2; got {text!r}"
        ) from exc
    if not seeds:
        raise ConfigError("--seeds is empty; e.g. --seeds 0,1,2")
    return seeds


def _command_line(ctx: click.Context) -> str:
    """The command as typed, rebuilt from the options given on the command line (for results.md)."""
    import shlex

    from click.core import ParameterSource

    names, node = [], ctx
    while node is not None:  # command names, not how the root was started (privfl, python -m ...)
        if node.command.name != "privfl":
            names.append(node.command.name)
        node = node.parent
    parts = ["privfl", *reversed(names)]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        flag = max(param.opts, key=len)
        value = ctx.params[param.name]
        if isinstance(param, click.Option) and param.is_flag:
            parts.append(flag)
        elif isinstance(value, tuple):
            for v in value:
                parts += [flag, shlex.quote(str(v))]
        else:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


class RichReporter(Reporter):
    """Rich progress: one bar for the whole benchmark, one for the current run's rounds, one for its stage."""

    def __init__(self, progress, console) -> None:
        self.progress = progress
        self.console = console
        self.overall = None
        self.rounds = progress.add_task("rounds", total=1, visible=False, info="")
        self.stage_task = progress.add_task("stage", total=1, visible=False, info="")
        self.label = ""
        self.started = 0.0

    def grid_started(self, total_runs: int) -> None:
        self.overall = self.progress.add_task("benchmark", total=total_runs, info="")

    def run_started(self, label: str, state: str, rounds: int) -> None:
        self.label = label
        self.started = time.perf_counter()
        self.progress.update(self.overall, info=label)
        self.progress.reset(
            self.rounds, total=rounds, visible=state != "done", description=f"  {label}: rounds", info=""
        )
        self.progress.update(self.stage_task, visible=False)

    def round_done(self, row: dict) -> None:
        info = f"val UAR {row['val_uar']:.3f}" if "val_uar" in row else ""
        if "epsilon" in row:
            info += f"  eps {row['epsilon']:.3g}"
        self.progress.update(self.rounds, completed=row["round"], info=info)

    def stage(self, name: str, done: int, total: int) -> None:
        self.progress.update(
            self.stage_task,
            description=f"  {self.label}: {name}",
            completed=done,
            total=max(total, 1),
            visible=True,
        )

    def run_finished(self, record: dict) -> None:
        self.progress.advance(self.overall)
        self.progress.update(self.rounds, visible=False)
        self.progress.update(self.stage_task, visible=False)
        what = f"test UAR {record.get('test_uar_final', record.get('final_test_uar')):.3f}"
        g = (record.get("attacks") or {}).get("gender", {}).get("auc")
        m = (record.get("attacks") or {}).get("membership", {}).get("auc")
        if g is not None:
            what += f", gender AUC {g:.3f}"
        if m is not None:
            what += f", membership AUC {m:.3f}"
        if record.get("epsilon") not in (None, float("inf")):
            what += f", eps {record['epsilon']:.3g}"
        self.console.print(
            f"{self.label}: {record['status']} in {time.perf_counter() - self.started:.0f} s "
            f"(setup {record['setup_s']:.0f} s, train {record['train_s']:.0f} s"
            + (f", attacks {record['attack_s']:.0f} s" if "attack_s" in record else "")
            + f"); {what}"
        )

    def note(self, text: str) -> None:
        self.console.print(f"[yellow]{text}[/yellow]")


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )


def _print_timings(console, timings: dict, runs: list[dict]) -> None:
    """Per-run wall times (setup, train, attacks; 'now' = spent in this invocation) and per-stage totals."""
    from rich.table import Table

    table = Table(title="wall time by run (s)", title_justify="left")
    for col in ("run", "status", "setup", "train", "attacks", "wall now", "cpu now"):
        table.add_column(col, justify="left" if col in ("run", "status") else "right")
    for r in runs:
        table.add_row(
            f"{r.get('point', r.get('setting'))} s{r['seed']}",
            r["status"],
            f"{r['setup_s']:.1f}",
            f"{r['train_s']:.1f}",
            f"{r.get('attack_s', 0.0):.1f}",
            f"{r.get('wall_s', 0.0):.1f}",
            f"{r.get('cpu_s', 0.0):.1f}",
        )
    console.print(table)
    stages = timings["stages_s"]
    line = "stages, wall (this invocation): " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items())
    line += f"; total {timings['total_s']:.1f} s"
    if timings.get("stages_cpu_s"):
        line += "; CPU: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings["stages_cpu_s"].items())
    console.print(line)


# --- privacy-utility ----------------------------------------------------------------------------
@bench.command("privacy-utility")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Grid TOML (benchmarks/configs/*.toml) [default: the built-in quick grid].",
)
@click.option("--dataset", type=click.Choice(DATASETS), help="Corpus of the grid's base [synthetic].")
@click.option("--data-dir", type=str, help="Root of a real corpus on disk.")
@click.option("--model", type=click.Choice(MODELS), help="Paper CNN or LSTM [cnn].")
@click.option("--rounds", type=int, help="Communication rounds of every point.")
@click.option("--clients", type=int, help="K (by-speaker: at most the training speakers).")
@click.option(
    "--partition",
    type=click.Choice(PARTITIONS),
    help="Client partition (the gender attack needs by-speaker).",
)
@click.option("--seeds", "seeds_text", type=str, help="Comma-separated seeds, e.g. 0,1,2 [the grid's].")
@click.option(
    "--folds",
    type=int,
    help="Repeat over the K folds of K-fold speaker CV instead of over seeds (one seed: the grid's "
    "first, or --seeds).",
)
@click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Set a base config field, e.g. train.lr=0.05."
)
@click.option("--only", multiple=True, metavar="POINT", help="Run only these grid points (repeatable).")
@click.option("--no-attacks", is_flag=True, help="Train and report utility only.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory [bench/privacy-utility/<grid name>]; points already there are reused.",
)
@click.option("--print-grid", is_flag=True, help="Print the resolved grid as TOML and exit.")
@click.pass_context
def privacy_utility(
    ctx,
    config_path,
    dataset,
    data_dir,
    model,
    rounds,
    clients,
    partition,
    seeds_text,
    folds,
    sets,
    only,
    no_attacks,
    out,
    print_grid,
) -> None:
    """Train every defence of a grid over seeds, attack each run, and tabulate utility against privacy.

    \b
    privfl bench privacy-utility --out bench/pu                      # quick default grid, built-in corpus
    privfl bench privacy-utility --config benchmarks/configs/iemocap_lstm.toml --data-dir ~/IEMOCAP
    privfl bench privacy-utility --only fedavg --only secagg --seeds 0 --rounds 3
    privfl bench privacy-utility --dataset ravdess --data-dir RAVDESS/ --folds 6   # 6 speaker folds, seed 0
    """
    from rich.console import Console

    from privfl.bench.grid import Grid, default_grid
    from privfl.bench.privacy_utility import markdown_table, run_privacy_utility

    if config_path is not None:
        grid = Grid.from_toml(config_path)
        if dataset or model:
            grid = grid.with_base({k: v for k, v in (("data.dataset", dataset), ("model.name", model)) if v})
    else:
        grid = default_grid(dataset or "synthetic", model or "cnn")
    dotted = parse_sets(sets)
    for key, value in (
        ("data.data_dir", data_dir),
        ("train.rounds", rounds),
        ("train.clients", clients),
        ("data.partition", partition),
    ):
        if value is not None:
            dotted[key] = value
    grid = grid.with_base(dotted).only(tuple(only))
    seeds = _seeds(seeds_text)
    if seeds is not None:
        grid = grid.with_seeds(seeds)
    if folds is not None:
        if folds < 2:
            raise ConfigError(f"--folds must be >= 2 (K-fold speaker CV), got {folds}; e.g. --folds 6")
        grid = grid.with_folds(folds)
        if seeds is None:  # folds replace the seeds as the repeats
            grid = grid.with_seeds(grid.seeds[:1])
    if no_attacks:
        grid = grid.without_attacks()
    grid.validate()
    if print_grid:
        click.echo(grid.to_toml(), nl=False)
        return
    out = out or Path("bench") / "privacy-utility" / grid.name
    console = Console(stderr=True)
    with _progress(console) as progress:
        doc = run_privacy_utility(
            grid, out, reporter=RichReporter(progress, console), command=_command_line(ctx)
        )
    _print_timings(console, doc["timings"], doc["timings"]["runs"])
    click.echo(markdown_table(doc))
    click.echo(f"results: {out / 'results.md'} (csv, json, plots beside it)")


# --- paper-fig2 ---------------------------------------------------------------------------------
def _be_pairs(values: tuple[str, ...]) -> tuple[tuple[int, int], ...] | None:
    if not values:
        return None
    pairs = []
    for v in values:
        b, sep, e = v.lower().partition("x")
        try:
            pairs.append((int(b), int(e)))
        except ValueError as exc:
            raise ConfigError(f"--be takes BxE, e.g. --be 10x1 --be 20x5; got {v!r}") from exc
        if not sep:
            raise ConfigError(f"--be takes BxE, e.g. 10x1; got {v!r}")
    return tuple(pairs)


@bench.command("paper-fig2")
@click.option("--dataset", type=click.Choice(DATASETS), default="synthetic", show_default=True)
@click.option(
    "--data-dir", type=str, default="", help="Root of a real corpus (IEMOCAP for the paper's setting)."
)
@click.option("--full", is_flag=True, help="The paper's 200 rounds (default: a reduced 20).")
@click.option("--rounds", type=int, help="Rounds per setting (overrides --full).")
@click.option("--model", "models", multiple=True, type=click.Choice(MODELS), help="Models [cnn, lstm].")
@click.option("--clients", "clients", multiple=True, type=int, help="K values [5, 10].")
@click.option(
    "--be", "be", multiple=True, metavar="BxE", help="(B, E) pairs [10x1, 20x5]; --all-settings for all 4."
)
@click.option(
    "--all-settings", is_flag=True, help="All 16 combinations of model, K, B in {10, 20}, E in {1, 5}."
)
@click.option(
    "--seeds", "seeds_text", type=str, default="0", show_default=True, help="Comma-separated seeds."
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Set a base config field.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory [bench/paper-fig2/<dataset>-<rounds>r]; finished settings are reused.",
)
@click.pass_context
def paper_fig2(
    ctx, dataset, data_dir, full, rounds, models, clients, be, all_settings, seeds_text, sets, out
) -> None:
    """UAR over communication rounds for the paper's FedAvg settings (Latif et al. 2020, Figure 2).

    \b
    Default: 8 settings = {CNN, LSTM} x K in {5, 10} x (B, E) in {(10, 1), (20, 5)}, lr 0.01, IID clients.
    privfl bench paper-fig2                                          # built-in corpus, 20 rounds
    privfl bench paper-fig2 --dataset iemocap --data-dir ~/IEMOCAP_full_release --full
    privfl bench paper-fig2 --model cnn --clients 5 --be 10x1 --rounds 5   # one curve
    """
    from rich.console import Console

    from privfl.bench.paper_fig2 import (
        ALL_BE,
        PAPER_BE,
        PAPER_CLIENTS,
        PAPER_MODELS,
        PAPER_ROUNDS,
        REDUCED_ROUNDS,
        fig2_markdown,
        fig2_settings,
        paper_base,
        run_paper_fig2,
    )

    n_rounds = rounds if rounds is not None else (PAPER_ROUNDS if full else REDUCED_ROUNDS)
    pairs = _be_pairs(be) or (ALL_BE if all_settings else PAPER_BE)
    settings = fig2_settings(tuple(models) or PAPER_MODELS, tuple(clients) or PAPER_CLIENTS, pairs)
    base = paper_base(dataset, data_dir, n_rounds)
    dotted = parse_sets(sets)
    if dotted:
        base = base.override(dotted)
    base.validate()
    seeds = _seeds(seeds_text) or (0,)
    out = out or Path("bench") / "paper-fig2" / f"{dataset}-{n_rounds}r"
    console = Console(stderr=True)
    with _progress(console) as progress:
        doc = run_paper_fig2(
            base,
            settings,
            out,
            seeds=seeds,
            reporter=RichReporter(progress, console),
            command=_command_line(ctx),
        )
    _print_timings(console, doc["timings"], doc["runs"])
    table = fig2_markdown(doc).split("\n\n")
    click.echo(next(t for t in table if t.startswith("| setting")))
    click.echo(f"results: {out / 'fig2.md'} (fig2.png, fig2.csv, fig2.json beside it)")


if __name__ == "__main__":  # python -m privfl.bench.cli ...
    bench(prog_name="privfl bench")
