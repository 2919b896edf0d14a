"""Steps the commands share: the frozen backbone's features for a list of images, through the cache."""

import logging
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig
from torch import Tensor

from dinov2 import distributed
from dinov2_vpr.data.transforms import image_transform
from dinov2_vpr.features.cache import FeatureCache
from dinov2_vpr.features.extract import extract_features
from dinov2_vpr.features.pooling import pooled_encoder
from dinov2_vpr.models.backbone import descriptor_settings, feature_settings, features_autocast_dtype, load_backbone
from dinov2_vpr.models.build import build_place_model

logger = logging.getLogger("dinov2")

DESCRIPTOR = "descriptor"


def cache_root(cfg: DictConfig, output_dir: str | Path) -> Path:
    """``vpr.features.cache_dir``, or ``<output_dir>/feature_cache``."""
    return Path(cfg.vpr.features.cache_dir or Path(output_dir) / "feature_cache")


def image_features(
    cfg: DictConfig, pretrained_weights: str | None, image_paths: Sequence[Path], output_dir: str | Path
) -> tuple[dict[str, Tensor], int]:
    """Backbone features of ``image_paths`` (encoding only what the cache lacks) and the backbone width."""
    backbone, autocast_dtype = load_backbone(cfg, pretrained_weights)
    transform = image_transform(cfg)
    cache = FeatureCache(
        cache_root(cfg, output_dir), feature_settings(cfg, pretrained_weights, transform, autocast_dtype)
    )
    features = extract_features(
        pooled_encoder(backbone, autocast_dtype),
        next(backbone.parameters()).device,
        image_paths,
        cache,
        transform,
        batch_size=cfg.vpr.features.batch_size,
        num_workers=cfg.vpr.data.num_workers,
        chunk_size=cfg.vpr.features.chunk_size,
    )
    return features, backbone.embed_dim


def model_descriptors(
    cfg: DictConfig, pretrained_weights: str | None, image_paths: Sequence[Path], output_dir: str | Path
) -> Tensor:
    """``(N, D)`` descriptors of ``vpr.model.method``'s model or the trained ``vpr.model.trained``, through the descriptor cache.

    The cache is keyed by the model file's content, the preprocessing and the precision.
    """
    device = distributed.device()
    model = build_place_model(cfg, pretrained_weights, head_state=None)
    autocast_dtype = features_autocast_dtype(cfg, device)
    transform = image_transform(cfg)
    cache = FeatureCache(
        cache_root(cfg, output_dir),
        descriptor_settings(cfg, pretrained_weights, transform, autocast_dtype),
        names=(DESCRIPTOR,),
    )
    features = extract_features(
        lambda images: {DESCRIPTOR: model.describe(images, autocast_dtype)},
        device,
        image_paths,
        cache,
        transform,
        batch_size=cfg.vpr.features.batch_size,
        num_workers=cfg.vpr.data.num_workers,
        chunk_size=cfg.vpr.features.chunk_size,
    )
    return features[DESCRIPTOR]
