"""Where a place model looks: BoQ's attention maps as one heat map per image, for the result pictures."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dinov2_vpr.data.transforms import load_image
from dinov2_vpr.models.descriptor import PlaceDescriptor


@torch.inference_mode()
def attention_heatmaps(descriptor: PlaceDescriptor, image_paths: Sequence[str | Path]) -> list[np.ndarray]:
    """Per image, a ``(h, w)`` float32 heat map over its patch grid: the aggregator's last attention
    map (BoQ's last block, cross-attention of the learned queries to the patches) averaged over the queries.

    Args:
        descriptor: the loaded model (:func:`dinov2_vpr.models.descriptor.load_place_model`).
        image_paths: the images, one model run each, in float32.

    Raises:
        ValueError: the model's aggregator gives no attention maps (only BoQ's does).
    """
    model = descriptor.model.eval()
    heatmaps = []
    for path in image_paths:
        images = load_image(path, descriptor.transform)[None].to(descriptor.device)
        attention_maps = model.forward_aggregation(images).attention_maps
        if not attention_maps:
            raise ValueError(f"{type(model.aggregator).__name__} gives no attention maps; only BoQ does")
        grid = model.grid_size(images)
        heatmaps.append(attention_maps[-1][0].float().mean(dim=0).reshape(grid).cpu().numpy())
    return heatmaps
