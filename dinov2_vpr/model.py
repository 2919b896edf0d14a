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
from dinov2_vpr.backbone import features_autocast_dtype, load_backbone
from dinov2_vpr.config import build_vpr_config
from dinov2_vpr.data.transforms import ImageTransform, image_transform, load_image
from dinov2_vpr.descriptor_config import configure_descriptor, describe_model
from dinov2_vpr.features.pooling import backbone_features, head_input
from dinov2_vpr.train import build_head

ImageLike = Image.Image | Tensor | str | Path


class PlaceDescriptor(nn.Module):
    """Frozen backbone, pooling of its tokens and a descriptor head: images to unit-length descriptors.

    Args:
        backbone: the DINOv2 backbone (``forward_features`` gives the normalised tokens).
        head: a registered head, ``(B, D_in)`` features to ``(B, D)`` unit descriptors.
        input_name: the backbone features the head reads (``cls``, ``cls+patch`` or ``gem``).
        transform: the preprocessing of PIL images (size, ImageNet normalisation).
        autocast_dtype: the backbone's precision in :meth:`describe` (``vpr.features.precision``).
        config: the resolved config the model was built from.
        settings: what the model is (head file, weights, architecture), for the files written with descriptors.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        input_name: str,
        transform: ImageTransform,
        autocast_dtype: torch.dtype = torch.float,
        config: DictConfig | None = None,
        settings: dict | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.input_name = input_name
        self.transform = transform
        self.autocast_dtype = autocast_dtype
        self.config = config
        self.settings = settings or {}

    @property
    def output_dim(self) -> int:
        """Width of the descriptors."""
        return self.head.output_dim

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` normalised images (as :attr:`transform` makes them) to ``(B, D)`` unit descriptors.

        Runs in the parameters' precision; :meth:`describe` adds the backbone's autocast (``vpr.features.precision``).
        """
        return self.head(head_input(backbone_features(self.backbone, images), self.input_name))

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
        descriptors = []
        for batch in self._batches(images, batch_size):
            enabled = self.autocast_dtype != torch.float
            with torch.autocast(device.type, dtype=self.autocast_dtype, enabled=enabled):
                features = backbone_features(self.backbone, batch.to(device))
            descriptors.append(self.head(head_input(features, self.input_name)).float().cpu())
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
    device: str | torch.device | None = None,
) -> PlaceDescriptor:
    """Build a :class:`PlaceDescriptor` once: backbone, pooling and head, frozen and in eval mode.

    Args:
        head: a trained ``head.pth`` or training output folder; None for zero-shot descriptors.
        pretrained_weights: the backbone weights (an official ``dinov2_*_pretrain.pth``).
        config_file: the model config (e.g. ``dinov2/configs/eval/vits14_pretrain.yaml``); with a
            head, the one it was trained with.
        opts: config overrides ``key=value`` (e.g. ``vpr.data.image_size=[322,322]``).
        random_backbone: allow a random backbone without weights (tests only).
        zero_shot: without a head, ``"cls"`` (default) or ``"gem"`` pooling as the descriptor.
        device: where the model runs; default this process's GPU, else the CPU.

    Raises:
        ValueError: no weights without ``random_backbone`` (or both), or a head that does not fit
            the config (see :func:`dinov2_vpr.descriptor_config.configure_descriptor`).
    """
    if not pretrained_weights and not random_backbone:
        raise InputError("pretrained_weights is required (or random_backbone=True, for testing only)")
    if pretrained_weights and random_backbone:
        raise InputError("Give either pretrained_weights or random_backbone=True, not both")
    cfg = build_vpr_config(str(config_file) if config_file else None, list(opts))
    head_state = configure_descriptor(cfg, head, zero_shot)
    weights = str(pretrained_weights) if pretrained_weights else None
    backbone, autocast_dtype = load_backbone(cfg, weights)
    head_module = build_head(cfg, backbone.embed_dim)
    if head_state is not None:
        head_module.load_state_dict(head_state["head"])
    model = PlaceDescriptor(
        backbone,
        head_module.to(next(backbone.parameters()).device),
        cfg.vpr.head.input,
        image_transform(cfg),
        autocast_dtype,
        config=cfg,
        settings=describe_model(cfg, head, zero_shot, weights),
    )
    if device is not None:
        model.to(device)
        model.autocast_dtype = features_autocast_dtype(cfg, torch.device(device))
    return model.eval()
