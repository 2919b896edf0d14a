"""Recall@K of a place model on a validation benchmark, the ranks sharing the images."""

import numpy as np
import torch
from torch.utils.data import DataLoader

from dinov2 import distributed
from dinov2_vpr.data.transforms import ImageTransform
from dinov2_vpr.models.place_model import PlaceModel
from dinov2_vpr.retrieval.recall import evaluate_retrieval
from dinov2_vpr.training.place_data import LabelledImages, ValidationSet
from dinov2_vpr.training.sharding import gather_strided

RECALL_VALUES = (1, 5, 10)


def _describe(
    model: PlaceModel, dataset: LabelledImages, autocast_dtype: torch.dtype, batch_size: int, num_workers: int
) -> np.ndarray:
    """Every image's descriptor, each rank describing a strided share, on every rank."""
    rows = list(range(distributed.get_rank(), len(dataset), distributed.get_world_size()))
    loader = DataLoader(torch.utils.data.Subset(dataset, rows), batch_size=batch_size, num_workers=num_workers)
    device = next(model.parameters()).device
    with torch.inference_mode():
        parts = [model.describe(images.to(device), autocast_dtype).cpu() for images, _ in loader]
    share = torch.cat(parts) if parts else torch.zeros(0, model.output_dim)
    return gather_strided(share, len(dataset)).numpy()


def validate(
    model: PlaceModel,
    val: ValidationSet,
    transform: ImageTransform,
    autocast_dtype: torch.dtype,
    batch_size: int = 32,
    num_workers: int = 0,
) -> dict[str, float]:
    """``{"R@1", "R@5", "R@10"}`` (those not above the database size) of retrieval by ``model.describe`` (25 m)."""
    was_training = model.training
    model.eval()
    paths = val.database + val.queries
    descriptors = _describe(
        model, LabelledImages(paths, range(len(paths)), transform), autocast_dtype, batch_size, num_workers
    )
    model.train(was_training)
    k_values = [k for k in RECALL_VALUES if k <= len(val.database)]
    result = evaluate_retrieval(
        descriptors[: len(val.database)], descriptors[len(val.database) :], val.database_xy, val.queries_xy, k_values
    )
    return {f"R@{k}": recall for k, recall in result.recalls.items()}
