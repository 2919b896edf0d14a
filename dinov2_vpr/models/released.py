"""The released SALAD and BoQ checkpoints: their layouts, converted and loaded strictly into a :class:`PlaceModel`."""

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dinov2.configs import load_and_merge_config
from dinov2.models import DinoVisionTransformer, build_model_from_cfg
from dinov2.utils.errors import InputError
from dinov2.utils.files import load_torch_file
from dinov2.utils.utils import checkpoint_hints as backbone_hints
from dinov2.utils.utils import state_dict_differences

from .aggregators import SALAD, Aggregator, BoQ
from .place_model import PlaceModel, backbone_blocks

DEFAULT_BACKBONE_CONFIG = "eval/vitb14_pretrain"
_SHOWN_KEYS = 5


def _shape(state: Mapping[str, Tensor], key: str) -> torch.Size:
    return state[f"aggregator.{key}"].shape


def salad_from_state_dict(state: Mapping[str, Tensor]) -> SALAD:
    """A :class:`SALAD` sized by the ``aggregator.*`` tensors of a (converted) checkpoint."""
    return SALAD(
        num_channels=_shape(state, "token_features.0.weight")[1],
        num_clusters=_shape(state, "score.3.weight")[0],
        cluster_dim=_shape(state, "cluster_features.3.weight")[0],
        token_dim=_shape(state, "token_features.2.weight")[0],
    )


def boq_from_state_dict(state: Mapping[str, Tensor]) -> BoQ:
    """A :class:`BoQ` sized by the ``aggregator.*`` tensors of a (converted) checkpoint."""
    layers = {int(match.group(1)) for key in state if (match := re.match(r"aggregator\.boqs\.(\d+)\.", key))}
    proj_channels, in_channels = _shape(state, "proj_c.weight")[:2]
    return BoQ(
        in_channels=in_channels,
        proj_channels=proj_channels,
        num_queries=_shape(state, "boqs.0.queries")[1],
        num_layers=len(layers),
        row_dim=_shape(state, "fc.weight")[0],
    )


@dataclass(frozen=True)
class ReleasedLayout:
    """How a method's released file is laid out and what the official model does with it.

    Attributes:
        file_name: the released file, for messages.
        backbone_prefix: the prefix of the DINOv2 keys in the file.
        trainable_blocks: blocks the official recipe fine-tunes.
        build_aggregator: the aggregator sized from a converted state dict.
        required_keys: the ``aggregator.*`` keys the sizes are read from.
    """

    file_name: str
    backbone_prefix: str
    trainable_blocks: int
    build_aggregator: Callable[[Mapping[str, Tensor]], Aggregator]
    required_keys: tuple[str, ...]


RELEASED_LAYOUTS = {
    "salad": ReleasedLayout(
        "dino_salad.ckpt",
        "backbone.model.",
        4,
        salad_from_state_dict,
        (
            "aggregator.token_features.0.weight",
            "aggregator.token_features.2.weight",
            "aggregator.cluster_features.3.weight",
            "aggregator.score.3.weight",
        ),
    ),
    "boq": ReleasedLayout(
        "dinov2_12288.pth",
        "backbone.dino.",
        2,
        boq_from_state_dict,
        ("aggregator.proj_c.weight", "aggregator.boqs.0.queries", "aggregator.fc.weight"),
    ),
}


def _layout(method: str) -> ReleasedLayout:
    if method not in RELEASED_LAYOUTS:
        raise InputError(f"method={method!r} has no released layout; choose one of: {', '.join(RELEASED_LAYOUTS)}")
    return RELEASED_LAYOUTS[method]


