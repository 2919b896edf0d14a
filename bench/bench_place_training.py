"""Place training (SALAD recipe, ViT-S/14 with 2 of 12 blocks trained, random weights) on the CPU.

Prints, from the training command's per-epoch figures on generated places:
1. the epoch time with the cached trunk against the whole backbone every epoch (augmentation off; the
   cache is filled before the first epoch, which is not counted);
2. the peak memory (max RSS) of cached training on 1x and 4x the images;
3. the images/s of online training (augmentation on, the whole backbone) in fp32 and bf16.

Usage: python bench/bench_place_training.py [--places 16] [--size 224] [--epochs 2]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from dinov2_vpr.data.synthetic import make_place_dataset, make_retrieval_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILE = REPO_ROOT / "dinov2" / "configs" / "eval" / "vits14_pretrain.yaml"


# Runs the training command in this fresh process, then writes the process's peak RSS (KiB) to the file argv[1].
RUN_AND_MEASURE = (
    "import resource, runpy, sys; from pathlib import Path; peak_file = sys.argv.pop(1); "
    "runpy.run_module('dinov2_vpr.run.train', run_name='__main__', alter_sys=True); "
    "Path(peak_file).write_text(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))"
)


def train(places: Path, val: Path, output: Path, size: int, epochs: int, *opts: str) -> tuple[list[dict], float]:
    """Run the training command in a fresh process; its per-epoch history and its peak RSS in MiB."""
    argv = [sys.executable, "-c", RUN_AND_MEASURE, str(output / "peak_rss_kib")]
    argv += ["--config-file", str(CONFIG_FILE), "--random-backbone", "--method", "salad"]
    argv += ["--places-root", str(places), "--val-folder", str(val), "--output-dir", str(output)]
    argv += ["--opts", f"vpr.data.image_size=[{size},{size}]", f"vpr.data.val_image_size=[{size},{size}]"]
    argv += ["vpr.model.trainable_blocks=2", "vpr.train.places_per_batch=8", f"vpr.train.epochs={epochs}", *opts]
    subprocess.run(argv, check=True, capture_output=True, cwd=REPO_ROOT)
    history = json.loads((output / "train_metrics.json").read_text())["history"]
    return history, int((output / "peak_rss_kib").read_text()) / 1024


def epoch_seconds(history: list[dict]) -> float:
    """The fastest epoch's training time (validation excluded)."""
    return min(record["train_seconds"] for record in history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--places", type=int, default=16, help="Places of 4 images (the 1x of the memory test)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        size = (args.size, args.size)
        make_retrieval_dataset(root / "val", num_places=10, queries_per_place=1, seed=1, image_size=size)
        for scale in (4, 1):
            make_place_dataset(root / f"places_{scale}x", num_places=scale * args.places, image_size=size)
        data = (root / "places_1x", root / "val")

        peaks = {}
        for scale in (1, 4):
            _, peaks[scale] = train(root / f"places_{scale}x", root / "val", root / f"mem_{scale}", args.size, 1)
        cached, _ = train(*data, root / "cached", args.size, args.epochs, "vpr.train.trunk_cache=true")
        online, _ = train(*data, root / "online", args.size, args.epochs, "vpr.train.trunk_cache=false")
        speed = {}
        for precision in ("fp32", "bf16"):
            opts = ("vpr.train.augment=true", f"vpr.features.precision={precision}")
            history, _ = train(*data, root / f"augment_{precision}", args.size, args.epochs, *opts)
            speed[precision] = max(record["images_per_s"] for record in history)

    images = 4 * args.places
    print(f"ViT-S/14, 2 of 12 blocks trained, {args.size}x{args.size}, {images} images, 8 places x 4 a batch")
    cached_s, online_s = epoch_seconds(cached), epoch_seconds(online)
    print(f"epoch: cached trunk {cached_s:.2f} s, whole backbone {online_s:.2f} s: {online_s / cached_s:.1f}x faster")
    print(
        f"peak memory of cached training: {peaks[1]:.0f} MiB at {images} images, {peaks[4]:.0f} MiB at "
        f"{4 * images}: {peaks[4] / peaks[1]:.2f}x"
    )
    print(
        f"online training (augmented): fp32 {speed['fp32']:.1f} images/s, bf16 {speed['bf16']:.1f} images/s "
        f"({speed['bf16'] / speed['fp32']:.2f}x)"
    )


if __name__ == "__main__":
    main()
