"""In-memory place descriptors: load a model once, describe PIL images or tensors, compare two images.

>>> model = load_place_model(head="runs/train", pretrained_weights="dinov2_vits14_pretrain.pth",
...                          config_file="dinov2/configs/eval/vits14_pretrain.yaml")
>>> model.similarity(Image.open("a.jpg"), Image.open("b.jpg"))
"""

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor, nn

from dinov2.utils.errors import InputError
from dinov2_vpr.config import build_vpr_config
from dinov2_vpr.data.transforms import ImageTransform, image_transform, load_image
from dinov2_vpr.models.backbone import check_weights_choice, features_autocast_dtype
from dinov2_vpr.models.build import build_place_model, choice_options
from dinov2_vpr.models.descriptor_config import configure_descriptor, model_info
from dinov2_vpr.models.place_model import PlaceModel

ImageLike = Image.Image | Tensor | str | Path


class PlaceDescriptor(nn.Module):
    """A :class:`~dinov2_vpr.models.PlaceModel` with its preprocessing and precision: images to unit descriptors.

    Args:
        model: the place model (a method's, or the frozen backbone with pooled features and a head).
        transform: the preprocessing of PIL images (size, resize mode, ImageNet normalisation).
        autocast_dtype: the backbone's precision in :meth:`describe` (``vpr.features.precision``).
        config: the resolved config the model was built from.
        settings: what the model is (head file, method, weights, architecture), for the files written with descriptors.
    """

    def __init__(
        self,
        model: PlaceModel,
        transform: ImageTransform,
        autocast_dtype: torch.dtype = torch.float,
        config: DictConfig | None = None,
        settings: dict | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.transform = transform
        self.autocast_dtype = autocast_dtype
        self.config = config
        self.settings = settings or {}

    @property
    def backbone(self) -> nn.Module:
        """The DINOv2 backbone."""
        return self.model.backbone

    @property
    def output_dim(self) -> int:
        """Width of the descriptors."""
        return self.model.output_dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` normalised images (as :attr:`transform` makes them) to ``(B, D)`` unit descriptors.

        Runs in the parameters' precision; :meth:`describe` adds the backbone's autocast (``vpr.features.precision``).
        """
        return self.model(images)

    def _image_tensors(self, images: ImageLike | Sequence[ImageLike]) -> Iterator[Tensor]:
        """Each image as a ``(3, H, W)`` tensor: PIL images and files are preprocessed, tensors taken as they are."""
        items = [images] if isinstance(images, (Image.Image, Tensor, str, Path)) else images
        for item in items:
            if isinstance(item, Image.Image):
                yield self.transform(item)
            elif isinstance(item, (str, Path)):
                yield load_image(item, self.transform)
            elif isinstance(item, Tensor) and item.dim() == 4 and item.shape[1] == 3:
                yield from item
            elif isinstance(item, Tensor) and item.dim() == 3 and item.shape[0] == 3:
                yield item
            else:
                shape = tuple(item.shape) if isinstance(item, Tensor) else type(item).__name__
                raise TypeError(
                    f"Cannot describe {shape}: pass PIL images, image files, or normalised tensors "
                    "(3, H, W) / (B, 3, H, W)"
                )

    def _batches(self, images: ImageLike | Sequence[ImageLike], batch_size: int) -> Iterator[Tensor]:
        batch: list[Tensor] = []
        for tensor in self._image_tensors(images):
            batch.append(tensor)
            if len(batch) == batch_size:
                yield torch.stack(batch)
                batch = []
        if batch:
            yield torch.stack(batch)

    @torch.inference_mode()
    def describe(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 32) -> Tensor:
        """Unit descriptors ``(N, D)`` (float32, on the CPU) of one image or a sequence of them.

        Args:
            images: a PIL image, an image file, a normalised ``(3, H, W)`` or ``(B, 3, H, W)`` tensor,
                or a sequence of these; tensors must have H and W multiples of the patch size.
            batch_size: images per backbone call.

        The backbone runs as in feature extraction (same autocast), so descriptors match those of
        ``python -m dinov2_vpr.run.extract`` with the same model.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        self.eval()
        device = self.device
        descriptors = [
            self.model.describe(batch.to(device), self.autocast_dtype).cpu()
            for batch in self._batches(images, batch_size)
        ]
        if not descriptors:
            raise ValueError("No images to describe")
        return torch.cat(descriptors)

    def similarity(self, image_a: ImageLike, image_b: ImageLike) -> float:
        """Cosine similarity of the descriptors of two images (each one PIL image, file or ``(3, H, W)`` tensor)."""
        descriptors = self.describe([image_a, image_b])
        if len(descriptors) != 2:
            raise ValueError(f"similarity compares two single images; got {len(descriptors)} images in total")
        return float(descriptors[0] @ descriptors[1])


def load_place_model(
    head: str | Path | None = None,
    pretrained_weights: str | Path | None = None,
    config_file: str | Path | None = None,
    opts: Sequence[str] = (),
    random_backbone: bool = False,
    zero_shot: str | None = None,
    method: str | None = None,
    device: str | torch.device | None = None,
    model: str | Path | None = None,
) -> PlaceDescriptor:
    """Build a :class:`PlaceDescriptor` once, frozen and in eval mode.

    Args:
        head: a trained ``head.pth`` or training output folder; None for zero-shot descriptors.
        pretrained_weights: the backbone weights (an official ``dinov2_*_pretrain.pth``), or with
            ``method`` the method's released file (``dino_salad.ckpt``, ``dinov2_12288.pth``).
        config_file: the model config (e.g. ``dinov2/configs/eval/vits14_pretrain.yaml``); with a
            head, the one it was trained with; with a method, its backbone's (``vitb14_pretrain.yaml``).
        opts: config overrides ``key=value`` (e.g. ``vpr.data.image_size=[322,322]``).
        random_backbone: allow a random backbone without weights (tests only).
        zero_shot: without a head, ``"cls"`` (default) or ``"gem"`` pooling as the descriptor.
        method: ``"salad"`` or ``"boq"``: that method's model and its official preprocessing.
        device: where the model runs; default this process's GPU, else the CPU.
        model: a place model trained here (its run folder or ``model.pth``); ``pretrained_weights`` is
            then the DINOv2 backbone it was trained on, and the file sets the architecture, aggregator
            and preprocessing.

    Raises:
        InputError: no weights without ``random_backbone`` (or both), a head or zero-shot pooling
            with a method or a trained model, or a head that does not fit the config (see
            :func:`dinov2_vpr.models.descriptor_config.configure_descriptor`).
    """
    check_weights_choice(pretrained_weights, random_backbone, "pretrained_weights", "random_backbone=True")
    if model is not None and (method or head is not None or zero_shot):
        raise InputError("A trained model makes its own descriptors: give model without method, head or zero_shot")
    cfg = build_vpr_config(str(config_file) if config_file else None, [*choice_options(method, model), *opts])
    head_state = configure_descriptor(cfg, head, zero_shot)
    weights = str(pretrained_weights) if pretrained_weights else None
    place_model = build_place_model(cfg, weights, head_state)
    descriptor = PlaceDescriptor(
        place_model,
        image_transform(cfg),
        features_autocast_dtype(cfg, next(place_model.parameters()).device),
        config=cfg,
        settings={**model_info(cfg, head, zero_shot, weights), "model": cfg.vpr.model.trained},
    )
    if device is not None:
        descriptor.to(device)
        descriptor.autocast_dtype = features_autocast_dtype(cfg, torch.device(device))
    return descriptor.eval()
