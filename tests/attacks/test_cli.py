"""`privfl attack`: flags parse into the library call; bad input is one line and exit code 2."""

import pytest
from click.testing import CliRunner

from privfl.attacks.cli import _rounds, attack
from privfl.cli import main
from privfl.errors import ConfigError


def test_rounds_parse_as_a_comma_separated_list():
    assert _rounds(None) == () and _rounds("") == ()
    assert _rounds("1, 15,30") == (1, 15, 30)
    with pytest.raises(ConfigError, match="--rounds '1,x'"):
        _rounds("1,x")


def test_every_subcommand_has_help():
    for sub in ("gender", "membership", "all"):
        got = CliRunner().invoke(attack, [sub, "--help"])
        assert got.exit_code == 0 and "--run" in got.output, got.output


def test_bad_input_is_one_line_and_exit_code_2(tmp_path):
    got = CliRunner().invoke(main, ["attack", "gender", "--run", str(tmp_path / "nope")])
    assert got.exit_code == 2
    got = CliRunner().invoke(main, ["attack", "all", "--run", str(tmp_path), "--rounds", "a"])
    assert got.exit_code == 2 and len(got.output.strip().splitlines()) == 1, got.output
    got = CliRunner().invoke(main, ["attack", "gender", "--run", str(tmp_path), "--views", "fc-profile:x"])
    assert got.exit_code == 2 and "FEATURES:K" in got.output, got.output
    assert len(got.output.strip().splitlines()) == 1, got.output
