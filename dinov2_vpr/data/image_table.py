"""Pairs as rows of a table of distinct images, so that each image is encoded once."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dinov2_vpr.data.pairs import Pair

UNLABELLED = -1


@dataclass
class PairIndex:
    """Pairs as rows of an image table: query and reference row indices, labels (-1: unlabelled)."""

    query: Tensor
    reference: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: Sequence[int] | Tensor) -> "PairIndex":
        rows = torch.as_tensor(rows, dtype=torch.long)
        return PairIndex(self.query[rows], self.reference[rows], self.labels[rows])


def index_pairs(pairs: Sequence[Pair], image_root: str | Path) -> tuple[list[Path], PairIndex]:
    """The distinct images of ``pairs`` (under ``image_root``, in first-seen order) and the pairs as rows."""
    rows: dict[str, int] = {}
    for pair in pairs:
        rows.setdefault(pair.query, len(rows))
        rows.setdefault(pair.reference, len(rows))
    root = Path(image_root)
    index = PairIndex(
        torch.tensor([rows[pair.query] for pair in pairs], dtype=torch.long),
        torch.tensor([rows[pair.reference] for pair in pairs], dtype=torch.long),
        torch.tensor([UNLABELLED if pair.label is None else pair.label for pair in pairs], dtype=torch.float32),
    )
    return [root / relative for relative in rows], index
