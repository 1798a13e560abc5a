"""What a Flower deployment checks before it trains, without starting one: the ServerApp's run
config (privfl.flower_app.RunRequest), the roll call over a stand-in Grid, and how `privfl deploy
run` turns a run's final status into an exit code (privfl.deploy.submit)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from privfl.config import ExperimentConfig
from privfl.errors import ConfigError, PrivflError, RunError
from privfl.runs import RunDir
from tests.conftest import TINY

pytest.importorskip("flwr", reason='Flower is not installed: pip install -e ".[flower]"')

from privfl.deploy import DeployError  # noqa: E402
from privfl.deploy import submit as submit_mod  # noqa: E402
from privfl.errors import EngineError  # noqa: E402
from privfl.fl.engines.messages import NUM_PARTITIONS, PARTITION_ID  # noqa: E402
from privfl.fl.engines.server_app import roll_call  # noqa: E402
from privfl.flower_app import RunRequest  # noqa: E402


def request(**rc) -> RunRequest:
    return RunRequest.from_run_config(rc)


# --- the ServerApp's run config -------------------------------------------------------------------
@pytest.mark.parametrize("key", ["config", "out", "resume"])
def test_relative_paths_are_refused_naming_the_key(key):
    rc = {key: "runs/x"} if key != "config" else {"config": "exp.toml", "out": "/abs/run"}
    with pytest.raises(
        ConfigError, match=rf"run config {key}='[^']+' must be an absolute path.*{key}=\"/abs"
    ):
        request(**rc)


def test_out_or_resume_exactly_one():
    with pytest.raises(ConfigError, match="neither out= nor resume="):
        request()
    with pytest.raises(ConfigError, match="both out=.*and resume="):
        request(out="/a", resume="/b")


def test_resume_alone_takes_the_runs_own_config(tmp_path):
    saved = ExperimentConfig().override({**TINY, "train.clients": 3, "train.lr": 0.07})
    RunDir.create(tmp_path / "run", saved)
    assert request(resume=str(tmp_path / "run")).experiment() == saved
    # config= may raise train.rounds only, and an error names both keys
    longer = saved.override({"train.rounds": 5})
    longer.to_toml(tmp_path / "longer.toml")
    assert request(resume=str(tmp_path / "run"), config=str(tmp_path / "longer.toml")).experiment() == longer
    saved.override({"train.lr": 0.5}).to_toml(tmp_path / "other.toml")
    with pytest.raises(
        ConfigError, match=r"config='.*other.toml' differs .* in train.lr; resume with resume="
    ):
        request(resume=str(tmp_path / "run"), config=str(tmp_path / "other.toml")).experiment()


def test_a_bad_resume_names_resume(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match=r"run config resume='.*empty': .*no config.toml"):
        request(resume=str(tmp_path / "empty")).experiment()
    with pytest.raises(ConfigError, match=r"run config config='.*missing.toml': .*does not exist"):
        request(out=str(tmp_path / "r"), config=str(tmp_path / "missing.toml")).experiment()


def test_an_existing_run_directory_names_resume_overwrite_and_out(tmp_path):
    run = tmp_path / "run"
    RunDir.create(run, ExperimentConfig())
    with pytest.raises(RunError) as err:
        request(out=str(run)).check_target()
    message = str(err.value)
    assert f'resume="{run}"' in message and "overwrite=true" in message and "out=" in message
    assert "--" not in message  # no CLI flags under flwr run
    request(out=str(run), overwrite=True).check_target()  # privfl's own directory may be replaced
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(RunError, match="not a privfl run directory.*set out="):
        request(out=str(tmp_path / "notes"), overwrite=True).check_target()
    request(out=str(tmp_path / "fresh")).check_target()


# --- the roll call ----------------------------------------------------------------------------------
class StandInGrid:
    """A Grid whose nodes answer the roll call at once with the given partition ids."""

    def __init__(self, partitions: dict[int, int], num_partitions: int) -> None:
        self.partitions, self.k = partitions, num_partitions
        self.sent: list[int] = []

    def get_node_ids(self):
        return list(self.partitions)

    def push_messages(self, messages):
        self.sent.extend(m.metadata.dst_node_id for m in messages)
        return [f"m{m.metadata.dst_node_id}" for m in messages]

    def pull_messages(self, ids):
        replies = []
        for mid in ids:
            node = int(mid[1:])
            info = {PARTITION_ID: self.partitions[node], NUM_PARTITIONS: self.k}
            replies.append(
                SimpleNamespace(
                    metadata=SimpleNamespace(reply_to_message_id=mid, src_node_id=node),
                    has_error=lambda: False,
                    content=SimpleNamespace(config_records={"node": info}),
                )
            )
        return replies


@pytest.fixture(autouse=True)
def plain_messages(monkeypatch):
    """Messages without a Flower run around them (flwr's Message wants its process's run id)."""
    from privfl.fl.engines import server_app

    def message(content, dst_node_id, message_type):
        return SimpleNamespace(content=content, metadata=SimpleNamespace(dst_node_id=dst_node_id))

    monkeypatch.setattr(server_app, "Message", message)


def test_roll_call_maps_partitions_to_nodes():
    node_of, keys = roll_call(StandInGrid({11: 1, 10: 0, 12: 2}, 3), 3, ckks=False, timeout=5)
    assert node_of == {0: 10, 1: 11, 2: 12} and keys == {}


def test_roll_call_names_the_missing_ids_as_soon_as_the_connected_nodes_answered():
    seen = []
    with pytest.raises(
        EngineError, match=r"partition-id\(s\) \[1, 3\] within 1s \(answered: \[0, 2\]\).*node-timeout="
    ):
        roll_call(
            StandInGrid({10: 0, 12: 2}, 4),
            4,
            ckks=False,
            timeout=1.0,
            progress=lambda m, f: seen.append((m, dict(f))),
        )
    assert seen == [([1, 3], {0: 10, 2: 12})]  # once, when the answers were in, not only at the timeout


def test_roll_call_asks_a_node_again_whose_answer_was_dropped(monkeypatch):
    from privfl.fl.engines import server_app

    class DroppingGrid(StandInGrid):
        """Node 11's first query is lost (its SuperNode dropped the task)."""

        def push_messages(self, messages):
            ids = super().push_messages(messages)
            return [f"lost{i}" if i == "m11" and self.sent.count(11) == 1 else i for i in ids]

        def pull_messages(self, ids):
            return super().pull_messages([i for i in ids if not i.startswith("lost")])

    monkeypatch.setattr(server_app, "ROLL_CALL_RETRY_S", 0.2)
    grid = DroppingGrid({10: 0, 11: 1}, 2)
    assert roll_call(grid, 2, ckks=False, timeout=10)[0] == {0: 10, 1: 11}
    assert sorted(grid.sent) == [10, 11, 11]  # asked again, and only the node that had not answered


