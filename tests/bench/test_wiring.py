"""`privfl bench` is reachable from the installed `privfl` command."""

from __future__ import annotations


def test_bench_is_registered_under_privfl():
    # privfl/cli.py: `from privfl.bench.cli import bench` and `main.add_command(bench)`
    from privfl.bench.cli import bench
    from privfl.cli import main

    assert main.commands.get("bench") is bench
    assert {"privacy-utility", "paper-fig2"} <= set(bench.commands)


def test_results_name_the_command_as_a_user_types_it() -> None:
    import click

    from privfl.bench.cli import _command_line

    seen = {}

    @click.group()
    def root() -> None:
        pass

    @root.command("paper-fig2")
    @click.option("--rounds", type=int)
    @click.option("--model", "models", multiple=True)
    @click.option("--full", is_flag=True)
    @click.pass_context
    def fig2(ctx, rounds, models, full) -> None:
        seen["line"] = _command_line(ctx)

    # started as `python -m privfl.cli` the root is not called "privfl"; the recorded line still is
    root.main(
        ["paper-fig2", "--rounds", "5", "--model", "lstm", "--full"],
        prog_name="python -m privfl.cli",
        standalone_mode=False,
    )
    assert seen["line"] == "privfl paper-fig2 --rounds 5 --model lstm --full"
