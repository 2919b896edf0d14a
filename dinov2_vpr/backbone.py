"""The frozen backbone of a VPR run and the settings that identify its features."""

import logging
import os

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dinov2 import distributed
from dinov2.eval.setup import build_model_for_eval, get_autocast_dtype
from dinov2_vpr.data.transforms import ImageTransform

logger = logging.getLogger("dinov2")

RANDOM_BACKBONE_WARNING = (
    "RANDOM BACKBONE: no --pretrained-weights; the backbone keeps random weights, so its features "
    "are meaningless except for testing the pipeline. Pass an official dinov2_*_pretrain.pth for real use."
)


def load_backbone(cfg: DictConfig, pretrained_weights: str | None) -> tuple[nn.Module, torch.dtype]:
    """The frozen backbone on this rank's device and its autocast dtype; random (seeded) without weights."""
    if not pretrained_weights:
        logger.warning(RANDOM_BACKBONE_WARNING)
        torch.manual_seed(cfg.vpr.train.seed)
    device = distributed.device()
    return build_model_for_eval(cfg, pretrained_weights, device), get_autocast_dtype(cfg, device)


def weights_identity(pretrained_weights: str | None, seed: int) -> str:
    """Identifies the weights: file path, size and mtime, or the seed of a random backbone."""
    if not pretrained_weights:
        return f"random-init:seed={seed}"
    stat = os.stat(pretrained_weights)
    return f"{os.path.abspath(pretrained_weights)}|{stat.st_size}|{stat.st_mtime_ns}"


def feature_settings(
    cfg: DictConfig, pretrained_weights: str | None, transform: ImageTransform, autocast_dtype: torch.dtype
) -> dict:
    """Everything that determines the cached features; its hash names the cache folder."""
    return {
        "weights": weights_identity(pretrained_weights, cfg.vpr.train.seed),
        "student": OmegaConf.to_container(cfg.student, resolve=True),
        "global_crops_size": cfg.crops.global_crops_size,
        "transform": transform.settings(),
        "autocast": str(autocast_dtype),
        "features": "cls,patch_mean,patch_gem:v1",
    }
