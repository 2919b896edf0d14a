"""The inputs of place training: image batches, trunk tokens encoded once into the token cache, validation sets."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dinov2 import distributed
from dinov2.utils.errors import InputFileNotFoundError
from dinov2_vpr.data.images import list_images
from dinov2_vpr.data.positions import utm_positions
from dinov2_vpr.data.transforms import ImageTransform, load_image
from dinov2_vpr.features.cache import image_identity
from dinov2_vpr.features.pipeline import cache_root
from dinov2_vpr.features.token_cache import TokenCache
from dinov2_vpr.models.backbone import feature_settings
from dinov2_vpr.models.place_model import PlaceModel, backbone_blocks

logger = logging.getLogger("dinov2")


class LabelledImages(Dataset):
    """``(image, label)`` of each path: the preprocessed ``(3, H, W)`` image and its place label (or index)."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform: ImageTransform) -> None:
        self.paths, self.labels, self.transform = list(paths), list(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return load_image(self.paths[index], self.transform), self.labels[index]


@dataclass(frozen=True)
class ValidationSet:
    """A VPR benchmark folder: ``database/`` and ``queries/`` images with UTM positions in their names."""

    database: list[Path]
    queries: list[Path]
    database_xy: np.ndarray
    queries_xy: np.ndarray


def read_validation_folder(folder: str | Path) -> ValidationSet:
    """The images (searched recursively) and positions of ``folder/database`` and ``folder/queries``.

    Raises:
        InputError: a folder is missing or empty, or a name carries no UTM position.
    """
    folder = Path(folder)
    for part in ("database", "queries"):
        if not (folder / part).is_dir():
            raise InputFileNotFoundError(f"Validation folder {folder} has no {part}/ (VPR benchmark layout)")
    database, queries = list_images(folder / "database"), list_images(folder / "queries")
    return ValidationSet(database, queries, utm_positions(database), utm_positions(queries))


def cached_trunk_tokens(
    cfg: DictConfig,
    model: PlaceModel,
    paths: Sequence[Path],
    transform: ImageTransform,
    autocast_dtype: torch.dtype,
    pretrained_weights: str | None,
    output_dir: str | Path,
) -> tuple[TokenCache, list[str]]:
    """The token cache of ``model``'s trunk (keyed as the feature cache, plus the block index and
    ``vpr.train.trunk_cache_dtype``) with every image of ``paths``, encoding those it lacks (the ranks
    share them); and every image's identity, its key in the cache."""
    block_index = len(backbone_blocks(model.backbone)) - model.trainable_blocks
    settings = feature_settings(cfg, pretrained_weights, transform, autocast_dtype)
    cache = TokenCache(cache_root(cfg, output_dir), settings, block_index, cfg.vpr.train.trunk_cache_dtype)
    identities = [image_identity(path) for path in paths]
    by_identity = dict(zip(identities, paths, strict=True))
    distributed.barrier()  # every rank has decided what is missing before any writes
    missing = cache.missing(identities)
    shard = missing[distributed.get_rank() :: distributed.get_world_size()]
    logger.info("Trunk tokens: %d of %d images to encode, %d on this rank", len(missing), len(by_identity), len(shard))
    device = next(model.parameters()).device
    loader = DataLoader(
        LabelledImages([by_identity[identity] for identity in shard], range(len(shard)), transform),
        batch_size=cfg.vpr.features.batch_size,
        num_workers=cfg.vpr.data.num_workers,
    )
    tokens: list[Tensor] = []
    done = pending = 0
    for images, _ in loader:
        with torch.inference_mode(), torch.autocast(device.type, autocast_dtype, enabled=autocast_dtype != torch.float):
            tokens.append(model.forward_trunk(images.to(device)).cpu())
        pending += len(images)
        if pending >= cfg.vpr.features.chunk_size or done + pending == len(shard):
            cache.write_chunk(shard[done : done + pending], torch.cat(tokens))
            done, pending, tokens = done + pending, 0, []
    distributed.barrier()
    cache.refresh()
    return cache, identities


def validation_transform(cfg: DictConfig) -> ImageTransform:
    """The preprocessing of validation (and of the trained model): ``vpr.data.val_image_size`` or ``image_size``."""
    size = cfg.vpr.data.val_image_size or cfg.vpr.data.image_size
    return ImageTransform(size, patch_size=cfg.student.patch_size, resize=cfg.vpr.data.resize)
