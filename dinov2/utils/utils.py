"""Checkpoint conversion and strict loading of backbone weights; seeding."""

import logging
import random
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from iopath.common.file_io import HTTPURLHandler, PathManager
from torch import Tensor, nn

from dinov2.utils.errors import InputError, InputFileNotFoundError
from dinov2.utils.files import load_torch_file

logger = logging.getLogger("dinov2")

_SHOWN_KEYS = 5
_ARCH_BY_WIDTH = {
    384: "ViT-S/14 (vits14)",
    768: "ViT-B/14 (vitb14)",
    1024: "ViT-L/14 (vitl14)",
    1536: "ViT-g/14 (vitg14)",
}
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")


def convert_checkpoint(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a DINOv2 training checkpoint's keys to the plain backbone's keys.

    Removes the ``module.`` (DDP/FSDP) and ``backbone.`` (teacher/student wrapper) prefixes and maps
    chunked block keys ``blocks.<chunk>.<i>.`` to ``blocks.<i>.``.
    """
    converted = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.").removeprefix("backbone.")
        key = _CHUNKED_BLOCK.sub(r"blocks.\1.", key)
        converted[key] = value
    return converted


def _read_checkpoint(pretrained_weights: str) -> Any:
    path_manager = PathManager()
    path_manager.register_handler(HTTPURLHandler())
    if not path_manager.exists(pretrained_weights) and not pretrained_weights.startswith(("http://", "https://")):
        raise InputFileNotFoundError(
            f"Backbone weights not found: {pretrained_weights!r}. Pass the path of an official DINOv2 "
            "checkpoint (e.g. dinov2_vitl14_pretrain.pth) or a training checkpoint with checkpoint_key='teacher'."
        )
    return load_torch_file(path_manager.get_local_path(pretrained_weights), what="backbone weights")


def _is_state_dict(checkpoint: Any) -> bool:
    return (
        isinstance(checkpoint, Mapping) and bool(checkpoint) and all(isinstance(v, Tensor) for v in checkpoint.values())
    )


def _extract_state_dict(checkpoint: Any, checkpoint_key: str | None, source: str) -> Mapping[str, Tensor]:
    if checkpoint_key is not None and isinstance(checkpoint, Mapping) and checkpoint_key in checkpoint:
        checkpoint = checkpoint[checkpoint_key]
    elif checkpoint_key is not None and not _is_state_dict(checkpoint):
        top = sorted(checkpoint)[:10] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise InputError(
            f"{source}: no checkpoint key {checkpoint_key!r} and no state dict; its top-level keys are {top}. "
            "Pass the key that holds the backbone weights (teacher for DINOv2 training checkpoints)."
        )
    if not _is_state_dict(checkpoint):
        raise InputError(f"{source}: expected a state dict, found {type(checkpoint).__name__}.")
    return checkpoint


def checkpoint_hints(model_state: Mapping[str, Tensor], checkpoint: Mapping[str, Tensor]) -> list[str]:
    """Hints on which config would fit the checkpoint, from its keys and shapes."""
    hints = []
    ckpt_registers = checkpoint.get("register_tokens")
    model_registers = model_state.get("register_tokens")
    ckpt_count = 0 if ckpt_registers is None else ckpt_registers.shape[1]
    model_count = 0 if model_registers is None else model_registers.shape[1]
    if ckpt_count != model_count:
        if ckpt_count:
            hints.append(
                f"the checkpoint has {ckpt_count} register tokens, the model {model_count}: use the `_reg4` config (e.g. vitl14_reg4_pretrain.yaml)"
            )
        else:
            hints.append(
                f"the checkpoint has no register tokens, the model {model_count}: use the config without `_reg4`"
            )
    ckpt_cls, model_cls = checkpoint.get("cls_token"), model_state.get("cls_token")
    if ckpt_cls is not None and model_cls is not None and ckpt_cls.shape[-1] != model_cls.shape[-1]:
        ckpt_arch = _ARCH_BY_WIDTH.get(ckpt_cls.shape[-1], f"width {ckpt_cls.shape[-1]}")
        model_arch = _ARCH_BY_WIDTH.get(model_cls.shape[-1], f"width {model_cls.shape[-1]}")
        hints.append(f"the checkpoint is {ckpt_arch}, not {model_arch}: use its config")
    ckpt_patch, model_patch = checkpoint.get("patch_embed.proj.weight"), model_state.get("patch_embed.proj.weight")
    if ckpt_patch is not None and model_patch is not None and ckpt_patch.shape[-1] != model_patch.shape[-1]:
        hints.append(
            f"the checkpoint has patch size {ckpt_patch.shape[-1]}, the model {model_patch.shape[-1]}: set student.patch_size"
        )
    ckpt_pos, model_pos = checkpoint.get("pos_embed"), model_state.get("pos_embed")
    if ckpt_pos is not None and model_pos is not None and ckpt_pos.shape[1] != model_pos.shape[1]:
        hints.append(
            f"the checkpoint has {ckpt_pos.shape[1] - 1} patch positions, the model {model_pos.shape[1] - 1}: "
            "set crops.global_crops_size (518 for the released backbones)"
        )
    ckpt_swiglu = any(".mlp.w12." in key for key in checkpoint)
    model_swiglu = any(".mlp.w12." in key for key in model_state)
    if ckpt_swiglu != model_swiglu:
        wanted = "swiglufused" if ckpt_swiglu else "mlp"
        hints.append(f"the checkpoint's feed-forward layers are {wanted}: set student.ffn_layer={wanted}")
    depth = {int(m.group(1)) for key in checkpoint if (m := re.match(r"blocks\.(\d+)\.", key))}
    model_depth = {int(m.group(1)) for key in model_state if (m := re.match(r"blocks\.(\d+)\.", key))}
    if depth and model_depth and len(depth) != len(model_depth):
        hints.append(f"the checkpoint has {len(depth)} blocks, the model {len(model_depth)}")
    return hints


def state_dict_differences(model_state: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> list[str]:
    """A line for each kind of difference of ``state`` from ``model_state`` (missing, unexpected and
    mis-shaped keys, the first few of each and a count); empty when ``state`` fits exactly."""
    missing = [key for key in model_state if key not in state]
    unexpected = [key for key in state if key not in model_state]
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(value.shape)}"
        for key, value in model_state.items()
        if key in state and state[key].shape != value.shape
    ]
    lines = []
    for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if keys:
            more = f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
            lines.append(f"{len(keys)} {title}: {', '.join(keys[:_SHOWN_KEYS])}{more}")
    return lines


def load_pretrained_weights(model: nn.Module, pretrained_weights: str, checkpoint_key: str | None = None) -> None:
    """Load backbone weights into ``model`` strictly.

    Args:
        model: the backbone.
        pretrained_weights: a local path, or an explicit ``http(s)://`` URL (downloaded and cached).
        checkpoint_key: the entry of a training checkpoint that holds the weights (``teacher``,
            ``model``). A checkpoint without that entry that is itself a state dict (the official
            ``*_pretrain.pth`` files) is used as it is.

    Raises:
        InputFileNotFoundError: the file does not exist.
        UntrustedFileError: the file needs full unpickling and ``--trust-pickle`` was not given.
        InputError: the checkpoint key is absent and the checkpoint is no state dict; or missing, unexpected or mis-shaped keys, with the first of each and a hint on which
            config would fit.
    """
    checkpoint = _read_checkpoint(pretrained_weights)
    state_dict = convert_checkpoint(_extract_state_dict(checkpoint, checkpoint_key, pretrained_weights))
    model_state = model.state_dict()
    differences = state_dict_differences(model_state, state_dict)
    if differences:
        lines = [f"The weights in {pretrained_weights!r} do not fit the model:"]
        lines.extend(f"  {difference}" for difference in differences)
        hints = checkpoint_hints(model_state, state_dict)
        lines.extend(f"  hint: {hint}" for hint in hints)
        if not hints:
            lines.append("  hint: check --config-file and the checkpoint key (teacher for training checkpoints)")
        raise InputError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True, assign=any(p.is_meta for p in model.parameters()))
    logger.info("Loaded backbone weights from %s (checkpoint key %s)", pretrained_weights, checkpoint_key)


def fix_random_seeds(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
