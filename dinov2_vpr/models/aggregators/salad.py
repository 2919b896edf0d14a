"""SALAD (Izquierdo & Civera, CVPR 2024): optimal-transport aggregation of DINOv2 patch tokens.

Parameter names and shapes are those of the official module, so released files load strictly.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2_vpr.registry import AGGREGATORS

from ..batch_dropout import BatchDropout
from .base import Aggregation, Aggregator, BackboneTokens

HIDDEN_DIM = 512  # fixed in the released architecture


def log_sinkhorn(scores: Tensor, dustbin: Tensor, iterations: int = 3, reg: float = 1.0) -> Tensor:
    """Log-domain Sinkhorn transport of ``n`` patches to ``m`` clusters and a dustbin.

    Every cluster and every patch has mass ``1 / (n + m)``; the dustbin, a constant score row, takes
    the remaining ``(n - m) / (n + m)``, so ``n > m`` is required.

    Args:
        scores: ``(B, m, n)`` patch-to-cluster scores.
        dustbin: the dustbin score (a scalar).
        iterations: row-then-column updates.
        reg: entropic regularisation.

    Returns:
        ``(B, m + 1, n)``: the log transport plan plus ``log(n + m)``, so that each patch's column
        sums to one; the dustbin row is last.
    """
    batch, m, n = scores.shape
    log_mass = -math.log(n + m)
    cost = torch.cat([scores, dustbin.to(scores.dtype).expand(batch, 1, n)], dim=1) / reg
    log_rows = scores.new_full((m + 1,), log_mass)
    log_rows[-1] = math.log(n - m) + log_mass
    log_cols = scores.new_full((n,), log_mass)
    u = scores.new_zeros(batch, m + 1)
    v = scores.new_zeros(batch, n)
    for _ in range(iterations):
        u = log_rows - torch.logsumexp(cost + v.unsqueeze(1), dim=2)
        v = log_cols - torch.logsumexp(cost + u.unsqueeze(2), dim=1)
    return cost + u.unsqueeze(2) + v.unsqueeze(1) - log_mass


def _branch(in_channels: int, out_channels: int, dropout: float) -> nn.Sequential:
    """1x1 conv to the hidden width, dropout, ReLU, 1x1 conv (indices 0 and 3 hold the weights)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, HIDDEN_DIM, 1),
        BatchDropout(dropout) if dropout > 0 else nn.Identity(),
        nn.ReLU(),
        nn.Conv2d(HIDDEN_DIM, out_channels, 1),
    )


@AGGREGATORS.register()
class SALAD(Aggregator):
    """Sinkhorn Algorithm for Locally Aggregated Descriptors.

    The descriptor is ``L2(concat[L2(g), L2_d(V).flatten()])`` with ``g`` the token MLP of the class
    token and ``V[d, k] = sum_n f[d, n] P[k, n]``, flattened ``d * num_clusters + k``; ``P`` is the
    Sinkhorn assignment of the patch features' scores, its dustbin row dropped. Reads the tokens
    after the backbone's final LayerNorm and needs more patches than clusters.

    Args:
        num_channels: width of the backbone tokens.
        num_clusters: clusters ``m``.
        cluster_dim: width ``l`` of the per-cluster features.
        token_dim: width of the class-token part.
        dropout: dropout in the cluster-feature and score branches (training only).
    """

    def __init__(
        self,
        num_channels: int,
        num_clusters: int = 64,
        cluster_dim: int = 128,
        token_dim: int = 256,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.num_clusters = num_clusters
        self.cluster_dim = cluster_dim
        self.token_dim = token_dim
        self.output_dim = token_dim + num_clusters * cluster_dim
        self.min_patches = num_clusters + 1
        self.token_features = nn.Sequential(
            nn.Linear(num_channels, HIDDEN_DIM), nn.ReLU(), nn.Linear(HIDDEN_DIM, token_dim)
        )
        self.cluster_features = _branch(num_channels, cluster_dim, dropout)
        self.score = _branch(num_channels, num_clusters, dropout)
        self.dust_bin = nn.Parameter(torch.tensor(1.0))

    def forward(self, features: Tensor | tuple[Tensor, Tensor], cls_token: Tensor | None = None) -> Tensor:
        """``(B, C, h, w)`` patch grid and ``(B, C)`` class token to ``(B, output_dim)`` unit descriptors.

        The official single-argument form ``forward((features, cls_token))`` works too.
        """
        if isinstance(features, tuple | list):
            features, cls_token = features
        if cls_token is None:
            raise TypeError("SALAD reads the class token too: call it as salad(features, cls_token)")
        self.check_grid(features.shape[-2], features.shape[-1])
        local = self.cluster_features(features).flatten(2)
        scores = self.score(features).flatten(2)
        assignment = log_sinkhorn(scores, self.dust_bin).exp()[:, :-1]
        clusters = torch.einsum("bln,bmn->blm", local, assignment)
        global_part = F.normalize(self.token_features(cls_token), dim=-1)
        descriptors = torch.cat([global_part, F.normalize(clusters, dim=1).flatten(1)], dim=-1)
        return F.normalize(descriptors, dim=-1)

    def aggregate(self, tokens: BackboneTokens) -> Aggregation:
        """:meth:`forward` on the patch grid and class token."""
        return Aggregation(self(tokens.patch_grid, tokens.cls_token))
