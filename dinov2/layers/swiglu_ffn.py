"""The SwiGLU feed-forward network used by ViT-g/14."""

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn


def swiglu_hidden_features(hidden_features: int) -> int:
    """Width of the fused SwiGLU hidden layer: 2/3 of the MLP width, rounded up to a multiple of 8."""
    return (int(hidden_features * 2 / 3) + 7) // 8 * 8


class SwiGLUFFNFused(nn.Module):
    """SwiGLU: ``w3(silu(x1) * x2)`` with ``x1, x2 = w12(x)``; official ``w12``/``w3`` parameter names.

    ``hidden_features`` is the nominal MLP width (``embed_dim * mlp_ratio``); the layer uses
    :func:`swiglu_hidden_features` of it, as the released ViT-g/14 does.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[..., nn.Module] | None = None,
        drop: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden = swiglu_hidden_features(hidden_features or in_features)
        self.w12 = nn.Linear(in_features, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)
