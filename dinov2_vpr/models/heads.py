"""Heads on frozen backbone features; every head ends in an L2-normalised descriptor."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2.utils.errors import InputError
from dinov2_vpr.registry import HEADS

from .batch_dropout import BatchDropout

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


@HEADS.register()
class MLPHead(nn.Module):
    """Standardisation, linear layers with activation and dropout between them, then L2 normalisation.

    The input is standardised per channel with statistics of the training features (buffers set
    by :meth:`fit_input_statistics`, saved with the head): DINOv2 class tokens share a large common
    component that would otherwise dominate every cosine.

    Args:
        input_dim: width of the input features.
        hidden_dims: widths of the hidden layers (empty: a single linear map).
        output_dim: descriptor width.
        activation: one of ``gelu``, ``relu``, ``silu``, ``tanh``.
        dropout: dropout after each hidden activation (:class:`BatchDropout`: rank-independent in training).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = (1024,),
        output_dim: int = 256,
        activation: str = "gelu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise InputError(f"vpr.head.activation={activation!r} is unknown; choose one of {sorted(ACTIVATIONS)}")
        layers: list[nn.Module] = []
        width = input_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation](), BatchDropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, output_dim))
        self.layers = nn.Sequential(*layers)
        self.output_dim = output_dim
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_scale", torch.ones(input_dim))

    @torch.no_grad()
    def fit_input_statistics(self, features: Tensor) -> None:
        """Set the standardisation from training features ``(N, input_dim)``."""
        self.input_mean.copy_(features.mean(dim=0))
        self.input_scale.copy_(1.0 / (features.std(dim=0) + 1e-6))

    def forward(self, features: Tensor) -> Tensor:
        """``(B, input_dim)`` features to ``(B, output_dim)`` unit-length descriptors."""
        return F.normalize(self.layers((features - self.input_mean) * self.input_scale), dim=-1)
