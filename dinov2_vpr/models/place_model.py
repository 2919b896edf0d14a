"""The place model: DINOv2 backbone (frozen trunk, trainable tail) + aggregator (+ optional head)."""

import dataclasses

import torch
from torch import Tensor, nn

from dinov2.models.vision_transformer import DinoVisionTransformer

from .aggregators.base import Aggregation, Aggregator, BackboneTokens


def backbone_blocks(backbone: DinoVisionTransformer) -> list[nn.Module]:
    """The backbone's transformer blocks in order, whether or not they are chunked."""
    if not backbone.chunked_blocks:
        return list(backbone.blocks)
    return [block for chunk in backbone.blocks for block in chunk if not isinstance(block, nn.Identity)]


class PlaceModel(nn.Module):
    """Images to place descriptors: a DINOv2 backbone, an aggregator and optionally a head.

    The backbone is split into a frozen trunk (patch embedding and the first blocks, run without
    gradients) and a tail of the last ``trainable_blocks`` blocks. The tail's tokens, after the
    backbone's final LayerNorm when ``aggregator.final_norm``, are passed to the aggregator as
    :class:`BackboneTokens`. Only the tail, the final LayerNorm (when used with a tail), the
    aggregator and the head keep ``requires_grad``; the backbone passed in is changed accordingly.

    :meth:`forward` returns the descriptors only; :meth:`forward_aggregation` also gives the
    aggregator's attention maps (BoQ). :meth:`forward_trunk` and :meth:`forward_tail` are the two
    halves, for caching the trunk's tokens.

    State-dict keys are ``backbone.<DINOv2 keys>``, ``aggregator.*`` and ``head.*``.

    Args:
        backbone: the DINOv2 vision transformer.
        aggregator: a registered aggregator.
        trainable_blocks: blocks in the tail (0: the whole backbone is frozen).
        head: a module mapping the aggregator's ``(B, D_agg)`` descriptors to the final ones, or None.
    """

    def __init__(
        self,
        backbone: DinoVisionTransformer,
        aggregator: Aggregator,
        trainable_blocks: int = 0,
        head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        blocks = backbone_blocks(backbone)
        if not 0 <= trainable_blocks <= len(blocks):
            raise ValueError(f"trainable_blocks={trainable_blocks} must be between 0 and the backbone's {len(blocks)}")
        self.backbone = backbone
        self.aggregator = aggregator
        self.head = head
        self.trainable_blocks = trainable_blocks
        split = len(blocks) - trainable_blocks
        self._trunk_blocks, self._tail_blocks = blocks[:split], blocks[split:]
        self._freeze_trunk()

    def _freeze_trunk(self) -> None:
        trainable: list[nn.Module] = list(self._tail_blocks)
        if self._tail_blocks and self.aggregator.final_norm:
            trainable.append(self.backbone.norm)
        trainable_ids = {id(p) for module in trainable for p in module.parameters()}
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(id(parameter) in trainable_ids)

    @property
    def output_dim(self) -> int:
        """Width of the descriptors."""
        return self.head.output_dim if self.head is not None else self.aggregator.output_dim

    def grid_size(self, images: Tensor) -> tuple[int, int]:
        """The patch grid ``(h, w)`` of ``(B, 3, H, W)`` images."""
        patch_size = self.backbone.patch_size
        return images.shape[-2] // patch_size, images.shape[-1] // patch_size

    def forward_trunk(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` normalised images to the trunk's ``(B, 1 + R + h*w, C)`` tokens, without gradients."""
        with torch.no_grad():
            tokens = self.backbone.prepare_tokens_with_masks(images)
            for block in self._trunk_blocks:
                tokens = block(tokens)
        return tokens

    def forward_tail(self, tokens: Tensor, grid_size: tuple[int, int]) -> BackboneTokens:
        """The trunk's tokens through the tail (and the final LayerNorm if the aggregator wants it), split up."""
        for block in self._tail_blocks:
            tokens = block(tokens)
        if self.aggregator.final_norm:
            tokens = self.backbone.norm(tokens)
        patches_start = 1 + self.backbone.num_register_tokens
        grid = tokens[:, patches_start:].reshape(tokens.shape[0], *grid_size, tokens.shape[-1]).permute(0, 3, 1, 2)
        return BackboneTokens(tokens[:, 0], tokens[:, 1:patches_start], grid)

    def aggregate(self, tokens: BackboneTokens) -> Aggregation:
        """The aggregator (and the head, if any) on the backbone's tokens."""
        aggregation = self.aggregator.aggregate(tokens)
        if self.head is None:
            return aggregation
        return dataclasses.replace(aggregation, descriptors=self.head(aggregation.descriptors))

    def backbone_tokens(self, images: Tensor) -> BackboneTokens:
        """``(B, 3, H, W)`` normalised images to the tokens the aggregator reads (trunk, then tail).

        Raises:
            InputError: the images give fewer patches than the aggregator needs (SALAD).
        """
        grid_size = self.grid_size(images)
        self.aggregator.check_grid(*grid_size, self.backbone.patch_size)
        return self.forward_tail(self.forward_trunk(images), grid_size)

    def forward_aggregation(self, images: Tensor) -> Aggregation:
        """``(B, 3, H, W)`` normalised images to their descriptors and the aggregator's attention maps.

        Raises:
            InputError: the images give fewer patches than the aggregator needs (SALAD).
        """
        return self.aggregate(self.backbone_tokens(images))

    def describe(self, images: Tensor, autocast_dtype: torch.dtype = torch.float) -> Tensor:
        """``(B, D)`` float32 descriptors: the backbone under autocast in ``autocast_dtype``, the aggregator
        and the head in float32, as feature extraction and the Python API run them."""
        with torch.autocast(images.device.type, dtype=autocast_dtype, enabled=autocast_dtype != torch.float):
            tokens = self.backbone_tokens(images)
        return self.aggregate(tokens.float()).descriptors.float()

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` normalised images to ``(B, output_dim)`` unit descriptors."""
        return self.forward_aggregation(images).descriptors
