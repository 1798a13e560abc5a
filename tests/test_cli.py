"""CLI behaviour a user sees: exit code 2 and one clear line for bad input."""

import pytest
from click.testing import CliRunner

from privfl.cli import main


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mode", "fedsgd"], "fedsgd"),
        (["--model", "gru"], "gru"),
        (["--dataset", "timit"], "timit"),
        (["--lr", "0"], "train.lr must be > 0"),
        (["--lr", "-1"], "train.lr must be > 0"),
        (["--batch-size", "0"], "train.batch_size must be >= 1"),
        (["--rounds", "0"], "train.rounds must be >= 1"),
        (["--dataset", "iemocap"], "--data-dir"),
        (["--set", "train.round=3"], "unknown config key 'train.round'"),
        (["--set", "nonsense"], "KEY=VALUE"),
    ],
)
def test_bad_input_exits_2_with_a_clear_line(args, message, tmp_path):
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "r").exists()


def test_unknown_key_in_config_file(tmp_path):
    (tmp_path / "c.toml").write_text("[model]\nname = 'cnn'\ndepth = 3\n")
    result = CliRunner().invoke(main, ["train", "--config", str(tmp_path / "c.toml")])
    assert result.exit_code == 2
    assert "unknown config key 'model.depth'" in result.output


def test_train_then_refuse_existing_then_resume(tmp_path, tiny_config):
    cfg_path = tmp_path / "tiny.toml"
    tiny_config.to_toml(cfg_path)
    out = tmp_path / "r"
    first = CliRunner().invoke(main, ["train", "--config", str(cfg_path), "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "test UAR" in first.output
    again = CliRunner().invoke(main, ["train", "--config", str(cfg_path), "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
    more = CliRunner().invoke(
        main, ["train", "--config", str(out / "config.toml"), "--resume", str(out), "--rounds", "3"]
    )
    assert more.exit_code == 0, more.output
    assert (out / "metrics.jsonl").read_text().count("\n") == 3


def test_help_explains_the_main_options():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    for flag in ("--mode", "--clients", "--rounds", "--batch-size", "--local-epochs", "--lr", "--resume"):
        assert flag in result.output


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--mode", "dp"], ["released model eps", "run directory eps", "server eps", "another client eps"]),
        (
            ["--mode", "user-dp", "--fraction", "0.5"],
            ["released model eps", "server none", "another client eps"],
        ),
        (
            ["--mode", "dp", "--dp-noise", "seeded"],
            ["no DP guarantee against anyone who holds the seed", "server none", "another client none"],
        ),
    ],
    ids=["dp", "user-dp", "dp-seeded"],
)
def test_dp_runs_print_an_epsilon_per_observer(tmp_path, tiny_config, args, expected):
    cfg_path = tmp_path / "tiny.toml"
    tiny_config.override({"train.rounds": 1}).to_toml(cfg_path)
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--config",
            str(cfg_path),
            "--out",
            str(tmp_path / "r"),
            "--noise-multiplier",
            "1.0",
            *args,
        ],
    )
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("privacy"))
    for text in expected:
        assert text in line, (text, line)
    assert ("(eps, delta)-DP" in line) == ("seeded" not in args)


HEAVY = ("torch", "opacus", "sklearn")
"""What a process that only starts or relays a deployment run, or answers a roll call, never needs."""


def _imported_in_a_fresh_process(code: str) -> list[str]:
    import json
    import subprocess
    import sys

    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_deploy_and_keyholder_commands_start_without_torch():
    # each `privfl deploy run` and spawned `privfl keyholder serve` would otherwise pay ~4 s of CPU
    code = (
        "from click.testing import CliRunner\nfrom privfl.cli import main\n"
        "for args in (['deploy', 'run', '--help'], ['deploy', 'local', 'stop', '--help'], "
        "['keyholder', 'serve', '--help']):\n"
        "    r = CliRunner().invoke(main, args)\n"
        "    assert r.exit_code == 0, r.output\n"
        "import privfl.deploy.submit, privfl.deploy.local"
    )
    assert _imported_in_a_fresh_process(code) == []


def test_a_client_app_that_only_answers_a_roll_call_does_not_load_torch():
    pytest.importorskip("flwr")
    # a SuperNode starts a ClientApp process per message; the roll call and SecAgg+'s stages need
    # no model, only training does (ClientParty imports the components)
    assert (
        _imported_in_a_fresh_process("import privfl.fl.engines.client_app, privfl.fl.engines.secagg_relay")
        == []
    )
    assert _imported_in_a_fresh_process("from privfl.cli import main") == []
    # a FedAvg client's components need torch, not Opacus (the DP modes import it when built)
    assert _imported_in_a_fresh_process("import privfl.fl.components, privfl.fl.engines.client_app") == [
        "torch"
    ]


def test_every_command_group_is_listed_and_resolves():
    import click

    ctx = click.Context(main)
    names = main.list_commands(ctx)
    assert {"train", "data", "attack", "bench", "deploy", "keyholder"} <= set(names)
    assert all(isinstance(main.get_command(ctx, n), click.Command) for n in names)
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2 and "No such command 'no-such-command'" in result.output
