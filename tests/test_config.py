import pytest

from privfl.config import FLAG_FIELDS, ExperimentConfig
from privfl.errors import ConfigError


def test_toml_round_trip(tmp_path):
    cfg = (
        ExperimentConfig()
        .override(
            {
                "train.rounds": 7,
                "dp.noise_multiplier": 1.5,
                "data.speed_perturb": [0.9, 1.1],
                "train.mode": "dp",
            }
        )
        .validate()
    )
    cfg.to_toml(tmp_path / "c.toml")
    assert ExperimentConfig.from_toml(tmp_path / "c.toml") == cfg


def test_unknown_key_is_named(tmp_path):
    (tmp_path / "c.toml").write_text("[train]\nrounds = 3\nround = 4\n")
    with pytest.raises(ConfigError, match="'train.round'.*valid keys"):
        ExperimentConfig.from_toml(tmp_path / "c.toml")


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="train.rounds must be an integer"):
        ExperimentConfig.from_dict({"train": {"rounds": "ten"}})


@pytest.mark.parametrize(
    "override, message",
    [
        ({"train.lr": 0.0}, "train.lr must be > 0"),
        ({"train.lr": -0.1}, "train.lr must be > 0"),
        ({"train.batch_size": 0}, "train.batch_size must be >= 1"),
        ({"train.rounds": 0}, "train.rounds must be >= 1"),
        ({"train.mode": "fedprox"}, "train.mode 'fedprox' is not one of"),
        ({"model.name": "transformer"}, "model.name 'transformer'"),
        ({"data.dataset": "timit"}, "data.dataset 'timit'"),
        ({"data.dataset": "iemocap"}, "--data-dir"),
        ({"train.mode": "dp"}, "exactly one of --noise-multiplier or --target-epsilon"),
        ({"train.mode": "dp", "dp.noise_multiplier": 1.0, "dp.target_epsilon": 3.0}, "exactly one"),
        ({"dp.delta": 1.5}, "dp.delta must be in"),
        ({"dp.noise_multiplier": -1.0}, "dp.noise_multiplier must be > 0"),
        ({"train.fraction": 0.0}, "train.fraction"),
    ],
)
def test_bad_values_raise_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig().override(override).validate()


def test_every_flag_maps_to_a_field():
    cfg = ExperimentConfig().to_dict()
    for path in FLAG_FIELDS.values():
        node = cfg
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        assert leaf in node or leaf in ("noise_multiplier", "target_epsilon", "delta"), path


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        ExperimentConfig().seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "override, message",
    [
        ({"secure.min_clients": 1}, "secure.min_clients = 1: the key holder refuses sums of fewer than 2"),
        ({"train.clients": 1}, "a round samples at most 1 client"),
        (
            {"train.clients": 4, "train.fraction": 0.25},
            "secure.min_clients = 2, but a round samples at most 1",
        ),
        (
            {"train.clients": 4, "secure.min_clients": 5},
            "secure.min_clients = 5, but a round samples at most 4",
        ),
        ({"secure.keyholder_key": "abcd"}, "not a 64-hex-digit Ed25519 public key"),
        ({"secure.keyholder": "localhost"}, "must be host:port"),
    ],
)
def test_ckks_settings_are_checked_at_start(override, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig().override({"secure.scheme": "ckks", **override}).validate()


def test_ckks_min_clients_defaults_to_3_where_rounds_allow_else_2():
    from privfl.config import min_clients

    assert min_clients(ExperimentConfig().override({"train.clients": 5})) == 3
    assert min_clients(ExperimentConfig().override({"train.clients": 2})) == 2
    assert min_clients(ExperimentConfig().override({"train.clients": 10, "train.fraction": 0.2})) == 2


def test_server_lr_is_checked_and_only_for_fedavg():
    base = ExperimentConfig()
    assert base.train.server_lr == 1.0
    base.override({"train.server_lr": 2.0}).validate()
    with pytest.raises(ConfigError, match=r"train.server_lr must be > 0, got 0.0; 1.0 is plain FedAvg"):
        base.override({"train.server_lr": 0.0}).validate()
    with pytest.raises(
        ConfigError, match=r"train.server_lr = 2.0 is implemented for --mode fedavg only .*'central'"
    ):
        base.override({"train.server_lr": 2.0, "train.mode": "central"}).validate()
