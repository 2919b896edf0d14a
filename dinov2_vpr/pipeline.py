"""Steps the commands share: the frozen backbone's features for a list of images, through the cache."""

import logging
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig
from torch import Tensor

from dinov2_vpr.backbone import feature_settings, load_backbone
from dinov2_vpr.data.transforms import ImageTransform
from dinov2_vpr.features.cache import FeatureCache
from dinov2_vpr.features.extract import extract_features

logger = logging.getLogger("dinov2")


def cache_root(cfg: DictConfig, output_dir: str | Path) -> Path:
    """``vpr.features.cache_dir``, or ``<output_dir>/feature_cache``."""
    return Path(cfg.vpr.features.cache_dir or Path(output_dir) / "feature_cache")


def image_features(
    cfg: DictConfig, pretrained_weights: str | None, image_paths: Sequence[Path], output_dir: str | Path
) -> tuple[dict[str, Tensor], int]:
    """Backbone features of ``image_paths`` (encoding only what the cache lacks) and the backbone width."""
    backbone, autocast_dtype = load_backbone(cfg, pretrained_weights)
    transform = ImageTransform(cfg.vpr.data.image_size, patch_size=cfg.student.patch_size)
    cache = FeatureCache(
        cache_root(cfg, output_dir), feature_settings(cfg, pretrained_weights, transform, autocast_dtype)
    )
    features = extract_features(
        backbone,
        image_paths,
        cache,
        transform,
        batch_size=cfg.vpr.features.batch_size,
        num_workers=cfg.vpr.data.num_workers,
        autocast_dtype=autocast_dtype,
        chunk_size=cfg.vpr.features.chunk_size,
    )
    return features, backbone.embed_dim
