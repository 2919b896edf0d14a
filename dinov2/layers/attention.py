"""Multi-head self-attention with a fused kernel."""

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # xformers is optional and only used on CUDA tensors
    from xformers.ops import memory_efficient_attention as _xformers_attention
except ImportError:
    _xformers_attention = None


def xformers_enabled() -> bool:
    """Whether xformers' memory-efficient attention may be used (installed and not disabled)."""
    return _xformers_attention is not None and os.environ.get("XFORMERS_DISABLED", "0") in ("", "0")


class Attention(nn.Module):
    """Self-attention over tokens; ``qkv`` and ``proj`` carry the official DINOv2 parameter names.

    The kernel is xformers' memory-efficient attention for CUDA tensors when xformers imports and
    ``XFORMERS_DISABLED`` is unset, else PyTorch's ``scaled_dot_product_attention``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        dropout = self.attn_drop if self.training else 0.0
        if x.is_cuda and xformers_enabled():
            q, k, v = qkv.unbind(2)  # (B, N, H, D), the layout xformers expects
            out = _xformers_attention(q, k, v, p=dropout, scale=self.scale)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, N, D)
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=self.scale).transpose(1, 2)
        return self.proj_drop(self.proj(out.reshape(batch, tokens, dim)))


def reference_attention(x: Tensor, module: Attention) -> Tensor:
    """Plain softmax attention with the weights of ``module``: the reference the fused kernels are tested against."""
    batch, tokens, dim = x.shape
    q, k, v = module.qkv(x).reshape(batch, tokens, 3, module.num_heads, dim // module.num_heads).permute(2, 0, 3, 1, 4)
    weights = torch.softmax((q * module.scale) @ k.transpose(-2, -1), dim=-1)
    return module.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, dim))
