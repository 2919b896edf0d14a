"""Per-channel residual scaling."""

import torch
from torch import Tensor, nn


class LayerScale(nn.Module):
    """Multiply each channel by a learned ``gamma`` (initialised to ``init_values``)."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma
