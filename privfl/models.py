"""The paper's two classifiers over log-Mel frames, and flat-vector access to their weights.

The paper gives layer types but no sizes; the widths here are config fields (ModelConfig).
Both models take x [batch, frames, n_mels] and lengths [batch] (true frame counts) and return
logits [batch, n_classes]; the softmax of the paper lives in the cross-entropy loss.
`model.pooling` swaps the paper's pooling over time (CNN: max, LSTM: mean) for the mean and the
standard deviation over real frames ("meanstd", statistics pooling as in x-vector systems,
Snyder et al. 2018), which doubles the input of the first fully connected layer. Neither has
batch-norm or buffers, so the parameters are the whole state and Opacus can wrap both.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from privfl.config import ModelConfig
from privfl.data.records import EMOTIONS


def _time_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """[batch, frames] bool, True on real (non-padding) frames."""
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


def mean_std_over_time(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, T, D] -> [B, 2D]: mean and standard deviation over each row's real frames (`lengths`)."""
    mask = _time_mask(lengths, h.shape[1]).unsqueeze(-1).to(h.dtype)
    n = lengths.clamp(min=1).unsqueeze(-1).to(h.dtype)
    mean = (h * mask).sum(dim=1) / n
    var = (((h - mean.unsqueeze(1)) * mask) ** 2).sum(dim=1) / n
    return torch.cat([mean, (var + 1e-5).sqrt()], dim=1)


class PaperCNN(nn.Module):
    """One conv layer, one max-pool, two fully connected layers (Latif et al. 2020).

    conv 5x5 (time x Mel) -> ReLU -> max-pool over all real frames and by 2 over Mel bands
    -> FC(channels * n_mels/2, fc_hidden) -> ReLU -> FC(fc_hidden, n_classes).
    Pooling over time makes the model length-independent; padding frames never win the max.
    pooling="meanstd": max-pool by 2 over Mel bands only, then the mean and standard deviation of
    each (channel, band) over real frames -> FC(2 * channels * n_mels/2, fc_hidden).
    """

    def __init__(
        self,
        n_mels: int = 40,
        channels: int = 32,
        fc_hidden: int = 128,
        n_classes: int = 4,
        pooling: str = "max",
    ):
        super().__init__()
        if pooling not in ("max", "meanstd"):
            raise ValueError(f"PaperCNN pooling must be 'max' or 'meanstd', got {pooling!r}")
        self.pooling = pooling
        self.conv = nn.Conv2d(1, channels, kernel_size=5, padding=2)
        width = channels * (n_mels // 2) * (2 if pooling == "meanstd" else 1)
        self.fc1 = nn.Linear(width, fc_hidden)
        self.fc2 = nn.Linear(fc_hidden, n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = x[:, : int(lengths.max())]  # frames that are padding for the whole batch change nothing
        h = self.conv(x.unsqueeze(1))  # [B, C, T, M]
        t = h.shape[2]
        if self.pooling == "meanstd":
            h = torch.relu(nn.functional.max_pool2d(h, kernel_size=(1, 2)))  # [B, C, T, M/2]
            h = mean_std_over_time(h.transpose(1, 2).flatten(2), lengths)  # [B, 2 * C * M/2]
            return self.fc2(torch.relu(self.fc1(h)))
        if bool((lengths < t).any()):
            h = h.masked_fill(~_time_mask(lengths, t)[:, None, :, None], float("-inf"))
        # One max-pool over all real frames and Mel pairs, then ReLU: max and ReLU commute, and
        # pooling first keeps the element-wise work (and its backward) off the full feature map.
        h = torch.relu(nn.functional.max_pool2d(h, kernel_size=(t, 2)))  # [B, C, 1, M/2]
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))


