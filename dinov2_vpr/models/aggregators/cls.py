"""The zero-shot class-token descriptor."""

import torch.nn.functional as F
from torch import Tensor

from dinov2_vpr.registry import AGGREGATORS

from .base import Aggregation, Aggregator, BackboneTokens


@AGGREGATORS.register()
class CLS(Aggregator):
    """The L2-normalised class token after the final LayerNorm; no parameters.

    Args:
        num_channels: width of the backbone tokens (the descriptor width).
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.output_dim = num_channels

    def forward(self, cls_token: Tensor) -> Tensor:
        """``(B, C)`` class tokens to ``(B, C)`` unit descriptors."""
        return F.normalize(cls_token, dim=-1)

    def aggregate(self, tokens: BackboneTokens) -> Aggregation:
        """:meth:`forward` on the class token."""
        return Aggregation(self(tokens.cls_token))
