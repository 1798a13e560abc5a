import numpy as np
import pytest
import torch

from privfl.config import ExperimentConfig, ModelConfig
from privfl.errors import ConfigError
from privfl.models import (
    PaperLSTM,
    build_model,
    count_parameters,
    get_flat,
    initial_weights,
    mean_std_over_time,
    set_flat,
)


@pytest.mark.parametrize("name", ["cnn", "lstm"])
def test_paper_models_shapes_and_size(name):
    model = build_model(ModelConfig(name=name))
    assert 50_000 <= count_parameters(model) <= 500_000
    out = model(torch.randn(4, 300, 40), torch.tensor([300, 200, 10, 1]))
    assert out.shape == (4, 4)


@pytest.mark.parametrize(
    "name,pooling", [("cnn", "paper"), ("lstm", "paper"), ("cnn", "meanstd"), ("lstm", "meanstd")]
)
def test_padding_does_not_change_the_output(name, pooling):
    model = build_model(ModelConfig(name=name, pooling=pooling))
    x = torch.randn(1, 120, 40)
    padded = torch.cat([x, torch.zeros(1, 180, 40)], dim=1)
    torch.testing.assert_close(model(x, torch.tensor([120])), model(padded, torch.tensor([120])))


def test_flat_round_trip_and_dplstm_layout():
    plain = PaperLSTM()
    private = PaperLSTM(dp=True)
    set_flat(private, get_flat(plain))
    np.testing.assert_array_equal(get_flat(private), get_flat(plain))
    x, n = torch.randn(2, 50, 40), torch.tensor([50, 30])
    torch.testing.assert_close(private(x, n), plain(x, n), atol=1e-6, rtol=1e-5)
    assert set(k for k, _ in private.named_parameters()) == set(k for k, _ in plain.named_parameters())


def test_initial_weights_depend_only_on_seed():
    a = initial_weights(ModelConfig(), 40, seed=0)
    torch.manual_seed(123)  # global state must not matter
    np.testing.assert_array_equal(a, initial_weights(ModelConfig(), 40, seed=0))
    assert not np.array_equal(a, initial_weights(ModelConfig(), 40, seed=1))


def test_set_flat_rejects_wrong_length():
    with pytest.raises(ValueError, match="needs"):
        set_flat(build_model(ModelConfig()), np.zeros(3, dtype=np.float32))


def test_mean_std_over_time_ignores_padding_frames():
    h = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [99.0, 99.0]], [[5.0, 1.0], [5.0, 1.0], [5.0, 1.0]]])
    out = mean_std_over_time(h, torch.tensor([2, 3]))  # row 0: its third frame is padding
    expected = torch.tensor([[2.0, 1.0, 1.0, 1.0], [5.0, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(out, expected, atol=4e-3, rtol=0)  # sqrt(var + 1e-5)


@pytest.mark.parametrize("name,width", [("cnn", 2 * 32 * 20), ("lstm", 2 * 128)])
def test_meanstd_pooling_doubles_the_first_layer_and_keeps_the_paper_default(name, width):
    paper, stats = build_model(ModelConfig(name=name)), build_model(ModelConfig(name=name, pooling="meanstd"))
    assert stats.fc1.in_features == width == 2 * paper.fc1.in_features
    assert stats(torch.randn(3, 80, 40), torch.tensor([80, 40, 2])).shape == (3, 4)
    with pytest.raises(ConfigError, match="model.pooling 'attention' is not one of paper, meanstd"):
        ModelConfig(pooling="attention").validate()
    with pytest.raises(ConfigError, match="mirror the paper LSTM"):
        ExperimentConfig().override(
            {"model.name": "lstm", "model.pooling": "meanstd", "train.mode": "dp", "dp.noise_multiplier": 1.0}
        ).validate()