class PaperLSTM(nn.Module):
    """One LSTM layer, two fully connected layers (Latif et al. 2020).

    LSTM(n_mels -> hidden) over the frames -> mean of the outputs over real frames
    -> FC(hidden, fc_hidden) -> ReLU -> FC(fc_hidden, n_classes).
    pooling="meanstd": mean and standard deviation over real frames -> FC(2 * hidden, fc_hidden).
    With dp=True the LSTM is opacus.layers.DPLSTM, whose state-dict keys equal nn.LSTM's.
    """

    def __init__(
        self,
        n_mels: int = 40,
        hidden: int = 128,
        fc_hidden: int = 128,
        n_classes: int = 4,
        dp: bool = False,
        pooling: str = "mean",
    ):
        super().__init__()
        if pooling not in ("mean", "meanstd"):
            raise ValueError(f"PaperLSTM pooling must be 'mean' or 'meanstd', got {pooling!r}")
        self.pooling = pooling
        if dp:
            from opacus.layers import DPLSTM

            self.lstm = DPLSTM(n_mels, hidden, batch_first=True)
        else:
            self.lstm = nn.LSTM(n_mels, hidden, batch_first=True)
        self.fc1 = nn.Linear(hidden * (2 if pooling == "meanstd" else 1), fc_hidden)
        self.fc2 = nn.Linear(fc_hidden, n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        t_max = int(lengths.max())  # skip frames that are padding for the whole batch
        out, _ = self.lstm(x[:, :t_max])
        if self.pooling == "meanstd":
            return self.fc2(torch.relu(self.fc1(mean_std_over_time(out, lengths))))
        mask = _time_mask(lengths, t_max).unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(dim=1) / lengths.clamp(min=1).unsqueeze(-1).to(out.dtype)
        return self.fc2(torch.relu(self.fc1(pooled)))


def build_model(cfg: ModelConfig, n_mels: int = 40, dp: bool = False) -> nn.Module:
    """The configured model with PyTorch's default initialisation (seed torch before calling)."""
    if cfg.name == "cnn":
        pooling = "max" if cfg.pooling == "paper" else cfg.pooling
        return PaperCNN(n_mels, cfg.conv_channels, cfg.fc_hidden, len(EMOTIONS), pooling=pooling)
    pooling = "mean" if cfg.pooling == "paper" else cfg.pooling
    return PaperLSTM(n_mels, cfg.lstm_hidden, cfg.fc_hidden, len(EMOTIONS), dp=dp, pooling=pooling)


def initial_weights(cfg: ModelConfig, n_mels: int, seed: int) -> np.ndarray:
    """w0 as a flat float32 vector, the same for every run with this seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_flat(build_model(cfg, n_mels))


_LSTM_ORDER = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def canonical_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) in one fixed order for nn.LSTM and DPLSTM models alike.

    DPLSTM names its parameters like nn.LSTM but lists them in another order; flat vectors,
    aggregation and recorded updates must not depend on which one a client used.
    """
    named = list(model.named_parameters())

    def rank(item: tuple[str, nn.Parameter]) -> tuple[int, int]:
        name = item[0]
        module, _, leaf = name.rpartition(".")
        first = next(i for i, (n, _) in enumerate(named) if n.rpartition(".")[0] == module)
        return first, _LSTM_ORDER.index(leaf) if leaf in _LSTM_ORDER else 0

    return sorted(named, key=rank)


def get_flat(model: nn.Module) -> np.ndarray:
    """All parameters in canonical order as one float32 vector [n_params]."""
    return torch.cat([p.detach().reshape(-1) for _, p in canonical_parameters(model)]).cpu().numpy().copy()


def set_flat(model: nn.Module, flat: np.ndarray) -> None:
    """Load a flat vector produced by get_flat into the model, in place."""
    params = canonical_parameters(model)
    total = sum(p.numel() for _, p in params)
    if flat.shape != (total,):
        raise ValueError(f"weight vector has {flat.shape} values, the model needs ({total},)")
    src = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))
    offset = 0
    with torch.no_grad():
        for _, p in params:
            n = p.numel()
            p.copy_(src[offset : offset + n].view_as(p))
            offset += n


def layer_slices(model: nn.Module) -> dict[str, slice]:
    """Parameter name -> its slice in the flat vector (attacks read single layers)."""
    out, offset = {}, 0
    for name, p in canonical_parameters(model):
        out[name] = slice(offset, offset + p.numel())
        offset += p.numel()
    return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
