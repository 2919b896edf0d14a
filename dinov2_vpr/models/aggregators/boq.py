"""BoQ, Bag-of-Queries (Ali-bey et al., CVPR 2024): learned queries cross-attending to the patch tokens.

Parameter names and shapes are those of the official module, so released files load strictly.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2_vpr.registry import AGGREGATORS

from .base import Aggregation, Aggregator, BackboneTokens

HEAD_DIM = 64  # channels per attention head: proj_channels // 64 heads


class BoQBlock(nn.Module):
    """A transformer encoder layer on the tokens, then learned queries that read them.

    Args:
        dim: token width.
        num_queries: learned queries.
        num_heads: attention heads of the encoder and both attentions.
    """

    def __init__(self, dim: int, num_queries: int, num_heads: int) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(
            dim, num_heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True
        )
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim))
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_q = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, N, dim)`` tokens to the encoded tokens, ``(B, Q, dim)`` query outputs and ``(B, Q, N)`` attention.

        The attention is averaged over heads and detached (it is for display, not for training).
        """
        tokens = self.encoder(tokens)
        queries = self.queries.expand(tokens.shape[0], -1, -1)
        queries = self.norm_q(queries + self.self_attn(queries, queries, queries, need_weights=False)[0])
        answers, attention = self.cross_attn(queries, tokens, tokens)
        return tokens, self.norm_out(answers), attention.detach()


@AGGREGATORS.register()
class BoQ(Aggregator):
    """Bag-of-Queries aggregation of the patch grid (the class token is not used).

    A 3x3 conv projects the grid to ``proj_channels``; the tokens pass through ``num_layers``
    chained :class:`BoQBlock`; the query outputs of every block, concatenated along the query axis,
    are mixed by a linear map to ``row_dim`` rows; the ``(proj_channels, row_dim)`` result is
    flattened (``c * row_dim + r``) and L2-normalised. Reads the last block's tokens **without** the
    backbone's final LayerNorm.

    Args:
        in_channels: width of the backbone tokens.
        proj_channels: width after the projection (``proj_channels // 64`` heads).
        num_queries: learned queries per block.
        num_layers: blocks.
        row_dim: rows per channel in the descriptor.
    """

    final_norm = False

    def __init__(
        self, in_channels: int, proj_channels: int = 512, num_queries: int = 32, num_layers: int = 2, row_dim: int = 32
    ) -> None:
        super().__init__()
        if proj_channels < HEAD_DIM:
            raise ValueError(f"BoQ uses proj_channels // {HEAD_DIM} heads: proj_channels={proj_channels} gives none")
        self.output_dim = proj_channels * row_dim
        self.proj_c = nn.Conv2d(in_channels, proj_channels, kernel_size=3, padding=1)
        self.norm_input = nn.LayerNorm(proj_channels)
        self.boqs = nn.ModuleList(
            BoQBlock(proj_channels, num_queries, proj_channels // HEAD_DIM) for _ in range(num_layers)
        )
        self.fc = nn.Linear(num_layers * num_queries, row_dim)

    def forward(self, features: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(B, C, h, w)`` patch grid to ``(B, output_dim)`` unit descriptors and one ``(B, Q, h*w)`` map per block."""
        tokens = self.norm_input(self.proj_c(features).flatten(2).transpose(1, 2))
        answers, attention_maps = [], []
        for block in self.boqs:
            tokens, answer, attention = block(tokens)
            answers.append(answer)
            attention_maps.append(attention)
        rows = self.fc(torch.cat(answers, dim=1).transpose(1, 2))
        return F.normalize(rows.flatten(1), dim=-1), attention_maps

    def aggregate(self, tokens: BackboneTokens) -> Aggregation:
        """:meth:`forward` on the patch grid."""
        descriptors, attention_maps = self(tokens.patch_grid)
        return Aggregation(descriptors, tuple(attention_maps))
