"""The SALAD/BoQ training augmentation on batched tensors: resize, RandAugment (kornia), ImageNet normalisation.

It runs on the batch's device (GPU too) and draws its randomness from torch's global RNG, so
``torch.manual_seed`` makes it repeatable.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from kornia.augmentation.auto import RandAugment
from torch import Tensor, nn

from dinov2_vpr.data.transforms import IMAGENET_MEAN, IMAGENET_STD


class TrainAugmentation(nn.Module):
    """``(B, 3, H, W)`` images in [0, 1] (float) or 0..255 (uint8) to normalised ``(B, 3, height, width)``.

    Bilinear resize (antialiased, as PIL's), then kornia's ``RandAugment(n=num_ops, m=magnitude)``
    (torchvision's defaults: 3 operations of magnitude 9 on a 0-30 scale), then ImageNet mean/std.
    kornia draws the operations once per call for all the images it is given, each image then
    getting its own random magnitude sign; ``group_size`` splits the batch into groups of that many
    consecutive images with a draw each (1: a draw per image as torchvision's per-image
    RandAugment, at the cost of one call per image).

    Args:
        image_size: ``(height, width)`` of the output.
        num_ops: the operations applied to each image.
        magnitude: their magnitude, in (0, 30).
        group_size: the images that share one draw of the operations; None: the whole batch.
    """

    def __init__(
        self, image_size: Sequence[int], num_ops: int = 3, magnitude: int = 9, group_size: int | None = None
    ) -> None:
        super().__init__()
        if group_size is not None and group_size < 1:
            raise ValueError(f"group_size must be at least 1 or None, got {group_size}")
        self.size = tuple(int(side) for side in image_size)
        self.group_size = group_size
        self.rand_augment = RandAugment(n=num_ops, m=magnitude)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Expected (B, 3, H, W) images, got shape {tuple(images.shape)}")
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if tuple(images.shape[-2:]) != self.size:
            images = F.interpolate(images, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        images = images.clamp(0.0, 1.0)
        groups = images.split(self.group_size) if self.group_size else (images,)
        augmented = torch.cat([self.rand_augment(group) for group in groups])
        return (augmented - self.mean.to(augmented.device)) / self.std.to(augmented.device)
