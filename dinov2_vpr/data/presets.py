"""The preprocessing of each method's official evaluation, as data (for transforms and cache keys)."""

from dataclasses import asdict, dataclass

from .transforms import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class Preprocessing:
    """How images are resized and normalised before the backbone.

    Attributes:
        image_size: ``(height, width)`` in pixels.
        resample: ``"bilinear"`` or ``"bicubic"``.
        resize_input: ``"pil"`` (resize the PIL image, then convert) or ``"tensor"`` (convert to a
            float tensor in [0, 1], then resize it).
        antialias: antialiased resizing of the tensor (PIL's resize always filters).
        mean: per-channel mean subtracted after resizing.
        std: per-channel standard deviation divided by after resizing.
    """

    image_size: tuple[int, int]
    resample: str
    resize_input: str
    antialias: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def settings(self) -> dict:
        """Everything that determines the preprocessed pixels, for cache keys."""
        return asdict(self)


PRESETS = {
    "salad": Preprocessing((322, 322), resample="bilinear", resize_input="pil"),
    "boq": Preprocessing((322, 322), resample="bicubic", resize_input="tensor", antialias=True),
}
