"""`privfl bench` is reachable from the installed `privfl` command."""

from __future__ import annotations


def test_bench_is_registered_under_privfl():
    # privfl/cli.py: `from privfl.bench.cli import bench` and `main.add_command(bench)`
    from privfl.bench.cli import bench
    from privfl.cli import main

    assert main.commands.get("bench") is bench
    assert {"privacy-utility", "paper-fig2"} <= set(bench.commands)
