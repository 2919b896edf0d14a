"""Epoch time with cached features against re-running the backbone every epoch (the original's way).

ViT-S/14 at 224x224 on the CPU, random weights, a generated pair dataset. Both epochs run the same
head, loss and optimizer steps; only where the head's inputs come from differs.

Usage: python bench/bench_cached_epochs.py [--pairs 64] [--batch-size 16]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from dinov2.hub.backbones import dinov2_vits14
from dinov2_vpr.config import build_vpr_config
from dinov2_vpr.data.image_table import index_pairs
from dinov2_vpr.data.pairs import find_pair_lists, read_pair_lists
from dinov2_vpr.data.synthetic import make_pair_dataset
from dinov2_vpr.data.transforms import ImageTransform, load_image
from dinov2_vpr.features.pooling import backbone_features
from dinov2_vpr.models import build_head
from dinov2_vpr.training.trainer import build_loss


def run_epoch(head, loss_fn, optimizer, index, inputs_of, batch_size: int) -> float:
    """One epoch over ``index``; ``inputs_of(rows)`` returns the head inputs of image rows. Returns seconds."""
    start = time.perf_counter()
    for first in range(0, len(index), batch_size):
        batch = index.subset(range(first, min(first + batch_size, len(index))))
        query, reference = head(inputs_of(batch.query)), head(inputs_of(batch.reference))
        loss = loss_fn((query * reference).sum(-1), batch.labels).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        data = make_pair_dataset(Path(folder), num_places=max(24, args.pairs // 2), seed=0)
        pairs, _ = read_pair_lists(find_pair_lists(data["train_dir"]), data["image_root"])
        paths, index = index_pairs(pairs[: args.pairs], data["image_root"])
        backbone = dinov2_vits14(pretrained=False).eval().requires_grad_(False)
        transform = ImageTransform((224, 224))
        cfg = build_vpr_config(None, ["vpr.head.dropout=0.0"])
        head, loss_fn = build_head(cfg, backbone.embed_dim), build_loss(cfg)
        optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)

        def encode(rows: torch.Tensor) -> torch.Tensor:
            images = torch.stack([load_image(paths[row], transform) for row in rows.tolist()])
            with torch.inference_mode():
                return backbone_features(backbone, images)["cls"].clone()

        start = time.perf_counter()
        table = torch.cat([encode(torch.arange(i, min(i + 32, len(paths)))) for i in range(0, len(paths), 32)])
        extraction = time.perf_counter() - start
        head.fit_input_statistics(table)  # as training does
        uncached = run_epoch(head, loss_fn, optimizer, index, encode, args.batch_size)
        cached = min(
            run_epoch(head, loss_fn, optimizer, index, lambda rows: table[rows], args.batch_size) for _ in range(5)
        )
    print(
        f"ViT-S/14 224x224, {len(index)} pairs ({len(paths)} distinct images), batch {args.batch_size}, {torch.get_num_threads()} threads"
    )
    print(f"  one-off feature extraction:        {extraction:8.2f} s")
    print(f"  epoch re-running the backbone:     {uncached:8.2f} s")
    print(f"  epoch on cached features:          {cached:8.4f} s")
    print(f"  speed-up of a cached epoch:        {uncached / cached:8.0f}x")


if __name__ == "__main__":
    main()
