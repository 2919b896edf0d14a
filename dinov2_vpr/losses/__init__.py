"""Pair losses on cosine similarity, registered in :data:`dinov2_vpr.registry.LOSSES`."""

from .pair_losses import ContrastiveLoss, ScaledCosineBCELoss

__all__ = ["ContrastiveLoss", "ScaledCosineBCELoss"]