def test_roll_call_refuses_a_wrong_partition_count_and_a_duplicate_at_once():
    with pytest.raises(EngineError, match="num-partitions=2, the experiment has train.clients = 3"):
        roll_call(StandInGrid({10: 0, 11: 1}, 2), 3, ckks=False, timeout=60)
    with pytest.raises(EngineError, match="both claim partition-id=0"):
        roll_call(StandInGrid({10: 0, 11: 0}, 2), 2, ckks=False, timeout=60)


# --- privfl deploy run ------------------------------------------------------------------------------
def test_deploy_run_refuses_relative_paths_before_contacting_flower():
    with pytest.raises(DeployError, match=r'--out runs/x: must be an absolute path.*"\$PWD/runs/x"'):
        submit_mod.RunRequest(out="runs/x").check()
    with pytest.raises(DeployError, match="--out RUN_DIR for a new run, or --resume"):
        submit_mod.RunRequest().check()


@pytest.mark.parametrize(
    ("status", "details", "expected"),
    [
        ("finished:completed", "", None),
        (
            "finished:failed",
            "ServerApp failed with exception: run directory /r already exists; set overwrite=true",
            r"run 7 finished:failed: run directory /r already exists; set overwrite=true \(full log: flwr",
        ),
        ("finished:stopped", "N/A", r'run 7 finished:stopped: stopped before .* --resume "/abs/run"'),
    ],
)
def test_deploy_run_exits_by_the_runs_final_status(monkeypatch, status, details, expected):
    calls = []

    def flwr_json(args, what):
        calls.append(args[0])
        if args[0] == "run":
            return {"success": True, "run-id": "7"}
        return {"success": True, "runs": [{"status": status, "status-details": details}]}

    monkeypatch.setattr(submit_mod, "_flwr_json", flwr_json)
    monkeypatch.setattr(submit_mod, "stream_log", lambda fed, run_id, echo: calls.append("log"))
    req = submit_mod.RunRequest(out="/abs/run")
    if expected is None:
        assert submit_mod.deploy_run("/app", "fed", req)["status"] == status
    else:
        with pytest.raises(DeployError, match=expected) as err:
            submit_mod.deploy_run("/app", "fed", req)
        assert isinstance(err.value, PrivflError)  # the CLI's one line and exit code 2
    assert calls == ["run", "log", "ls"]


def test_the_serverapp_refuses_an_experiment_flower_cannot_run_before_the_roll_call(tmp_path):
    from privfl.flower_app import main

    ExperimentConfig().override({"secure.scheme": "ckks", "secure.debug_check": True}).to_toml(
        tmp_path / "e.toml"
    )

    class NoGrid:
        def get_node_ids(self):
            raise AssertionError("the roll call started before the config was checked")

    context = SimpleNamespace(run_config={"config": str(tmp_path / "e.toml"), "out": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match=r"run config config='.*e.toml' cannot run: secure.debug_check"):
        main(NoGrid(), context)
    assert not (tmp_path / "run").exists()
