"""Hub-style constructors of the released DINOv2 backbones, loading weights from a local file only."""

from functools import partial

from dinov2.models.vision_transformer import ARCHITECTURES, DinoVisionTransformer
from dinov2.utils.utils import load_pretrained_weights

_DOWNLOAD_ROOT = "https://dl.fbaipublicfiles.com/dinov2"
_ARCH_BY_NAME = {"vits14": "vit_small", "vitb14": "vit_base", "vitl14": "vit_large", "vitg14": "vit_giant2"}


def official_weights_name(name: str, registers: bool) -> str:
    """File name of the released weights, e.g. ``dinov2_vitl14_reg4_pretrain.pth``."""
    return f"dinov2_{name}{'_reg4' if registers else ''}_pretrain.pth"


def _make_dinov2_model(
    name: str, registers: bool, *, pretrained: bool = True, weights: str | None = None, **kwargs
) -> DinoVisionTransformer:
    vit_kwargs = dict(
        img_size=518,
        patch_size=14,
        init_values=1.0,
        ffn_layer="swiglufused" if name == "vitg14" else "mlp",
        block_chunks=0,
        num_register_tokens=4 if registers else 0,
        interpolate_antialias=registers,
        interpolate_offset=0.0 if registers else 0.1,
    )
    vit_kwargs.update(kwargs)
    model = ARCHITECTURES[_ARCH_BY_NAME[name]](**vit_kwargs)
    if weights is not None:
        load_pretrained_weights(model, weights)
    elif pretrained:
        file_name = official_weights_name(name, registers)
        raise ValueError(
            f"dinov2_{name}{'_reg' if registers else ''}(pretrained=True) needs the official weights as a local file: "
            f"download {file_name} from {_DOWNLOAD_ROOT}/dinov2_{name}/{file_name} and pass weights=<path>, "
            "or pass pretrained=False for random weights."
        )
    return model


dinov2_vits14 = partial(_make_dinov2_model, "vits14", False)
dinov2_vitb14 = partial(_make_dinov2_model, "vitb14", False)
dinov2_vitl14 = partial(_make_dinov2_model, "vitl14", False)
dinov2_vitg14 = partial(_make_dinov2_model, "vitg14", False)
dinov2_vits14_reg = partial(_make_dinov2_model, "vits14", True)
dinov2_vitb14_reg = partial(_make_dinov2_model, "vitb14", True)
dinov2_vitl14_reg = partial(_make_dinov2_model, "vitl14", True)
dinov2_vitg14_reg = partial(_make_dinov2_model, "vitg14", True)
