"""Losses on the cosine similarity of two descriptors and a 0/1 same-place label.

Each returns the per-pair losses (no reduction) so that the trainer decides how to average them
across ranks.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from dinov2_vpr.registry import LOSSES


class PairLoss(nn.Module):
    """Base of the pair losses: ``forward(similarity (B,), labels (B,))`` gives the ``(B,)`` per-pair losses."""


@LOSSES.register()
class ContrastiveLoss(PairLoss):
    """``y (1 - s)^2 + (1 - y) max(0, s - margin)^2``: pull positives to 1, push negatives below ``margin``."""

    def __init__(self, margin: float = 0.5) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, similarity: Tensor, labels: Tensor) -> Tensor:
        labels = labels.to(similarity.dtype)
        positive = (1 - similarity).pow(2)
        negative = F.relu(similarity - self.margin).pow(2)
        return labels * positive + (1 - labels) * negative


@LOSSES.register()
class ScaledCosineBCELoss(PairLoss):
    """Binary cross-entropy on the logit ``scale * (s - margin)``: a calibrated same-place probability."""

    def __init__(self, margin: float = 0.5, scale: float = 10.0) -> None:
        super().__init__()
        self.margin = margin
        self.scale = scale

    def forward(self, similarity: Tensor, labels: Tensor) -> Tensor:
        logits = self.scale * (similarity - self.margin)
        return F.binary_cross_entropy_with_logits(logits, labels.to(similarity.dtype), reduction="none")
