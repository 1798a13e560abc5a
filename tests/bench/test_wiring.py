"""`privfl bench` is reachable from the installed `privfl` command."""

from __future__ import annotations


def test_bench_is_registered_under_privfl():
    # privfl/cli.py names "privfl.bench.cli:bench" among the groups it imports when used
    import click

    from privfl.bench.cli import bench
    from privfl.cli import main

    assert "bench" in main.list_commands(click.Context(main))
    assert main.get_command(click.Context(main), "bench") is bench
    assert {"privacy-utility", "paper-fig2"} <= set(bench.commands)


def test_results_name_the_command_as_a_user_types_it() -> None:
    import click

    from privfl.bench.cli import _command_line, bench
    from privfl.cli import main

    fig2 = bench.commands["paper-fig2"]
    # started as `privfl bench ...`, as `python -m privfl.cli bench ...` (where the root group is
    # a second copy of privfl.cli.main, from __main__) or as the bench group alone (tests)
    assert main.name == "privfl"
    root = click.Context(click.Group("privfl"), info_name="python -m privfl.cli")
    via_main = click.Context(
        fig2, info_name="paper-fig2", parent=click.Context(bench, parent=root, info_name="bench")
    )
    alone = click.Context(fig2, info_name="paper-fig2", parent=click.Context(bench, info_name="cli"))
    assert _command_line(via_main) == _command_line(alone) == "privfl bench paper-fig2"
