"""The DINOv2 vision transformer, assembled from :mod:`dinov2.layers`.

Keyword arguments, methods, outputs and state-dict keys follow the official release so that the
released ``dinov2_vit*14*_pretrain.pth`` files load strictly.
"""

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn.init import trunc_normal_

from dinov2.layers import Block, BlockChunk, Mlp, PatchEmbed, SwiGLUFFNFused, resample_patch_pos_embed

FFN_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": Mlp,
    "swiglu": SwiGLUFFNFused,
    "swiglufused": SwiGLUFFNFused,
    "identity": lambda *args, **kwargs: nn.Identity(),
}


class DinoVisionTransformer(nn.Module):
    """Vision transformer with optional register tokens and a mask token, as in DINOv2."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        ffn_bias: bool = True,
        proj_bias: bool = True,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = False,
        init_values: float | None = None,
        embed_layer: Callable[..., nn.Module] = PatchEmbed,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        block_fn: Callable[..., nn.Module] = Block,
        ffn_layer: str = "mlp",
        block_chunks: int = 1,
        num_register_tokens: int = 0,
        interpolate_antialias: bool = False,
        interpolate_offset: float = 0.1,
    ) -> None:
        super().__init__()
        if ffn_layer not in FFN_LAYERS:
            raise ValueError(f"Unknown ffn_layer {ffn_layer!r}; choose one of {sorted(FFN_LAYERS)}.")
        self.num_features = self.embed_dim = embed_dim
        self.num_tokens = 1
        self.n_blocks = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset

        self.patch_embed = embed_layer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_tokens, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )

        if drop_path_uniform:
            drop_rates = [drop_path_rate] * depth
        else:
            drop_rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        blocks = [
            block_fn(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                ffn_bias=ffn_bias,
                drop_path=drop_rates[i],
                norm_layer=norm_layer,
                act_layer=act_layer,
                ffn_layer=FFN_LAYERS[ffn_layer],
                init_values=init_values,
            )
            for i in range(depth)
        ]
        self.chunked_blocks = block_chunks > 0
        if self.chunked_blocks:
            # Chunk c holds identities in front of its blocks so that keys read blocks.<c>.<global index>.
            chunk_size = depth // block_chunks
            self.blocks = nn.ModuleList(
                BlockChunk([nn.Identity()] * start + blocks[start : start + chunk_size])
                for start in range(0, depth, chunk_size)
            )
        else:
            self.blocks = nn.ModuleList(blocks)
        self.norm = norm_layer(embed_dim)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.init_weights()

    def init_weights(self) -> None:
        """Random initialisation (truncated normal position embedding, small class/register tokens)."""
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def interpolate_pos_encoding(self, x: Tensor, height: int, width: int) -> Tensor:
        """Position embedding for the tokens ``x`` of an image of ``height x width`` pixels."""
        num_patches = x.shape[1] - 1
        native = self.pos_embed.shape[1] - 1
        if num_patches == native and height == width:
            return self.pos_embed
        return resample_patch_pos_embed(
            self.pos_embed,
            height // self.patch_size,
            width // self.patch_size,
            offset=self.interpolate_offset,
            antialias=self.interpolate_antialias,
        ).to(x.dtype)

    def prepare_tokens_with_masks(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """Patch tokens (masked ones replaced by the mask token), class token, positions, registers."""
        height, width = x.shape[-2:]
        x = self.patch_embed(x)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, height, width)
        if self.register_tokens is not None:
            x = torch.cat((x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]), dim=1)
        return x

    def forward_features(self, x: Tensor, masks: Tensor | None = None) -> dict[str, Tensor | None]:
        """Normalised class, register and patch tokens, the pre-norm tokens and the masks."""
        x = self.prepare_tokens_with_masks(x, masks)
        for block in self.blocks:
            x = block(x)
        x_norm = self.norm(x)
        registers_end = self.num_register_tokens + 1
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1:registers_end],
            "x_norm_patchtokens": x_norm[:, registers_end:],
            "x_prenorm": x,
            "masks": masks,
        }

    def _flat_blocks(self) -> list[nn.Module]:
        if not self.chunked_blocks:
            return list(self.blocks)
        return [block for chunk in self.blocks for block in chunk if not isinstance(block, nn.Identity)]

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of the last ``n`` blocks (or of the blocks whose indices ``n`` lists).

        Returns a tuple of patch tokens ``(B, N, D)`` (or ``(B, D, h, w)`` with ``reshape``), or of
        ``(patch_tokens, class_token)`` pairs with ``return_class_token``.
        """
        height, width = x.shape[-2:]
        blocks = self._flat_blocks()
        wanted = range(len(blocks) - n, len(blocks)) if isinstance(n, int) else n
        wanted = set(wanted)
        x = self.prepare_tokens_with_masks(x)
        outputs = []
        for index, block in enumerate(blocks):
            x = block(x)
            if index in wanted:
                outputs.append(x)
        if len(outputs) != len(wanted):
            raise ValueError(f"Asked for blocks {sorted(wanted)} but the model has {len(blocks)} blocks.")
        if norm:
            outputs = [self.norm(out) for out in outputs]
        class_tokens = [out[:, 0] for out in outputs]
        outputs = [out[:, 1 + self.num_register_tokens :] for out in outputs]
        if reshape:
            grid = (height // self.patch_size, width // self.patch_size)
            outputs = [out.reshape(x.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous() for out in outputs]
        if return_class_token:
            return tuple(zip(outputs, class_tokens))
        return tuple(outputs)

    def forward(self, *args, is_training: bool = False, **kwargs):
        """The class-token embedding (``forward_features`` when ``is_training``), as in the official model."""
        features = self.forward_features(*args, **kwargs)
        if is_training:
            return features
        return self.head(features["x_norm_clstoken"])


def _vit(
    embed_dim: int, depth: int, num_heads: int, patch_size: int, num_register_tokens: int, **kwargs
) -> DinoVisionTransformer:
    return DinoVisionTransformer(
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=4,
        num_register_tokens=num_register_tokens,
        **kwargs,
    )


def vit_small(patch_size: int = 16, num_register_tokens: int = 0, **kwargs) -> DinoVisionTransformer:
    """ViT-S: width 384, 12 blocks, 6 heads."""
    return _vit(384, 12, 6, patch_size, num_register_tokens, **kwargs)


def vit_base(patch_size: int = 16, num_register_tokens: int = 0, **kwargs) -> DinoVisionTransformer:
    """ViT-B: width 768, 12 blocks, 12 heads."""
    return _vit(768, 12, 12, patch_size, num_register_tokens, **kwargs)


def vit_large(patch_size: int = 16, num_register_tokens: int = 0, **kwargs) -> DinoVisionTransformer:
    """ViT-L: width 1024, 24 blocks, 16 heads."""
    return _vit(1024, 24, 16, patch_size, num_register_tokens, **kwargs)


def vit_giant2(patch_size: int = 16, num_register_tokens: int = 0, **kwargs) -> DinoVisionTransformer:
    """ViT-g/2: width 1536, 40 blocks, 24 heads (64 channels a head)."""
    return _vit(1536, 40, 24, patch_size, num_register_tokens, **kwargs)


ARCHITECTURES: dict[str, Callable[..., DinoVisionTransformer]] = {
    "vit_small": vit_small,
    "vit_base": vit_base,
    "vit_large": vit_large,
    "vit_giant2": vit_giant2,
}
