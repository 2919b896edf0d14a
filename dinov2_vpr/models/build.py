"""The place model of a run, from its config: a method's (SALAD, BoQ), or a head on pooled backbone features."""

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

import dinov2_vpr.models.heads  # noqa: F401  (registers the heads)
from dinov2 import distributed
from dinov2.models import build_model_from_cfg
from dinov2.utils.errors import InputError
from dinov2.utils.files import load_torch_file
from dinov2_vpr.data.presets import preset_options
from dinov2_vpr.features.pooling import head_input_dim
from dinov2_vpr.models.backbone import RANDOM_BACKBONE_WARNING, load_backbone
from dinov2_vpr.registry import AGGREGATORS, HEADS, lookup

from .aggregators import Aggregator, Pooled
from .place_model import PlaceModel, backbone_blocks
from .released import load_released_model

logger = logging.getLogger("dinov2")

# A trained place model in its run folder (``--model``).
MODEL_FILE = "model.pth"
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


def choice_options(method: str | None, model: str | Path | None) -> list[str]:
    """The config options of a model choice (``--method``, ``--model``), put before the user's options so
    that an explicit option still wins: the trained model's file, then the method's preprocessing."""
    trained = [f"vpr.model.trained={model_file_path(model).resolve()}"] if model is not None else []
    return [*trained, *(method_options(method) if method else [])]


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


def model_file_path(path: str | Path) -> Path:
    """``path`` itself, or ``<path>/model.pth`` when ``path`` is a training output folder."""
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def load_model_file(path: str | Path) -> dict:
    """A trained place model file (``model.pth``): ``{"model": trainable state, "config", "preprocessing", ...}``.

    Raises:
        InputError: the file is missing, unreadable, refused (pickled code) or no place model file.
    """
    state = load_torch_file(model_file_path(path), what="place model file")
    if not isinstance(state, dict) or not {"model", "config", "preprocessing"} <= set(state):
        found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise InputError(f"{path} is no place model file (found {found}); pass a model.pth written by place training")
    return state


def trained_model_config(path: str | Path) -> DictConfig:
    """The settings a trained place model brings: its backbone (architecture, position grid), ``vpr.model``,
    ``vpr.head`` and preprocessing; a model fine-tuned on pair lists also its decision threshold
    (``vpr.eval.threshold``, below the config file and the options)."""
    path = model_file_path(path).resolve()
    state = load_model_file(path)
    saved, preprocessing = OmegaConf.create(state["config"]), state["preprocessing"]
    model = {**OmegaConf.to_container(saved.vpr.model), "trained": str(path)}
    data = {"image_size": list(preprocessing["size"]), "resize": preprocessing["resample"]}
    crops = {"global_crops_size": saved.crops.global_crops_size}  # sizes the position embedding
    vpr = {"model": model, "head": saved.vpr.head, "data": data}
    if state.get("threshold") is not None:
        vpr["eval"] = {"threshold": state["threshold"]}
    return OmegaConf.create({"student": saved.student, "crops": crops, "vpr": vpr})


def _trainable_prefixes(model: PlaceModel) -> tuple[str, ...]:
    names = {id(module): name for name, module in model.named_modules()}
    tail = backbone_blocks(model.backbone)[len(backbone_blocks(model.backbone)) - model.trainable_blocks :]
    norm = [model.backbone.norm] if tail and model.aggregator.final_norm else []
    return (*(names[id(module)] + "." for module in [*tail, *norm]), "aggregator.", "head.")


def trainable_state(model: PlaceModel) -> dict[str, Tensor]:
    """The state of what trains: the tail blocks, the final norm where the aggregator uses it, the aggregator and the head."""
    prefixes = _trainable_prefixes(model)
    return {key: value for key, value in model.state_dict().items() if key.startswith(prefixes)}


