"""The click group every privfl command tree uses: a PrivflError becomes one line and exit code 2."""

from __future__ import annotations

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
