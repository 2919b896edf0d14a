"""Image preprocessing with PIL and torch: RGB, resize, ImageNet mean/std."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image

from dinov2.utils.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# How an image is resized to the model's input: the default (as the original DINOVPR), and the official
# evaluations of SALAD (PIL bilinear) and BoQ (bicubic with antialias on the float tensor).
RESIZE_MODES = ("pil_bicubic", "pil_bilinear", "tensor_bicubic_antialias")
_PIL_RESAMPLE = {"pil_bicubic": Image.BICUBIC, "pil_bilinear": Image.BILINEAR}


class ImageTransform:
    """PIL image to a normalised ``(3, H, W)`` float tensor of size ``(height, width)``.

    Args:
        image_size: ``(height, width)``; both must be multiples of ``patch_size``.
        patch_size: the backbone's patch size.
        resize: one of ``RESIZE_MODES`` (``vpr.data.resize``).
    """

    def __init__(self, image_size: Sequence[int], patch_size: int = 14, resize: str = "pil_bicubic") -> None:
        height, width = (int(side) for side in image_size)
        if height % patch_size or width % patch_size:
            raise InputError(
                f"vpr.data.image_size={[height, width]} must be multiples of the patch size {patch_size} "
                f"(e.g. {[max(1, height // patch_size) * patch_size, max(1, width // patch_size) * patch_size]})"
            )
        if resize not in RESIZE_MODES:
            raise InputError(f"vpr.data.resize={resize!r} is unknown; choose one of {list(RESIZE_MODES)}")
        self.size = (height, width)
        self.resize = resize
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        height, width = self.size
        image = image.convert("RGB")
        if self.resize in _PIL_RESAMPLE:
            image = image.resize((width, height), _PIL_RESAMPLE[self.resize])
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        if self.resize == "tensor_bicubic_antialias":
            pixels = F.interpolate(pixels[None], size=self.size, mode="bicubic", antialias=True)[0]
        return (pixels - self.mean) / self.std

    def settings(self) -> dict:
        """What determines the output, for cache keys."""
        return {
            "size": list(self.size),
            "resample": self.resize,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        }


def image_transform(cfg: DictConfig) -> ImageTransform:
    """The preprocessing of ``vpr.data`` (size, resize mode) for the backbone's patch size."""
    return ImageTransform(cfg.vpr.data.image_size, patch_size=cfg.student.patch_size, resize=cfg.vpr.data.resize)


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
