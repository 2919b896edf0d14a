"""What every aggregator reads from the backbone and what it gives back."""

import math
from dataclasses import dataclass

from torch import Tensor, nn

from dinov2.utils.errors import InputError


@dataclass(frozen=True)
class BackboneTokens:
    """A batch of backbone tokens, as aggregators read them.

    Attributes:
        cls_token: ``(B, C)``.
        register_tokens: ``(B, R, C)`` (``R = 0`` without registers).
        patch_grid: ``(B, C, h, w)``; patch token ``n`` is at ``[:, :, n // w, n % w]`` (row-major).
    """

    cls_token: Tensor
    register_tokens: Tensor
    patch_grid: Tensor

    def float(self) -> "BackboneTokens":
        """The tokens in float32 (after a backbone run under autocast)."""
        return BackboneTokens(self.cls_token.float(), self.register_tokens.float(), self.patch_grid.float())

    def patch_tokens(self) -> Tensor:
        """The patch grid as ``(B, h*w, C)`` tokens in row-major order (a view)."""
        return self.patch_grid.permute(0, 2, 3, 1).flatten(1, 2)


@dataclass(frozen=True)
class Aggregation:
    """An aggregator's result: ``(B, D)`` descriptors and its attention maps (``(B, Q, h*w)`` each), if any."""

    descriptors: Tensor
    attention_maps: tuple[Tensor, ...] = ()


class Aggregator(nn.Module):
    """Base class of the registered aggregators.

    Subclasses set ``output_dim`` (the descriptor width) and, where they need them, ``final_norm``
    (whether the tokens are taken after the backbone's final LayerNorm) and ``min_patches``.
    """

    final_norm: bool = True
    min_patches: int = 1
    output_dim: int

    def aggregate(self, tokens: BackboneTokens) -> Aggregation:
        """The descriptors (and attention maps) of a batch of backbone tokens."""
        raise NotImplementedError

    def check_grid(self, grid_h: int, grid_w: int, patch_size: int = 14) -> None:
        """Raise :class:`InputError` naming the image and the smallest one that works when the grid is too small."""
        if grid_h * grid_w >= self.min_patches:
            return
        side = math.isqrt(self.min_patches - 1) + 1
        raise InputError(
            f"{type(self).__name__} needs at least {self.min_patches} patches, but {grid_h * patch_size}x"
            f"{grid_w * patch_size} pixel images give a {grid_h}x{grid_w} grid of {grid_h * grid_w} "
            f"(patch size {patch_size}); the smallest square size that works is {side * patch_size}x"
            f"{side * patch_size} pixels (a {side}x{side} grid)"
        )
