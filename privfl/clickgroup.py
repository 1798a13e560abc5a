"""The click group every privfl command tree uses: a PrivflError becomes one line and exit code 2."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from privfl.errors import PrivflError


class PrivflGroup(click.Group):
    """Turns any PrivflError into `error: <message>` on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PrivflError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


class LazyGroup(PrivflGroup):
    """A PrivflGroup whose subcommands are imported only when used (`lazy`: name -> "module:attr").

    `privfl deploy run` and `privfl keyholder serve` then start without importing torch, sklearn
    and the attacks (about 4 s of CPU a process); `privfl --help` still lists every command."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, attr = self.lazy[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)
