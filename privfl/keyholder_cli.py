"""`privfl keyholder`: the CKKS key holder as a party of its own (docs/secure-aggregation.md).

Kept apart from privfl.cli so that `python -m privfl.keyholder_cli serve` starts without importing
torch: the built-in engine spawns the key holder this way on every run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from privfl.clickgroup import PrivflGroup


@click.group(cls=PrivflGroup)
def keyholder() -> None:
    """The CKKS key holder, a party of its own: serve rounds, enrol clients."""


@keyholder.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Experiment TOML whose [secure] and [train] sections fix the CKKS parameters and packing.",
)
@click.option(
    "--registry",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Enrolment registry: the clients' public keys (privfl keyholder register).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=7710, show_default=True, help="Port; 0 picks a free one.")
@click.option("--bounds", default=None, help="Round-0 bounds 'b,bw' (a resumed built-in run passes its own).")
@click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep keys, run id and released rounds here across restarts (0600 files).",
)
def serve(
    config_path: Path, registry: Path, host: str, port: int, bounds: str | None, state_dir: Path | None
) -> None:
    """Hold the secret key; release one verified sum per round to the relay that connects."""
    from privfl.config import ExperimentConfig
    from privfl.errors import ConfigError
    from privfl.fl.secure.enrolment import read_registry
    from privfl.fl.secure.keyholder import KeyHolder
    from privfl.fl.secure.service import keyholder_settings
    from privfl.fl.secure.service import serve as serve_rounds

    cfg = ExperimentConfig.from_toml(config_path).validate()
    params, needed = keyholder_settings(cfg)
    start = None
    if bounds is not None:
        try:
            b, bw = (int(v) for v in bounds.split(","))
        except ValueError as exc:
            raise ConfigError(f"--bounds {bounds!r} must be two integers 'b,bw', e.g. 16,20") from exc
        start = (b, bw)
    core = KeyHolder(params, read_registry(registry), min_clients=needed, bounds=start, state_dir=state_dir)
    serve_rounds(core, host, port, announce=lambda line: click.echo(line, nl=True) or sys.stdout.flush())


@keyholder.command()
@click.option("--client-id", required=True, type=int, help="This client's id (its partition-id).")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where this client's signing key lives (created from OS entropy, mode 0600, if missing).",
)
def enrol(client_id: int, key_path: Path) -> None:
    """On a client: create its signing key and print 'ID PUBLIC-KEY' for the key holder's registry."""
    from privfl.fl.secure.enrolment import SigningKey

    key = SigningKey.load_or_create(key_path)
    click.echo(f"{client_id} {key.public_bytes().hex()}")


@keyholder.command()
@click.option("--registry", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--client-id", required=True, type=int)
@click.option("--public-key", required=True, help="The hex key `privfl keyholder enrol` printed.")
def register(registry: Path, client_id: int, public_key: str) -> None:
    """On the key holder: add one client's public key to the registry (created if missing)."""
    from privfl.errors import CryptoError
    from privfl.fl.secure.enrolment import read_registry, write_registry

    keys = read_registry(registry) if registry.exists() else {}
    try:
        raw = bytes.fromhex(public_key)
    except ValueError as exc:
        raise CryptoError(f"--public-key {public_key!r} is not hex") from exc
    if len(raw) != 32:
        raise CryptoError(f"--public-key has {len(raw)} bytes, an Ed25519 public key has 32")
    keys[client_id] = raw
    write_registry(registry, keys)
    read_registry(registry)  # the same checks the key holder runs at start
    click.echo(f"{registry}: {len(keys)} client(s) enrolled")


if __name__ == "__main__":
    keyholder()