def load_trainable_state(model: PlaceModel, state: dict[str, Tensor], source: str | Path) -> None:
    """Load :func:`trainable_state` into ``model``, strictly: the keys must be exactly the model's trainable ones.

    Raises:
        InputError: keys missing or unexpected (another method, aggregator size or trainable_blocks), or shapes that differ.
    """
    expected = set(trainable_state(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise InputError(
            f"{source} does not fit the model: missing {missing[:5]} ({len(missing)}), unexpected "
            f"{unexpected[:5]} ({len(unexpected)}); use the backbone config it was trained with"
        )
    try:
        model.load_state_dict({**model.state_dict(), **state})
    except RuntimeError as error:
        raise InputError(f"{source} does not fit the model: {error}") from None


def build_trainable_model(cfg: DictConfig, pretrained_weights: str | None) -> PlaceModel:
    """The model to fine-tune, on this rank's device, with the last ``vpr.model.trainable_blocks`` blocks trainable.

    The DINOv2 backbone comes from ``pretrained_weights`` (an official ``dinov2_*_pretrain.pth``), or is
    random and seeded without. With ``vpr.model.method`` a new aggregator of that method follows it;
    without, the pooled features ``vpr.head.input`` and a new ``vpr.head`` (pair lists). The new
    modules are seeded by ``vpr.train.seed``.
    """
    backbone, _ = load_backbone(cfg, pretrained_weights)
    depth = len(backbone_blocks(backbone))
    if not 0 <= cfg.vpr.model.trainable_blocks <= depth:
        raise InputError(
            f"vpr.model.trainable_blocks={cfg.vpr.model.trainable_blocks} must be between 0 and the backbone's {depth} blocks"
        )
    device = next(backbone.parameters()).device
    torch.manual_seed(cfg.vpr.train.seed)
    if cfg.vpr.model.method:
        aggregator, head = method_aggregator(cfg, cfg.vpr.model.method, backbone.embed_dim), None
    else:
        aggregator, head = (
            Pooled(backbone.embed_dim, cfg.vpr.head.input),
            build_head(cfg, backbone.embed_dim).to(device),
        )
    model = PlaceModel(backbone, aggregator.to(device), cfg.vpr.model.trainable_blocks, head=head)
    return model.train()


def build_trained_model(cfg: DictConfig, pretrained_weights: str | None, device: torch.device) -> PlaceModel:
    """The model trained here that ``vpr.model.trained`` (a ``model.pth``) holds, frozen, in eval mode, on ``device``:
    the backbone from ``pretrained_weights`` (the DINOv2 file it was trained on), the trained state from the file.

    Raises:
        InputError: the file is unreadable or does not fit the model the config describes.
    """
    model = build_trainable_model(cfg, pretrained_weights)
    load_trainable_state(model, load_model_file(cfg.vpr.model.trained)["model"], cfg.vpr.model.trained)
    logger.info("Loaded the trained %s model %s", cfg.vpr.model.method or "pair-list", cfg.vpr.model.trained)
    return model.requires_grad_(False).eval().to(device)


def build_method_model(cfg: DictConfig, pretrained_weights: str | None, device: torch.device) -> PlaceModel:
    """``vpr.model.method``'s released model, frozen, in eval mode, on ``device``.

    With ``pretrained_weights`` (the method's released file) the aggregator's sizes come from the file;
    without, backbone and aggregator are random (seeded), for tests only.
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

    ``vpr.model.trained`` set: the model trained here (:func:`build_trained_model`); ``vpr.model.method``
    set: the method's released model (:func:`build_method_model`). Otherwise the frozen
    backbone with, for a trained head (``head_state``, a head file's contents), its pooled features
    (``vpr.head.input``) and the head; for zero-shot descriptors (None) the ``CLS`` or ``GeM``
    aggregator that ``vpr.head.input`` names.
    """
    if cfg.vpr.model.trained:
        return build_trained_model(cfg, pretrained_weights, distributed.device())
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
