"""Benchmark sharded feature extraction: 2 CPU processes (torchrun, gloo, 1 thread each) against 1 process (2 threads).

About 200 generated 224x224 images go through a random ViT-S/14 into a fresh feature cache, once
per set-up. The extraction time is measured inside the workers between two barriers (backbone
built, cache opened); the wall time of each command, start-up included, is printed beside it.

Run: .venv/bin/python bench/bench_sharded_extraction.py [--num-images 200 --image-size 224]
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG_FILE = Path(__file__).resolve().parents[1] / "dinov2" / "configs" / "eval" / "vits14_pretrain.yaml"
IMAGES_PER_PLACE = 2.75  # what make_pair_dataset writes per place, about
TOTAL_THREADS = 2


def extract_worker(image_list: Path, image_size: int, cache_dir: Path, result_file: Path) -> None:
    """Extract the listed images into ``cache_dir`` (one rank of a torchrun job, or alone); rank 0 writes the time."""
    import logging

    import torch

    from dinov2 import distributed
    from dinov2_vpr.config import build_vpr_config
    from dinov2_vpr.data.transforms import image_transform
    from dinov2_vpr.features.cache import FeatureCache
    from dinov2_vpr.features.extract import extract_features
    from dinov2_vpr.features.pooling import pooled_encoder
    from dinov2_vpr.models.backbone import feature_settings, load_backbone

    logging.getLogger("dinov2").setLevel(logging.ERROR)  # the random-backbone warning, once per process
    distributed.enable()
    cfg = build_vpr_config(str(CONFIG_FILE), [f"vpr.data.image_size=[{image_size},{image_size}]"])
    backbone, autocast_dtype = load_backbone(cfg, None)
    transform = image_transform(cfg)
    cache = FeatureCache(cache_dir, feature_settings(cfg, None, transform, autocast_dtype))
    paths = image_list.read_text().split("\n")
    distributed.barrier()
    started = time.perf_counter()
    features = extract_features(
        pooled_encoder(backbone, autocast_dtype),
        next(backbone.parameters()).device,
        paths,
        cache,
        transform,
        batch_size=cfg.vpr.features.batch_size,
        num_workers=0,
        chunk_size=cfg.vpr.features.chunk_size,
    )
    distributed.barrier()
    seconds = time.perf_counter() - started
    if distributed.is_main_process():
        result = {
            "seconds": seconds,
            "images": len(features["cls"]),
            "processes": distributed.get_world_size(),
            "threads": torch.get_num_threads(),
        }
        result_file.write_text(json.dumps(result))
    distributed.disable()


def run_setup(command: list[str], threads: int, work_dir: Path, name: str, image_list: Path, image_size: int) -> dict:
    """Run one set-up in fresh processes with a fresh cache; its worker result plus the command's wall time."""
    result_file = work_dir / f"{name}.json"
    worker = [__file__, "--worker", "--image-list", str(image_list), "--image-size", str(image_size)]
    worker += ["--cache-dir", str(work_dir / f"cache_{name}"), "--result", str(result_file)]
    started = time.perf_counter()
    subprocess.run(
        [*command, *worker], check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, stdout=subprocess.DEVNULL
    )
    return {**json.loads(result_file.read_text()), "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--repeats", type=int, default=3, help="Runs of each set-up (alternating); medians are compared"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--image-list", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        extract_worker(args.image_list, args.image_size, args.cache_dir, args.result)
        return

    from dinov2_vpr.data.synthetic import make_pair_dataset

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={TOTAL_THREADS}"]
    setups = {"1 process": ([sys.executable], TOTAL_THREADS), "2 processes": (torchrun, 1)}
    runs: dict[str, list[dict]] = {name: [] for name in setups}
    with tempfile.TemporaryDirectory(prefix="bench_sharded_") as folder:
        work_dir = Path(folder)
        data = make_pair_dataset(
            work_dir / "data",
            num_places=max(12, math.ceil(args.num_images / IMAGES_PER_PLACE)),
            image_size=(args.image_size, args.image_size),
        )
        images = sorted(str(path) for path in data["image_root"].rglob("*.jpg"))[: args.num_images]
        image_list = work_dir / "images.txt"
        image_list.write_text("\n".join(images))
        for repeat in range(args.repeats):
            for name in sorted(setups, reverse=repeat % 2 == 1):
                command, threads = setups[name]
                tag = f"{name.replace(' ', '_')}_{repeat}"
                runs[name].append(run_setup(command, threads, work_dir, tag, image_list, args.image_size))

    print(f"{len(images)} images of {args.image_size}x{args.image_size}, random ViT-S/14, {os.cpu_count()} CPUs")
    medians = {}
    for name, results in runs.items():
        medians[name] = {key: statistics.median(result[key] for result in results) for key in ("seconds", "wall_s")}
        first = results[0]
        times = ", ".join(f"{result['seconds']:.2f}" for result in results)
        print(
            f"{name}: {first['processes']} x {first['threads']} thread(s): extraction {times} s, "
            f"median {medians[name]['seconds']:.2f} s ({len(images) / medians[name]['seconds']:.1f} images/s); "
            f"command wall time median {medians[name]['wall_s']:.2f} s"
        )
    single, sharded = medians["1 process"], medians["2 processes"]
    print(
        f"speed-up of sharded extraction (medians): {single['seconds'] / sharded['seconds']:.2f}x "
        f"(wall time, start-up included: {single['wall_s'] / sharded['wall_s']:.2f}x)"
    )


if __name__ == "__main__":
    main()
