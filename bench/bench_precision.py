"""fp32 against bf16 autocast on the CPU, in one run: speed, descriptor agreement, retrieval Recall@K.

A random ViT-S/14 (no downloads) describes a generated VPR benchmark at 224x224 with GeM
descriptors (the class tokens of a random ViT are all alike), once in each precision, through the
Python API that the commands share. Prints images/s and the speed-up, the cosine between the fp32
and bf16 descriptor of each image, R@1/5/10 in both precisions and how many top-1 results change.

Usage: python bench/bench_precision.py [--places 50] [--queries-per-place 2] [--output-dir bench_output/precision]
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dinov2_vpr.data.images import list_images
from dinov2_vpr.data.positions import utm_positions
from dinov2_vpr.data.synthetic import make_retrieval_dataset
from dinov2_vpr.models.backbone import cpu_has_native_bf16
from dinov2_vpr.models.descriptor import PlaceDescriptor, load_place_model
from dinov2_vpr.retrieval.recall import evaluate_retrieval

CONFIG_FILE = Path(__file__).resolve().parents[1] / "dinov2/configs/eval/vits14_pretrain.yaml"
RECALL_VALUES = (1, 5, 10)


def load_model(precision: str) -> PlaceDescriptor:
    """The zero-shot GeM model of a random ViT-S/14 at 224x224 with the backbone in ``precision``."""
    return load_place_model(
        config_file=CONFIG_FILE,
        opts=["vpr.data.image_size=[224,224]", f"vpr.features.precision={precision}"],
        random_backbone=True,
        zero_shot="gem",
    )


def images_per_second(models: dict[str, PlaceDescriptor], batch: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median images/s of each model on ``batch``, the models taking turns so that both see the same load."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.describe(batch, batch_size=len(batch))  # warm-up
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.describe(batch, batch_size=len(batch))
            times[name].append(time.perf_counter() - start)
    return {name: len(batch) / float(np.median(elapsed)) for name, elapsed in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--places", type=int, default=50)
    parser.add_argument("--queries-per-place", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="Timed batches per precision (medians)")
    parser.add_argument("--output-dir", default="bench_output/precision")
    args = parser.parse_args()

    root = Path(args.output_dir)
    make_retrieval_dataset(
        root, num_places=args.places, queries_per_place=args.queries_per_place, image_size=(224, 224)
    )
    database, queries = list_images(root / "database"), list_images(root / "queries")
    models = {precision: load_model(precision) for precision in ("fp32", "bf16")}
    batch = torch.stack([models["fp32"].transform(Image.open(path)) for path in database[: args.batch_size]])
    speed = images_per_second(models, batch, args.rounds)
    results = {}
    for precision, model in models.items():
        descriptors = model.describe(database + queries, batch_size=args.batch_size).numpy()
        retrieval = evaluate_retrieval(
            descriptors[: len(database)],
            descriptors[len(database) :],
            utm_positions(database),
            utm_positions(queries),
            RECALL_VALUES,
        )
        results[precision] = {"descriptors": descriptors, "speed": speed[precision], "retrieval": retrieval}

    fp32, bf16 = results["fp32"], results["bf16"]
    cosines = (fp32["descriptors"] * bf16["descriptors"]).sum(axis=1)
    top1_changed = int((fp32["retrieval"].predictions[:, 0] != bf16["retrieval"].predictions[:, 0]).sum())
    print(
        f"ViT-S/14 (random) at 224x224, GeM descriptors, {len(database)} database images and {len(queries)} "
        f"queries, {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}"
    )
    print(f"  backbone + GeM on batches of {args.batch_size}, median of {args.rounds}, the precisions taking turns:")
    print(f"  fp32:          {fp32['speed']:6.1f} images/s")
    print(f"  bf16 autocast: {bf16['speed']:6.1f} images/s  ({bf16['speed'] / fp32['speed']:.2f}x fp32)")
    print(f"  cosine fp32 vs bf16 per image: min {cosines.min():.6f} (1 - cosine at most {1 - cosines.min():.1e})")
    for precision in ("fp32", "bf16"):
        recalls = results[precision]["retrieval"].recalls
        print(f"  {precision} " + "  ".join(f"R@{k} {recalls[k]:.3f}" for k in RECALL_VALUES))
    print(f"  top-1 results that change: {top1_changed} of {len(queries)}")


if __name__ == "__main__":
    main()
