"""What pair-list training trains: a head on cached pooled features, or the last blocks and a head on cached trunk tokens.

Both give :func:`dinov2_vpr.training.trainer.train_on_pairs` the same interface: a ``module`` mapping
the inputs of a batch of images to unit descriptors (the one wrapped in DistributedDataParallel),
the ``inputs`` of image indices, the descriptors of chosen images in eval mode, and the state to
checkpoint.
"""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from dinov2 import distributed
from dinov2.utils.utils import fix_random_seeds
from dinov2_vpr.data.transforms import image_transform
from dinov2_vpr.features.token_cache import TokenCache
from dinov2_vpr.models.backbone import features_autocast_dtype
from dinov2_vpr.models.build import build_head, build_trainable_model, load_trainable_state, trainable_state
from dinov2_vpr.models.place_model import PlaceModel
from dinov2_vpr.training.place_data import cached_trunk_tokens
from dinov2_vpr.training.sharding import gather_strided

# Images per forward pass when describing images in eval mode.
DESCRIBE_BATCH = 4096


class PairLearner(Protocol):
    """What :func:`~dinov2_vpr.training.trainer.train_on_pairs` trains on pairs of images."""

    module: nn.Module
    state_key: str  # the checkpoints' key of :meth:`state`

    def inputs(self, images: Tensor) -> Tensor:
        """The module's inputs for the images of these indices."""

    def describe(self, images: Tensor) -> Tensor:
        """``(len(images), D)`` unit descriptors of the images of these indices, in eval mode, on the CPU."""

    def tail_parameters(self) -> list[nn.Parameter]:
        """The trained parameters of pretrained backbone blocks (``vpr.train.tail_lr``); the rest are new."""

    def state(self) -> dict[str, Tensor]:
        """The trained state, as checkpoints hold it."""

    def load_state(self, state: dict[str, Tensor], source: str | Path) -> None:
        """Load :meth:`state` (from the file ``source``)."""


class HeadOnFeatures:
    """A head (``vpr.head``) on head inputs ``(N, D_in)`` held in memory (pooled features of the feature cache)."""

    state_key = "head"

    def __init__(self, head: nn.Module, features: Tensor) -> None:
        self.module, self.features = head, features.float()

    def inputs(self, images: Tensor) -> Tensor:
        return self.features[images]

    @torch.no_grad()
    def describe(self, images: Tensor) -> Tensor:
        self.module.eval()
        rows = [
            self.module(self.features[images[i : i + DESCRIBE_BATCH]]) for i in range(0, len(images), DESCRIBE_BATCH)
        ]
        return torch.cat(rows)

    def tail_parameters(self) -> list[nn.Parameter]:
        return []

    def state(self) -> dict[str, Tensor]:
        return self.module.state_dict()

    def load_state(self, state: dict[str, Tensor], source: str | Path) -> None:
        self.module.load_state_dict(state)


def head_learner(
    cfg: DictConfig, features: Tensor, embed_dim: int, train_images: Tensor, initial_head_state: dict | None
) -> HeadOnFeatures:
    """A new head (seeded by ``vpr.train.seed``) on ``features``: ``initial_head_state``, or standardised by
    the features of ``train_images``."""
    fix_random_seeds(cfg.vpr.train.seed)
    head = build_head(cfg, embed_dim)
    if initial_head_state is not None:
        head.load_state_dict(initial_head_state)
    elif hasattr(head, "fit_input_statistics"):
        head.fit_input_statistics(features[train_images].float())
    return HeadOnFeatures(head, features)


