"""Batched, sharded extraction of backbone features into the feature cache."""

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dinov2 import distributed
from dinov2.logging import MetricLogger
from dinov2.utils.errors import InputError
from dinov2_vpr.data.transforms import ImageTransform, load_image
from dinov2_vpr.features.cache import FeatureCache, image_identity
from dinov2_vpr.features.pooling import Encoder

logger = logging.getLogger("dinov2")


class _ImageFiles(Dataset):
    def __init__(self, paths: Sequence[Path], transform: ImageTransform) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor | str:
        """The preprocessed image, or why it cannot be read: raised in the main process, so that a
        loader worker does not wrap the message in its traceback."""
        try:
            return load_image(self.paths[index], self.transform)
        except InputError as error:
            return str(error)


def _stack_or_problem(items: list[Tensor | str]) -> Tensor | str:
    """The batch of images, or the first image's problem."""
    return next((item for item in items if isinstance(item, str)), None) or torch.stack(items)


def _encode_into_cache(
    encode: Encoder,
    device: torch.device,
    paths: Sequence[Path],
    identities: Sequence[str],
    cache: FeatureCache,
    transform: ImageTransform,
    batch_size: int,
    num_workers: int,
    chunk_size: int,
) -> None:
    loader = DataLoader(
        _ImageFiles(paths, transform), batch_size=batch_size, num_workers=num_workers, collate_fn=_stack_or_problem
    )
    metric_logger = MetricLogger()
    buffered: list[dict[str, Tensor]] = []
    buffered_identities: list[str] = []
    start = time.perf_counter()
    done = 0
    header = f"Extracting features (rank {distributed.get_rank()}, {len(paths)} images)"
    for batch in metric_logger.log_every(loader, max(1, 200 // batch_size), header):
        if isinstance(batch, str):
            raise InputError(f"{batch}; replace or remove the image (finished images stay in the cache)")
        with torch.inference_mode():
            buffered.append({name: value.cpu() for name, value in encode(batch.to(device)).items()})
        buffered_identities.extend(identities[done : done + len(batch)])
        done += len(batch)
        metric_logger.update(images_per_s=done / (time.perf_counter() - start))
        if len(buffered_identities) >= chunk_size or done == len(paths):
            cache.write_chunk(
                buffered_identities, {name: torch.cat([b[name] for b in buffered]) for name in cache.names}
            )
            buffered, buffered_identities = [], []


def extract_features(
    encode: Encoder,
    device: torch.device,
    image_paths: Sequence[str | Path],
    cache: FeatureCache,
    transform: ImageTransform,
    batch_size: int = 32,
    num_workers: int = 0,
    chunk_size: int = 512,
) -> dict[str, Tensor]:
    """Features of ``image_paths`` (in order), encoding only the images the cache lacks.

    Under ``torch.distributed`` each rank encodes a disjoint slice of the missing images, so no
    image is encoded twice; every rank returns the complete features.

    Args:
        encode: a batch of preprocessed images on ``device`` to the features named by ``cache.names``
            (e.g. :func:`dinov2_vpr.features.pooling.pooled_encoder`); it runs under inference mode.
        device: where the images go.
        image_paths: the images.
        cache: the cache of this setting.
        transform: the preprocessing.
        batch_size, num_workers: of the image loader.
        chunk_size: images per cache chunk (the most an interruption can lose).

    Returns:
        ``cache.names`` to ``(len(image_paths), D)`` float32 tensors on the CPU.
    """
    paths = [Path(path) for path in image_paths]
    identities = [image_identity(path) for path in paths]
    missing = sorted({identity: path for identity, path in zip(identities, paths) if identity not in cache}.items())
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    distributed.barrier()  # every rank has decided what is missing before any writes
    if missing:
        shard = missing[rank::world_size]
        logger.info(
            "%d of %d images need encoding; this rank encodes %d", len(missing), len(set(identities)), len(shard)
        )
        if shard:
            _encode_into_cache(
                encode,
                device,
                [path for _, path in shard],
                [identity for identity, _ in shard],
                cache,
                transform,
                batch_size,
                num_workers,
                chunk_size,
            )
    else:
        logger.info("All %d images found in the feature cache %s", len(set(identities)), cache.folder)
    distributed.barrier()
    cache.refresh()
    return cache.load(identities)
