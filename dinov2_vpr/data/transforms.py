"""Image preprocessing with PIL and torch: RGB, resize, ImageNet mean/std."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dinov2.utils.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageTransform:
    """PIL image to a normalised ``(3, H, W)`` float tensor, resized bicubically to ``(height, width)``.

    Args:
        image_size: ``(height, width)``; both must be multiples of ``patch_size``.
        patch_size: the backbone's patch size.
    """

    def __init__(self, image_size: Sequence[int], patch_size: int = 14) -> None:
        height, width = (int(side) for side in image_size)
        if height % patch_size or width % patch_size:
            raise InputError(
                f"vpr.data.image_size={[height, width]} must be multiples of the patch size {patch_size} "
                f"(e.g. {[max(1, height // patch_size) * patch_size, max(1, width // patch_size) * patch_size]})"
            )
        self.size = (height, width)
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        height, width = self.size
        image = image.convert("RGB").resize((width, height), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - self.mean) / self.std

    def settings(self) -> dict:
        """What determines the output, for cache keys."""
        return {"size": list(self.size), "resample": "bicubic", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def load_image(path: str | Path, transform: ImageTransform) -> torch.Tensor:
    """Read ``path`` and preprocess it.

    Raises:
        InputError: the file is missing or no readable image; the message names it.
    """
    try:
        with Image.open(path) as image:
            return transform(image)
    except (OSError, ValueError) as error:
        raise InputError(f"Cannot read image {path}: {error}") from error
