"""Building blocks of the DINOv2 vision transformer, one per file."""

from .attention import Attention, reference_attention, xformers_enabled
from .block import Block, BlockChunk
from .drop_path import DropPath
from .layer_scale import LayerScale
from .mlp import Mlp
from .patch_embed import PatchEmbed
from .pos_embed import resample_patch_pos_embed
from .swiglu_ffn import SwiGLUFFNFused, swiglu_hidden_features

__all__ = [
    "Attention",
    "Block",
    "BlockChunk",
    "DropPath",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "SwiGLUFFNFused",
    "reference_attention",
    "resample_patch_pos_embed",
    "swiglu_hidden_features",
    "xformers_enabled",
]