def _state_dict(checkpoint: Any, source: str) -> dict[str, Tensor]:
    """The state dict of a loaded checkpoint, unwrapping a Lightning ``{"state_dict": ...}``."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise InputError(f"{source}: expected a state dict, found {type(checkpoint).__name__}")
    others = [str(key) for key, value in checkpoint.items() if not isinstance(value, Tensor)]
    if others:
        raise InputError(f"{source}: expected a state dict of tensors; not tensors: {', '.join(others[:_SHOWN_KEYS])}")
    return dict(checkpoint)


def convert_released_state_dict(
    method: str, state: Mapping[str, Tensor], source: str = "checkpoint"
) -> dict[str, Tensor]:
    """A released ``method`` state dict with :class:`PlaceModel` keys (``backbone.<prefix>*`` to ``backbone.*``).

    Raises:
        InputError: the state dict lacks the layout's keys; names the method whose layout it has.
    """
    layout = _layout(method)
    missing = [key for key in layout.required_keys if key not in state]
    if missing or not any(key.startswith(layout.backbone_prefix) for key in state):
        found = sorted({".".join(key.split(".")[:2]) for key in state})
        absent = f" (no {', '.join(missing)})" if missing else ""
        lines = [
            f"{source} is not a released {method} checkpoint ({layout.file_name}): it needs "
            f"{layout.backbone_prefix}* and aggregator.* keys{absent}; "
            f"it has {', '.join(found[:8])}{' ...' if len(found) > 8 else ''}"
        ]
        lines += [
            f"hint: its {other.backbone_prefix}* keys are the layout of {other.file_name}: use method={name!r}"
            for name, other in RELEASED_LAYOUTS.items()
            if name != method and all(key in state for key in other.required_keys)
        ]
        if "cls_token" in state:
            lines.append("hint: it is a plain DINOv2 backbone (dinov2_*_pretrain.pth), without an aggregator")
        raise InputError("\n  ".join(lines))
    return {
        "backbone." + key.removeprefix(layout.backbone_prefix) if key.startswith(layout.backbone_prefix) else key: value
        for key, value in state.items()
    }


def _check_keys(model: PlaceModel, state: Mapping[str, Tensor], method: str, source: str) -> None:
    """Raise :class:`InputError` with the missing, unexpected and mis-shaped keys and what would fit."""
    model_state = model.state_dict()
    differences = state_dict_differences(model_state, state)
    if not differences:
        return
    lines = [f"{source} does not fit the {method} model:", *differences]

    def backbone_part(keys: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {key.removeprefix("backbone."): value for key, value in keys.items() if key.startswith("backbone.")}

    hints = backbone_hints(backbone_part(model_state), backbone_part(state))
    if model.backbone.chunked_blocks:
        hints.append("the backbone has chunked blocks; build it with block_chunks=0 as the released files are")
    aggregator_keys = {key for key in (*model_state, *state) if key.startswith("aggregator.")}
    if any(
        key not in state or key not in model_state or state[key].shape != model_state[key].shape
        for key in aggregator_keys
    ):
        hints.append(f"the aggregator.* tensors do not form the official {type(model.aggregator).__name__}")
    lines += [f"hint: {hint}" for hint in hints]
    raise InputError("\n  ".join(lines))


def default_backbone() -> DinoVisionTransformer:
    """The ViT-B/14 of the released models, from its eval config (build it under the meta device to skip the init)."""
    backbone, _ = build_model_from_cfg(load_and_merge_config(DEFAULT_BACKBONE_CONFIG), only_teacher=True)
    return backbone


def load_released_model(
    method: str, checkpoint: str | Path | Mapping[str, Any], backbone: DinoVisionTransformer | None = None
) -> PlaceModel:
    """The official SALAD or BoQ model of a released checkpoint, in eval mode.

    Args:
        method: ``"salad"`` (``dino_salad.ckpt``: ``backbone.model.*`` and ``aggregator.*`` keys, also
            inside a Lightning ``{"state_dict": ...}``) or ``"boq"`` (``dinov2_12288.pth``:
            ``backbone.dino.*`` and ``aggregator.*``).
        checkpoint: the file (read as data, ``weights_only``) or its state dict.
        backbone: the DINOv2 backbone to load into (flat blocks); the released ViT-B/14 by default.

    The aggregator's sizes come from the checkpoint's tensors. Loading is strict: every key of the
    model, no other, with the same shapes (the unused ``mask_token`` and BoQ's final LayerNorm are in
    the files and in the model). ``trainable_blocks`` is the official recipe's (SALAD 4, BoQ 2), at
    most the backbone's depth. A model on the meta device takes the checkpoint's tensors as they are.

    Raises:
        InputError: unknown method, unreadable file, another layout, or keys and shapes that do not
            fit (listed, with what would fit).
    """
    layout = _layout(method)
    source = f"checkpoint {checkpoint}" if isinstance(checkpoint, (str, Path)) else "the state dict"
    if isinstance(checkpoint, (str, Path)):
        checkpoint = load_torch_file(checkpoint, what=f"{method} checkpoint")
    state = convert_released_state_dict(method, _state_dict(checkpoint, source), source)
    with torch.device("meta"):
        aggregator = layout.build_aggregator(state)
        backbone = default_backbone() if backbone is None else backbone
    depth = len(backbone_blocks(backbone))
    model = PlaceModel(backbone, aggregator, trainable_blocks=min(layout.trainable_blocks, depth))
    _check_keys(model, state, method, source)
    device = next(backbone.parameters()).device
    if device.type != "meta":
        aggregator.to_empty(device=device)
    model.load_state_dict(state, strict=True, assign=device.type == "meta")
    return model.eval()
