"""A real ``head.pth`` for tests: one epoch of training on a random ViT-S/14 with 56x56 generated images.

The head reads GeM-pooled patch tokens (``vpr.head.input=gem``): the class tokens of a random ViT
barely differ between images, so a head on them standardises its input by factors near 1e4 and
turns float rounding into descriptor differences of 1e-4; GeM features vary like real ones.
"""

from pathlib import Path

from dinov2_vpr.data.synthetic import make_pair_dataset
from dinov2_vpr.models.files import HEAD_FILE
from dinov2_vpr.run import train as train_command

from .conftest import TINY_MODEL_ARGS, TINY_MODEL_OPTS

HEAD_OPTS = [*TINY_MODEL_OPTS, "vpr.head.input=gem"]


def train_tiny_head(root: Path) -> Path:
    """Train under ``root`` (data, run, cache); returns the ``head.pth`` path. About 5 s on 2 CPU cores."""
    data = make_pair_dataset(root / "data", num_places=12, seed=0, image_size=(56, 56))
    argv = [
        *TINY_MODEL_ARGS,
        "--train-path",
        str(data["train_dir"]),
        "--image-root",
        str(data["image_root"]),
        "--output-dir",
        str(root / "train"),
        "--cache-dir",
        str(root / "cache"),
        "--opts",
        *HEAD_OPTS,
        "vpr.train.epochs=1",
    ]
    train_command.main(train_command.get_args_parser().parse_args(argv))
    return root / "train" / HEAD_FILE
