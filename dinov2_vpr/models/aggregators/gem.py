"""The zero-shot GeM descriptor: generalised-mean pooling of the patch tokens."""

import torch.nn.functional as F
from torch import Tensor

from dinov2_vpr.registry import AGGREGATORS

from .base import Aggregation, Aggregator, BackboneTokens


@AGGREGATORS.register()
class GeM(Aggregator):
    """``L2((mean_n max(x_n, eps)^p)^(1/p))`` over the patch grid after the final LayerNorm; no parameters.

    Args:
        num_channels: width of the backbone tokens (the descriptor width).
        p: the power (3, as the pooled ``gem`` features of the feature cache).
        eps: tokens are clamped at ``eps`` first, as GeM needs positive values.
    """

    def __init__(self, num_channels: int, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.output_dim = num_channels
        self.p = p
        self.eps = eps

    def forward(self, features: Tensor) -> Tensor:
        """``(B, C, h, w)`` patch grid to ``(B, C)`` unit descriptors."""
        pooled = features.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)
        return F.normalize(pooled, dim=-1)

    def aggregate(self, tokens: BackboneTokens) -> Aggregation:
        """:meth:`forward` on the patch grid."""
        return Aggregation(self(tokens.patch_grid))
