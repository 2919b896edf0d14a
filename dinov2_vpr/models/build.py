"""The place model of a run, from its config: a method's (SALAD, BoQ), or a head on pooled backbone features."""

import logging

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import dinov2_vpr.models.heads  # noqa: F401  (registers the heads)
from dinov2 import distributed
from dinov2.models import build_model_from_cfg
from dinov2.utils.errors import InputError
from dinov2_vpr.data.presets import preset_options
from dinov2_vpr.features.pooling import head_input_dim
from dinov2_vpr.models.backbone import RANDOM_BACKBONE_WARNING, load_backbone
from dinov2_vpr.registry import AGGREGATORS, HEADS, lookup

from .aggregators import Aggregator, Pooled
from .place_model import PlaceModel
from .released import load_released_model

logger = logging.getLogger("dinov2")

# ``--method`` name -> registered aggregator; its sizes are ``vpr.model.aggregator.<method>``.
METHOD_AGGREGATORS = {"salad": "SALAD", "boq": "BoQ"}
# Zero-shot descriptors (``--zero-shot``, which sets ``vpr.head.input``) -> registered aggregator.
ZERO_SHOT_AGGREGATORS = {"cls": "CLS", "gem": "GeM"}


def build_head(cfg: DictConfig, embed_dim: int) -> nn.Module:
    """The head named by ``vpr.head.name``, sized for a backbone of width ``embed_dim``."""
    head_cfg = OmegaConf.to_container(cfg.vpr.head, resolve=True)
    name, input_name = head_cfg.pop("name"), head_cfg.pop("input")
    return lookup(HEADS, name, "vpr.head.name")(head_input_dim(embed_dim, input_name), **head_cfg)


def method_options(method: str) -> list[str]:
    """The config options of ``--method``: its official preprocessing and ``vpr.model.method``.

    Put before the user's options, so that an explicit option wins.

    Raises:
        InputError: an unknown method.
    """
    _check_method(method)
    return [*preset_options(method), f"vpr.model.method={method}"]


def _check_method(method: str) -> None:
    if method not in METHOD_AGGREGATORS:
        raise InputError(f"Method {method!r} is unknown; choose one of: {', '.join(METHOD_AGGREGATORS)}")


def method_aggregator(cfg: DictConfig, method: str, num_channels: int) -> Aggregator:
    """``method``'s aggregator for tokens of width ``num_channels``, sized by ``vpr.model.aggregator.<method>``.

    Raises:
        InputError: an unknown method.
    """
    _check_method(method)
    sizes = OmegaConf.to_container(cfg.vpr.model.aggregator[method], resolve=True)
    return AGGREGATORS.get(METHOD_AGGREGATORS[method])(num_channels, **sizes)


def build_method_model(cfg: DictConfig, pretrained_weights: str | None, device: torch.device) -> PlaceModel:
    """``vpr.model.method``'s model on the backbone of ``cfg``, frozen, in eval mode, on ``device``.

    With ``pretrained_weights`` (the method's released file) the aggregator's sizes come from the
    file; without, backbone and aggregator are random (seeded), for tests only.
    """
    method = cfg.vpr.model.method
    if pretrained_weights:
        with torch.device("meta"):
            backbone, _ = build_model_from_cfg(cfg, only_teacher=True)
        model = load_released_model(method, pretrained_weights, backbone=backbone)
        logger.info("Loaded the released %s model from %s", method, pretrained_weights)
    else:
        logger.warning(RANDOM_BACKBONE_WARNING)
        torch.manual_seed(cfg.vpr.train.seed)
        backbone, _ = build_model_from_cfg(cfg, only_teacher=True)
        model = PlaceModel(backbone, method_aggregator(cfg, method, backbone.embed_dim))
    return model.requires_grad_(False).eval().to(device)


def build_place_model(cfg: DictConfig, pretrained_weights: str | None, head_state: dict | None) -> PlaceModel:
    """The place model a run describes images with, frozen, in eval mode, on this rank's device.

    ``vpr.model.method`` set: the method's model (:func:`build_method_model`). Otherwise the frozen
    backbone with, for a trained head (``head_state``, a head file's contents), its pooled features
    (``vpr.head.input``) and the head; for zero-shot descriptors (None) the ``CLS`` or ``GeM``
    aggregator that ``vpr.head.input`` names.
    """
    if cfg.vpr.model.method:
        return build_method_model(cfg, pretrained_weights, distributed.device())
    backbone, _ = load_backbone(cfg, pretrained_weights)
    if head_state is None:
        zero_shot = AGGREGATORS.get(ZERO_SHOT_AGGREGATORS[cfg.vpr.head.input])(backbone.embed_dim)
        return PlaceModel(backbone, zero_shot.to(next(backbone.parameters()).device)).requires_grad_(False).eval()
    head = build_head(cfg, backbone.embed_dim)
    head.load_state_dict(head_state["head"])
    device = next(backbone.parameters()).device
    model = PlaceModel(backbone, Pooled(backbone.embed_dim, cfg.vpr.head.input), head=head.to(device))
    return model.requires_grad_(False).eval()
