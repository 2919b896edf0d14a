"""What is kept of the backbone's tokens for each image, and how heads read it."""

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dinov2.utils.errors import InputError

FEATURE_NAMES = ("cls", "patch_mean", "patch_gem")
HEAD_INPUTS = {
    "cls": ("cls",),
    "cls+patch": ("cls", "patch_mean"),
    "gem": ("patch_gem",),
}
GEM_POWER = 3.0
# A batch of preprocessed images to the named features of each image, as the feature cache keeps them.
Encoder = Callable[[Tensor], dict[str, Tensor]]


def pool_tokens(cls_token: Tensor, patch_tokens: Tensor) -> dict[str, Tensor]:
    """The class token ``(B, D)``, and the mean and GeM (p=3) of the patch tokens ``(B, N, D)``, float32.

    GeM is taken over the rectified tokens (clamped at 1e-6), as GeM requires positive values.
    """
    patches = patch_tokens.float()
    return {
        "cls": cls_token.float(),
        "patch_mean": patches.mean(dim=1),
        "patch_gem": patches.clamp(min=1e-6).pow(GEM_POWER).mean(dim=1).pow(1.0 / GEM_POWER),
    }


def backbone_features(backbone: nn.Module, images: Tensor) -> dict[str, Tensor]:
    """:func:`pool_tokens` of the backbone's normalised class and patch tokens."""
    tokens = backbone.forward_features(images)
    return pool_tokens(tokens["x_norm_clstoken"], tokens["x_norm_patchtokens"])


def pooled_encoder(backbone: nn.Module, autocast_dtype: torch.dtype) -> Encoder:
    """:func:`backbone_features` of a batch, the backbone under autocast in ``autocast_dtype``."""
    device_type = next(backbone.parameters()).device.type

    def encode(images: Tensor) -> dict[str, Tensor]:
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype != torch.float):
            return backbone_features(backbone, images)

    return encode


def _input_features(input_name: str) -> tuple[str, ...]:
    if input_name not in HEAD_INPUTS:
        raise InputError(f"vpr.head.input={input_name!r} is unknown; choose one of {sorted(HEAD_INPUTS)}")
    return HEAD_INPUTS[input_name]


def head_input(features: dict[str, Tensor], input_name: str) -> Tensor:
    """The head's input: the named features concatenated (``cls``, ``cls+patch`` or ``gem``)."""
    return torch.cat([features[name] for name in _input_features(input_name)], dim=-1)


def head_input_dim(embed_dim: int, input_name: str) -> int:
    """Width of :func:`head_input` for a backbone of width ``embed_dim``."""
    return embed_dim * len(_input_features(input_name))
