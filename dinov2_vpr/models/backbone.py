"""The frozen backbone of a VPR run and the settings that identify its features."""

import logging
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dinov2 import distributed
from dinov2.eval.setup import build_model_for_eval, get_autocast_dtype
from dinov2.utils.errors import InputError
from dinov2_vpr.data.transforms import ImageTransform
from dinov2_vpr.io import file_digest

logger = logging.getLogger("dinov2")

PRECISIONS = {"fp32": torch.float, "bf16": torch.bfloat16, "fp16": torch.half}
# /proc/cpuinfo flags of native bfloat16 arithmetic (x86: AVX512-BF16, AMX-BF16; Arm: BF16).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})

RANDOM_BACKBONE_WARNING = (
    "RANDOM BACKBONE: no --pretrained-weights; the backbone keeps random weights, so its features "
    "are meaningless except for testing the pipeline. Pass an official dinov2_*_pretrain.pth for real use."
)


def check_weights_choice(
    pretrained_weights: object,
    random_backbone: bool,
    weights_name: str = "--pretrained-weights",
    random_name: str = "--random-backbone",
) -> None:
    """Exactly one of real weights and a random backbone (for tests), named as the caller calls them.

    Raises:
        InputError: neither or both.
    """
    if not pretrained_weights and not random_backbone:
        raise InputError(f"{weights_name} is required (or {random_name}, for testing only)")
    if pretrained_weights and random_backbone:
        raise InputError(f"give either {weights_name} or {random_name}, not both")


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bfloat16 natively: x86 AVX512-BF16 or AMX-BF16, Arm BF16 (from ``cpuinfo``).

    Where ``cpuinfo`` cannot be read (not Linux), False: fp32 is the safe choice.
    """
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return False
    flags = {
        flag for line in lines if line.startswith(("flags", "Features")) for flag in line.split(":", 1)[-1].split()
    }
    return bool(flags & NATIVE_BF16_FLAGS)


def features_autocast_dtype(cfg: DictConfig, device: torch.device) -> torch.dtype:
    """The backbone's autocast dtype for ``vpr.features.precision`` on ``device``.

    ``auto``: on CUDA the config's mixed precision (``compute_precision``), on a CPU bfloat16 where
    it is native (:func:`cpu_has_native_bf16`), else float32. ``fp32``, ``bf16`` and ``fp16`` force one.

    Raises:
        InputError: an unknown precision.
    """
    precision = cfg.vpr.features.precision
    if precision == "auto":
        if device.type == "cuda":
            return get_autocast_dtype(cfg, device)
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float
    if precision not in PRECISIONS:
        raise InputError(f"vpr.features.precision={precision!r} is unknown; choose auto or one of {sorted(PRECISIONS)}")
    return PRECISIONS[precision]


def load_backbone(cfg: DictConfig, pretrained_weights: str | None) -> tuple[nn.Module, torch.dtype]:
    """The frozen backbone on this rank's device and its autocast dtype; random (seeded) without weights."""
    if not pretrained_weights:
        logger.warning(RANDOM_BACKBONE_WARNING)
        torch.manual_seed(cfg.vpr.train.seed)
    device = distributed.device()
    autocast_dtype = features_autocast_dtype(cfg, device)
    logger.info(
        "Backbone precision on %s: %s (vpr.features.precision=%s)", device, autocast_dtype, cfg.vpr.features.precision
    )
    return build_model_for_eval(cfg, pretrained_weights, device), autocast_dtype


def weights_identity(pretrained_weights: str | None, seed: int) -> str:
    """Identifies the weights: file path, size and mtime, or the seed of a random backbone."""
    if not pretrained_weights:
        return f"random-init:seed={seed}"
    stat = os.stat(pretrained_weights)
    return f"{os.path.abspath(pretrained_weights)}|{stat.st_size}|{stat.st_mtime_ns}"


def descriptor_settings(
    cfg: DictConfig, pretrained_weights: str | None, transform: ImageTransform, autocast_dtype: torch.dtype
) -> dict:
    """Everything that determines the descriptors of a method's model (``vpr.model.method``) or a trained
    model (``vpr.model.trained``), for their cache.

    The model file is identified by its content; a random model by its seed and sizes; a trained
    place model also by its file's content.
    """
    method = cfg.vpr.model.method
    if pretrained_weights:
        model = {"file_sha256": file_digest(pretrained_weights)}
    else:
        sizes = OmegaConf.to_container(cfg.vpr.model.aggregator[method], resolve=True) if method else None
        model = {"random-init": cfg.vpr.train.seed, "aggregator": sizes}
    if cfg.vpr.model.trained:
        model["trained_sha256"] = file_digest(cfg.vpr.model.trained)
    return {
        "method": method,
        "model": model,
        "student": OmegaConf.to_container(cfg.student, resolve=True),
        "global_crops_size": cfg.crops.global_crops_size,
        "transform": transform.settings(),
        "autocast": str(autocast_dtype),
        "features": "descriptor:v1",
    }


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
