"""Descriptors of image files through the feature cache, and the files they are saved in.

A saved set is ``<prefix>descriptors.npy`` (one row per image) beside ``<prefix>image_paths.txt``
(one absolute path a line, in the same order).
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from omegaconf import DictConfig

from dinov2_vpr.features.pipeline import image_features, model_descriptors
from dinov2_vpr.features.pooling import head_input
from dinov2_vpr.io import atomic_write, atomic_write_text
from dinov2_vpr.models import build_head
from dinov2_vpr.verification.evaluate import describe_rows

DESCRIPTOR_DTYPES = {"float32": np.float32, "float16": np.float16}


def describe_image_files(
    cfg: DictConfig,
    pretrained_weights: str | None,
    head_state: dict | None,
    image_paths: Sequence[Path],
    output_dir: str | Path,
) -> np.ndarray:
    """``(N, D)`` float32 unit descriptors of ``image_paths`` (in order), encoding only what the cache lacks.

    Args:
        cfg: the run's config, with ``vpr.head`` set by :func:`dinov2_vpr.models.descriptor_config.configure_descriptor`.
        pretrained_weights: backbone weights; None for a random backbone (tests only).
        head_state: the head file's contents, or None for zero-shot descriptors (``vpr.head.input``
            pooled and L2-normalised), a method's model (``vpr.model.method``) or a trained model
            (``vpr.model.trained``), whose descriptors are cached themselves.
        image_paths: the images.
        output_dir: the run folder (holds the cache unless ``vpr.features.cache_dir`` is set).

    Under ``torch.distributed`` the ranks share the encoding and every rank returns all descriptors.
    """
    if cfg.vpr.model.method or cfg.vpr.model.trained:
        return model_descriptors(cfg, pretrained_weights, image_paths, output_dir).numpy().astype(np.float32)
    features, embed_dim = image_features(cfg, pretrained_weights, image_paths, output_dir)
    inputs = head_input(features, cfg.vpr.head.input)
    if head_state is None:  # zero-shot: the pooled features themselves (as the CLS and GeM aggregators give them)
        return F.normalize(inputs, dim=-1).numpy().astype(np.float32)
    head = build_head(cfg, embed_dim)
    head.load_state_dict(head_state["head"])
    return describe_rows(head, inputs).numpy().astype(np.float32)


def save_descriptor_files(
    folder: str | Path,
    descriptors: np.ndarray,
    image_paths: Sequence[str | Path],
    dtype: str = "float32",
    prefix: str = "",
) -> dict[str, str]:
    """Write ``<prefix>descriptors.npy`` (as ``dtype``) and ``<prefix>image_paths.txt`` atomically.

    Returns:
        ``{"descriptors": file name, "image_paths": file name}``.

    Raises:
        ValueError: unknown dtype, counts that differ, or a path holding a line break.
    """
    if dtype not in DESCRIPTOR_DTYPES:
        raise ValueError(f"Descriptor dtype {dtype!r} is unknown; choose one of {sorted(DESCRIPTOR_DTYPES)}")
    if len(descriptors) != len(image_paths):
        raise ValueError(f"{len(descriptors)} descriptors for {len(image_paths)} image paths")
    lines = [str(Path(path).resolve()) for path in image_paths]
    broken = next((line for line in lines if "\n" in line or "\r" in line), None)
    if broken is not None:
        raise ValueError(f"Image path {broken!r} holds a line break; rename the file to save its descriptor")
    names = {"descriptors": f"{prefix}descriptors.npy", "image_paths": f"{prefix}image_paths.txt"}
    with atomic_write(Path(folder) / names["descriptors"], "wb") as file:
        np.save(file, np.ascontiguousarray(descriptors, dtype=DESCRIPTOR_DTYPES[dtype]))
    atomic_write_text(Path(folder) / names["image_paths"], "".join(line + "\n" for line in lines))
    return names


def load_descriptor_files(folder: str | Path, prefix: str = "") -> tuple[np.ndarray, list[Path]]:
    """The descriptors and image paths written by :func:`save_descriptor_files`.

    Raises:
        ValueError: the two files hold different counts.
    """
    folder = Path(folder)
    descriptors = np.load(folder / f"{prefix}descriptors.npy")
    paths = [Path(line) for line in (folder / f"{prefix}image_paths.txt").read_text(encoding="utf-8").splitlines()]
    if len(paths) != len(descriptors):
        raise ValueError(
            f"{folder}: {len(descriptors)} rows in {prefix}descriptors.npy but {len(paths)} lines in {prefix}image_paths.txt"
        )
    return descriptors, paths
