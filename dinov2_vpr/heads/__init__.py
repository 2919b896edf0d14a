"""Descriptor heads, registered in :data:`dinov2_vpr.registry.HEADS`."""

from .mlp import IdentityHead, MLPHead

__all__ = ["IdentityHead", "MLPHead"]
