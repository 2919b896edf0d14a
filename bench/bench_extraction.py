"""Feature-extraction throughput and peak memory: N images against 4N, to show memory does not grow.

Each size runs in a fresh process (peak RSS from the kernel's high-water mark). ViT-S/14 random,
224x224, generated images.

Usage: python bench/bench_extraction.py [--images 2000] [--small 500]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_images(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"{index:05d}.jpg"
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def measure(count: int) -> dict:
    """Extract ``count`` images into a fresh cache; returns seconds, images/s and peak RSS."""
    from dinov2.hub.backbones import dinov2_vits14
    from dinov2_vpr.data.transforms import ImageTransform
    from dinov2_vpr.features.cache import FeatureCache
    from dinov2_vpr.features.extract import extract_features
    from dinov2_vpr.features.pooling import pooled_encoder

    with tempfile.TemporaryDirectory() as folder:
        paths = make_images(Path(folder), count)
        backbone = dinov2_vits14(pretrained=False).eval().requires_grad_(False)
        transform = ImageTransform((224, 224))
        cache = FeatureCache(Path(folder) / "cache", {"bench": count})
        start = time.perf_counter()
        encode = pooled_encoder(backbone, torch.float)
        extract_features(
            encode, torch.device("cpu"), paths, cache, transform, batch_size=32, num_workers=1, chunk_size=256
        )
        seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images": count, "seconds": seconds, "images_per_s": count / seconds, "peak_rss_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    results = []
    for count in (args.small, args.images):
        output = subprocess.run(
            [sys.executable, __file__, "--child", str(count)], check=True, capture_output=True, text=True
        )
        results.append(json.loads(output.stdout.strip().splitlines()[-1]))
    print(f"ViT-S/14 224x224 random, batch 32, {torch.get_num_threads()} threads, 1 loader process")
    for result in results:
        print(
            f"  {result['images']:5d} images: {result['seconds']:7.1f} s, {result['images_per_s']:5.1f} images/s, peak RSS {result['peak_rss_mib']:6.0f} MiB"
        )
    small, large = results
    print(
        f"  {large['images'] / small['images']:.0f}x the images -> {large['peak_rss_mib'] / small['peak_rss_mib']:.2f}x the peak memory"
    )


if __name__ == "__main__":
    main()
