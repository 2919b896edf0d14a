"""Command lines of tiny VPR runs (random ViT-S/14 on 56x56 generated images) for the distributed tests."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .conftest import TINY_MODEL_ARGS

IMAGE_SIZE = (56, 56)
# The default head (dropout 0.1 included): its dropout masks follow the sample's place in the global
# batch, so any number of ranks trains the same head.
TINY_OPTS = [
    f"vpr.data.image_size=[{IMAGE_SIZE[0]},{IMAGE_SIZE[1]}]",
    "vpr.data.num_workers=0",
    "vpr.features.precision=fp32",
]
BATCH_SIZE = 8
SAVED_EPOCH = re.compile(r"Saved checkpoint \S*epoch_(\d+)\.pth")
RESUMED_AT = re.compile(r"Resuming from \S*epoch_(\d+)\.pth at epoch (\d+)")


def training_options(data: dict, output_dir: Path, epochs: int, cache_dir: Path | None = None) -> list[str]:
    """Options of ``dinov2_vpr.run.train`` for the training lists of a ``make_pair_dataset`` dataset.

    With ``cache_dir`` the run reads (and adds to) that feature cache instead of its own.
    """
    return [
        *TINY_MODEL_ARGS,
        *(["--cache-dir", str(cache_dir)] if cache_dir else []),
        "--train-path",
        str(data["train_dir"]),
        "--image-root",
        str(data["image_root"]),
        "--output-dir",
        str(output_dir),
        "--batch-size",
        str(BATCH_SIZE),
        "--opts",
        *TINY_OPTS,
        f"vpr.train.epochs={epochs}",
    ]


def evaluation_options(data: dict, head: Path, output_dir: Path) -> list[str]:
    """Options of ``dinov2_vpr.run.eval`` for the test lists of a ``make_pair_dataset`` dataset."""
    return [
        *TINY_MODEL_ARGS,
        "--dataset-root",
        str(data["image_root"]),
        "--pair-lists",
        *map(str, data["test_lists"]),
        "--head",
        str(head),
        "--output-dir",
        str(output_dir),
        "--opts",
        *TINY_OPTS,
    ]


def load_heads(run_dir: Path, epochs: int) -> dict[str, dict[str, torch.Tensor]]:
    """The best head (``head.pth``) and the head after the last epoch of a training run."""
    return {
        "best": torch.load(run_dir / "head.pth", weights_only=True)["head"],
        "last": torch.load(run_dir / "checkpoints" / f"epoch_{epochs - 1:04d}.pth", weights_only=True)["head"],
    }


def assert_same_heads(actual: dict, expected: dict, atol: float, rtol: float) -> None:
    """Every tensor of both heads (best and last) agrees within ``atol + rtol * |expected|``.

    The relative part matters for the input standardisation, whose scale is the inverse of a
    feature's spread and can be large.
    """
    for which in ("best", "last"):
        assert actual[which].keys() == expected[which].keys()
        for key in expected[which]:
            torch.testing.assert_close(
                actual[which][key], expected[which][key], rtol=rtol, atol=atol, msg=f"{which} head, {key}"
            )
