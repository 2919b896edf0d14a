"""CPU throughput of ViT-S/14 at 224x224: fp32 against bf16 autocast, measured in one run.

Usage: python bench/bench_backbone.py [--batch-size 16] [--iterations 5]
"""

import argparse
import time

import torch

from dinov2.hub.backbones import dinov2_vits14


def images_per_second(model: torch.nn.Module, batch: torch.Tensor, iterations: int, dtype: torch.dtype | None) -> float:
    """Mean throughput over ``iterations`` forward passes after one warm-up pass."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        model(batch)
        start = time.perf_counter()
        for _ in range(iterations):
            model(batch)
        elapsed = time.perf_counter() - start
    return iterations * batch.shape[0] / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = dinov2_vits14(pretrained=False).eval()
    batch = torch.randn(args.batch_size, 3, 224, 224)
    fp32 = images_per_second(model, batch, args.iterations, None)
    bf16 = images_per_second(model, batch, args.iterations, torch.bfloat16)
    print(f"ViT-S/14 224x224, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"  fp32:            {fp32:7.1f} images/s")
    print(f"  bf16 autocast:   {bf16:7.1f} images/s  ({bf16 / fp32:.2f}x fp32)")


if __name__ == "__main__":
    main()
