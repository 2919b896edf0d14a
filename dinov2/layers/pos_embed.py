"""Resampling of the patch position embedding to another grid."""

import torch
import torch.nn.functional as F
from torch import Tensor


def resample_patch_pos_embed(
    pos_embed: Tensor, grid_h: int, grid_w: int, offset: float = 0.1, antialias: bool = False
) -> Tensor:
    """Bicubically resample a square patch position embedding to a ``grid_h x grid_w`` grid.

    Args:
        pos_embed: ``(1, 1 + M*M, D)``, the class token's embedding first.
        grid_h, grid_w: target grid in patches.
        offset: DINOv2's interpolation offset; the scale factor is ``(grid + offset) / M`` when
            non-zero, else the output size is given directly.
        antialias: antialiased bicubic interpolation (used by the register models).

    Returns:
        ``(1, 1 + grid_h*grid_w, D)`` in the dtype of ``pos_embed``.
    """
    dtype = pos_embed.dtype
    pos_embed = pos_embed.float()
    num_patches, dim = pos_embed.shape[1] - 1, pos_embed.shape[2]
    side = int(num_patches**0.5)
    if side * side != num_patches:
        raise ValueError(f"The position embedding has {num_patches} patch positions, not a square grid.")
    grid = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if offset:
        # Plain floats, so that tracing (TorchScript, ONNX) records constants rather than tensors.
        size_kwargs = {"scale_factor": (float(grid_h + offset) / side, float(grid_w + offset) / side)}
    else:
        size_kwargs = {"size": (int(grid_h), int(grid_w))}
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **size_kwargs)
    if grid.shape[-2:] != (grid_h, grid_w):
        raise RuntimeError(f"Resampled position grid is {tuple(grid.shape[-2:])}, expected {(grid_h, grid_w)}.")
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat((pos_embed[:, :1], grid), dim=1).to(dtype)
