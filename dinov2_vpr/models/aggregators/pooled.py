"""Pooled backbone features, the input of the heads trained on the feature cache (``vpr.head.input``)."""

from dinov2_vpr.features.pooling import head_input, head_input_dim, pool_tokens

from .base import Aggregation, Aggregator, BackboneTokens


class Pooled(Aggregator):
    """The class token, the patch tokens' mean or their GeM, concatenated as ``vpr.head.input`` names them.

    Not normalised, and not registered: a trained head (:class:`dinov2_vpr.models.heads.MLPHead`) follows
    it in the :class:`~dinov2_vpr.models.PlaceModel`. The values are those of the feature cache, so a
    head trained there gives the same descriptors here.

    Args:
        num_channels: width of the backbone tokens.
        input_name: ``cls``, ``cls+patch`` or ``gem``.
    """

    def __init__(self, num_channels: int, input_name: str) -> None:
        super().__init__()
        self.output_dim = head_input_dim(num_channels, input_name)
        self.input_name = input_name

    def aggregate(self, tokens: BackboneTokens) -> Aggregation:
        """The pooled features of the normalised tokens, ``(B, output_dim)``."""
        return Aggregation(head_input(pool_tokens(tokens.cls_token, tokens.patch_tokens()), self.input_name))