class _TailDescriber(nn.Module):
    """Trunk tokens to descriptors: the place model's tail under autocast, then pooling and head in float32."""

    def __init__(self, model: PlaceModel, grid: tuple[int, int], autocast_dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.grid, self.autocast_dtype = model, grid, autocast_dtype

    def pooled(self, tokens: Tensor) -> Tensor:
        """The pooled features of the tail's tokens (the head's inputs), in float32."""
        dtype = self.autocast_dtype
        with torch.autocast(tokens.device.type, dtype=dtype, enabled=dtype != torch.float):
            backbone_tokens = self.model.forward_tail(tokens, self.grid)
        return self.model.aggregator.aggregate(backbone_tokens.float()).descriptors

    def forward(self, tokens: Tensor) -> Tensor:
        return self.model.head(self.pooled(tokens))


class TailOnTokens:
    """The last ``vpr.model.trainable_blocks`` blocks, pooling (``vpr.head.input``) and the head, on trunk tokens
    read from the memory-mapped token cache a batch at a time."""

    state_key = "model"

    def __init__(
        self,
        model: PlaceModel,
        cache: TokenCache,
        identities: Sequence[str],
        grid: tuple[int, int],
        autocast_dtype: torch.dtype,
    ) -> None:
        self.model, self.cache, self.identities = model, cache, list(identities)
        self.device = next(model.parameters()).device
        self.module = _TailDescriber(model, grid, autocast_dtype)

    def inputs(self, images: Tensor) -> Tensor:
        return self.cache.read([self.identities[index] for index in images.tolist()]).to(self.device, torch.float32)

    def pooled(self, images: Tensor, batch_size: int) -> Tensor:
        """The head's inputs (the pooled tail tokens) of these images, in eval mode, on the CPU."""
        return self._shared_rows(self.module.pooled, self.model.aggregator.output_dim, images, batch_size)

    def describe(self, images: Tensor, batch_size: int = 64) -> Tensor:
        return self._shared_rows(self.module, self.model.output_dim, images, batch_size)

    @torch.no_grad()
    def _shared_rows(self, function: Callable[[Tensor], Tensor], width: int, images: Tensor, batch_size: int) -> Tensor:
        """``function`` of the images' tokens in eval mode, each rank computing a strided share; all rows on every rank."""
        share = images[distributed.get_rank() :: distributed.get_world_size()]
        was_training = self.module.training
        self.module.eval()
        try:
            batches = (share[i : i + batch_size] for i in range(0, len(share), batch_size))
            rows = [function(self.inputs(batch)).cpu() for batch in batches]
        finally:
            self.module.train(was_training)
        return gather_strided(torch.cat(rows) if rows else torch.zeros(0, width), len(images))

    def tail_parameters(self) -> list[nn.Parameter]:
        return [parameter for parameter in self.model.backbone.parameters() if parameter.requires_grad]

    def state(self) -> dict[str, Tensor]:
        return trainable_state(self.model)

    def load_state(self, state: dict[str, Tensor], source: str | Path) -> None:
        load_trainable_state(self.model, state, source)


def tail_learner(
    cfg: DictConfig,
    pretrained_weights: str | None,
    image_paths: Sequence[Path],
    output_dir: str | Path,
    train_images: Tensor,
    initial_head_state: dict | None,
) -> TailOnTokens:
    """The backbone's last ``vpr.model.trainable_blocks`` blocks, pooling and a new head, on the trunk tokens of
    ``image_paths`` (encoded into the token cache where it lacks them). The head starts from
    ``initial_head_state``, or is standardised by the pooled features of ``train_images``."""
    model = build_trainable_model(cfg, pretrained_weights)
    transform = image_transform(cfg)
    device = next(model.parameters()).device
    autocast_dtype = features_autocast_dtype(cfg, device)
    cache, identities = cached_trunk_tokens(
        cfg, model, image_paths, transform, autocast_dtype, pretrained_weights, output_dir
    )
    grid = (transform.size[0] // model.backbone.patch_size, transform.size[1] // model.backbone.patch_size)
    learner = TailOnTokens(model, cache, identities, grid, autocast_dtype)
    if initial_head_state is not None:
        model.head.load_state_dict(initial_head_state)
    elif hasattr(model.head, "fit_input_statistics"):
        model.head.fit_input_statistics(learner.pooled(train_images, cfg.vpr.features.batch_size))
    return learner
