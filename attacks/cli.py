"""`privfl attack {gender, membership, all, audit}`: parse, call the attack, print, write.

No logic of its own.

The lead registers the group with `main.add_command(attack)` in privfl/cli.py.
"""

from __future__ import annotations

from pathlib import Path

import click

from privfl.clickgroup import PrivflGroup
from privfl.errors import ConfigError


def _rounds(value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        return tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError as exc:
        raise ConfigError(
            f"--rounds {value!r} is not a comma-separated list of round numbers, e.g. 1,15,30"
        ) from exc


def _speeds(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError as exc:
        raise ConfigError(
            f"--speeds {value!r} is not a comma-separated list of speed factors, e.g. 0.9,1.0,1.1"
        ) from exc


def _common(f):
    opts = [
        click.option(
            "--run",
            "run_path",
            required=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="A finished run directory trained with --record-updates.",
        ),
        click.option(
            "--out",
            type=click.Path(file_okay=False, path_type=Path),
            help="Where attack.json and roc.png go [default: <run>/attacks].",
        ),
        click.option(
            "--seed",
            default=0,
            show_default=True,
            type=int,
            help="Seeds shadow clients, member/non-member draws, controls and the bootstrap.",
        ),
        click.option(
            "--rounds",
            "rounds",
            type=str,
            help="Recorded rounds to attack, e.g. 1,15,30 [default: up to --max-rounds, evenly spaced].",
        ),
        click.option(
            "--max-rounds",
            default=0,
            show_default=True,
            type=int,
            help="Gender: attack at most this many recorded rounds, evenly spaced [0: every round].",
        ),
        click.option(
            "--bootstrap", default=1000, show_default=True, type=int, help="Bootstrap resamples for 95% CIs."
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _gender_options(f):
    opts = [
        click.option(
            "--shadow-clients", default=12, show_default=True, type=int, help="Shadow clients per round."
        ),
        click.option(
            "--speeds",
            default="0.9,1.0,1.1",
            show_default=True,
            help="Speed factors applied to the auxiliary speech, each a voice of its own (1.0: none).",
        ),
        click.option(
            "--pitch-window",
            default=1,
            show_default=True,
            type=int,
            help="The 'pitch' view's direction for a round also reads the shadow clients of this many "
            "attacked rounds before and after it (each round's speakers centred on their own; no extra "
            "shadow training); 0: the round's own.",
        ),
        click.option(
            "--shadow-size",
            default=0,
            show_default=True,
            type=int,
            help="Utterances per shadow client (0: the real clients' median, capped by the aux data).",
        ),
        click.option(
            "--views",
            default="fc-profile:3,probe,activation-pitch",
            show_default=True,
            help="FEATURES:K pairs (K1-K2 a range), e.g. fc-profile:2-5,first-layer:2-3: one classifier per "
            "pair and round, on the feature set (fc-profile, first-layer, all-layers) in the top K principal "
            "directions of the round's client updates (0: all values); the pairs' log-odds are averaged. "
            "'probe': each client's model evaluated on the auxiliary voices (no classifier); "
            "'activation-pitch': each client's fc-profile projected on the direction of a higher voice in "
            "the head's input space, learnt from the auxiliary utterances at different speeds (no gender "
            "labels, no shadow clients; needs two speeds or more); 'pitch': the same direction learnt from "
            "each auxiliary speaker's shadow clients at different speeds (needs three speeds or more); "
            "'reconstruction': each client's mean head input reconstructed from fc1's update, scored by a "
            "classifier of the auxiliary utterances' genders (the view for the LSTM); with several, the "
            "scores are rank-averaged. With one --speeds the default goes without activation-pitch.",
        ),
        click.option(
            "--classifier", type=click.Choice(["logreg", "mlp"]), default="logreg", show_default=True
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _membership_options(f):
    opts = [
        click.option(
            "--method",
            "methods",
            multiple=True,
            type=click.Choice(["speaker", "loss", "alignment", "lira"]),
            help="Membership attacks to run [default: speaker, loss and alignment]; repeat the flag.",
        ),
        click.option(
            "--candidates",
            default=40,
            show_default=True,
            type=int,
            help="Alignment: members per client and round (and as many non-members).",
        ),
        click.option(
            "--lira", is_flag=True, help="Also run LiRA with shadow federations (slow: each replays the run)."
        ),
        click.option("--lira-shadows", default=8, show_default=True, type=int),
        click.option(
            "--speaker-rounds",
            default=10,
            show_default=True,
            type=int,
            help="Speaker-level alignment: at most this many recorded rounds, evenly spaced [0: all].",
        ),
        click.option(
            "--alignment-rounds",
            default=3,
            show_default=True,
            type=int,
            help="Per-utterance alignment: at most this many recorded rounds, evenly spaced.",
        ),
        click.option("--lira-candidates", default=100, show_default=True, type=int),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@click.group(cls=PrivflGroup)
def attack() -> None:
    """Privacy attacks by an honest-but-curious server on a recorded run (docs/attacks.md).

    \b
    privfl train --mode fedavg --partition by-speaker --clients 16 --record-updates --out runs/plain
    privfl attack gender --run runs/plain
    privfl attack membership --run runs/plain
    privfl attack all --run runs/plain --out runs/plain/attacks
    """


def _execute(
    which: tuple[str, ...],
    run_path: Path,
    out: Path | None,
    seed: int,
    rounds: str | None,
    max_rounds: int,
    bootstrap: int,
    g: dict,
    m: dict,
) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from privfl.attacks.gender import GenderAttackConfig
    from privfl.attacks.membership import MembershipAttackConfig
    from privfl.attacks.report import render_table, write_report
    from privfl.attacks.suite import run_attacks

    picked = _rounds(rounds)
    if "speeds" in g:
        g["speeds"] = _speeds(g["speeds"])
    if "views" in g:
        from privfl.attacks.gender import parse_views

        g["views"] = parse_views(g["views"])
    gender = GenderAttackConfig(rounds=picked, max_rounds=max_rounds, bootstrap=bootstrap, seed=seed, **g)
    methods = tuple(m.pop("methods") or ("speaker", "loss", "alignment"))
    if m.pop("lira") and "lira" not in methods:
        methods += ("lira",)
    membership = MembershipAttackConfig(
        methods=methods,
        rounds=picked,
        max_rounds=m.pop("alignment_rounds", 3),
        bootstrap=bootstrap,
        seed=seed,
        **m,
    )
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # progress bars only on a terminal: in logs and pipes they are noise before the table or error line
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        tasks: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        observed, results = run_attacks(
            run_path, which, gender=gender, membership=membership, progress=on_progress
        )
    out_dir = out if out is not None else Path(run_path) / "attacks"
    write_report(out_dir, observed, results)
    table_console = Console()
    if not table_console.is_terminal:
        table_console = Console(width=140)  # logs and pipes: no terminal width to fit, keep rows on one line
    render_table(results, table_console)
    click.echo(f"wrote {out_dir / 'attack.json'}, {out_dir / 'roc.png'} and {out_dir / 'rounds.png'}")


_G_KEYS = ("shadow_clients", "speeds", "pitch_window", "shadow_size", "views", "classifier")
_M_KEYS = (
    "methods",
    "candidates",
    "lira",
    "lira_shadows",
    "lira_candidates",
    "speaker_rounds",
    "alignment_rounds",
)


@attack.command()
@_common
@_gender_options
def gender(run_path, out, seed, rounds, max_rounds, bootstrap, **opts) -> None:
    """Infer each client's gender from its update (shadow clients on the auxiliary speakers)."""
    _execute(
        ("gender",),
        run_path,
        out,
        seed,
        rounds,
        max_rounds,
        bootstrap,
        opts,
        {"methods": (), "lira": False},
    )


@attack.command()
@_common
@_membership_options
def membership(run_path, out, seed, rounds, max_rounds, bootstrap, **opts) -> None:
    """Was this utterance in the training data? Loss threshold, update alignment, optional LiRA."""
    _execute(("membership",), run_path, out, seed, rounds, max_rounds, bootstrap, {}, opts)


@attack.command(name="all")
@_common
@_gender_options
@_membership_options
def all_attacks(run_path, out, seed, rounds, max_rounds, bootstrap, **opts) -> None:
    """Gender and membership attacks; one attack.json and roc.png."""
    g = {k: opts[k] for k in _G_KEYS}
    m = {k: opts[k] for k in _M_KEYS}
    _execute(("gender", "membership"), run_path, out, seed, rounds, max_rounds, bootstrap, g, m)


@attack.command()
@click.option(
    "--run",
    "run_path",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A run trained with --canaries N.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where audit-<view>.json goes [default: <run>/attacks].",
)
@click.option(
    "--view",
    type=click.Choice(["auto", "model", "updates"]),
    default="auto",
    show_default=True,
    help="Whose observations score the canaries: the released model, or each client's recorded "
    "updates (the server; gradient canaries, needs --record-updates). auto: updates when recorded.",
)
@click.option("--confidence", default=0.95, show_default=True, type=float, help="Of the lower bound.")
@click.option(
    "--bootstrap", default=1000, show_default=True, type=int, help="Resamples for the estimate's CI."
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the bootstrap only.")
def audit(run_path, out, view, confidence, bootstrap, seed) -> None:
    """DP audit in one run: empirical epsilon lower bound from the run's canaries (docs/auditing.md)."""
    from privfl.attacks.audit import AuditConfig, audit_run, write_audit

    result = audit_run(run_path, AuditConfig(view, confidence, bootstrap, seed))
    lower, est = (row.metrics for row in result.rows)
    accounted = lower["accountant_epsilon"]
    acc = "none (no DP)" if accounted is None else f"{accounted:.3g}"
    ci = est.get("ci95") or [None, None]
    shown = (
        f"{est['epsilon_estimate']:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]"
        if est.get("epsilon_estimate") is not None and ci[0] is not None
        else str(est.get("epsilon_estimate"))
    )
    click.echo(
        f"audit ({lower['canary_kind']} canaries, view {lower['view']}: {result.observed}): "
        f"{lower['canaries']} canaries, {lower['inserted']} inserted, AUC {lower['auc']:.3f}"
    )
    click.echo(
        f"empirical epsilon lower bound {lower['epsilon_lower_bound']:.3g} at {confidence:.0%} confidence "
        f"({lower['correct']} of {lower['guesses']} guesses correct, delta {lower['delta']:g}) | "
        f"Gaussian estimate {shown} | accountant epsilon {acc}"
    )
    for note in result.notes[1:]:
        click.echo(f"note: {note}")
    path = write_audit(out if out is not None else Path(run_path) / "attacks", result)
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    attack()
