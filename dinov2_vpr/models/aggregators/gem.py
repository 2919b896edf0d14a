"""The zero-shot GeM descriptor: generalised-mean pooling of the patch tokens."""

import torch.nn.functional as F

from dinov2_vpr.features.pooling import pool_tokens
from dinov2_vpr.registry import AGGREGATORS

from .base import Aggregation, Aggregator, BackboneTokens


@AGGREGATORS.register()
class GeM(Aggregator):
    """``L2((mean_n max(x_n, 1e-6)^3)^(1/3))`` over the patch tokens after the final LayerNorm; no parameters.

    The pooling is the feature cache's ``patch_gem`` (:func:`dinov2_vpr.features.pooling.pool_tokens`),
    so zero-shot descriptors are the same whether computed here or from the cache.

    Args:
        num_channels: width of the backbone tokens (the descriptor width).
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.output_dim = num_channels

    def aggregate(self, tokens: BackboneTokens) -> Aggregation:
        """The unit GeM descriptors ``(B, C)`` of the patch tokens."""
        pooled = pool_tokens(tokens.cls_token, tokens.patch_tokens())["patch_gem"]
        return Aggregation(F.normalize(pooled, dim=-1))
