"""Descriptors/s of each place model on a random ViT-S/14 at 224x224 on the CPU, in fp32 and bf16, in one run.

The models (zero-shot GeM, SALAD and BoQ at their released aggregator sizes) take turns on the same
batch, so that each ratio is measured under the same load. No downloads: the weights are random,
which does not change the speed.

Usage: python bench/bench_methods.py [--batch-size 16] [--rounds 3]
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from dinov2_vpr.models.backbone import cpu_has_native_bf16
from dinov2_vpr.models.descriptor import PlaceDescriptor, load_place_model

CONFIG_FILE = Path(__file__).resolve().parents[1] / "dinov2/configs/eval/vits14_pretrain.yaml"
MODELS = {"GeM (zero-shot)": {"zero_shot": "gem"}, "SALAD": {"method": "salad"}, "BoQ": {"method": "boq"}}
PRECISIONS = ("fp32", "bf16")


def load(choice: dict, precision: str) -> PlaceDescriptor:
    """A random ViT-S/14 place model at 224x224 with the backbone in ``precision``."""
    opts = ["vpr.data.image_size=[224,224]", f"vpr.features.precision={precision}"]
    return load_place_model(config_file=CONFIG_FILE, opts=opts, random_backbone=True, **choice)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="Timed batches per model and precision (medians)")
    args = parser.parse_args()
    torch.manual_seed(0)
    batch = torch.randn(args.batch_size, 3, 224, 224)
    models = {(name, precision): load(choice, precision) for name, choice in MODELS.items() for precision in PRECISIONS}
    times: dict[tuple[str, str], list[float]] = {key: [] for key in models}
    for model in models.values():
        model.describe(batch, batch_size=args.batch_size)  # warm-up
    for _ in range(args.rounds):
        for key, model in models.items():
            start = time.perf_counter()
            model.describe(batch, batch_size=args.batch_size)
            times[key].append(time.perf_counter() - start)
    speed = {key: args.batch_size / float(np.median(elapsed)) for key, elapsed in times.items()}
    print(
        f"Random ViT-S/14, 224x224, batch {args.batch_size}, median of {args.rounds}, "
        f"{torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}"
    )
    print(f"{'model':<16} {'dim':>6} {'fp32 /s':>8} {'bf16 /s':>8} {'bf16/fp32':>9} {'vs GeM fp32':>11}")
    for name in MODELS:
        fp32, bf16 = speed[(name, "fp32")], speed[(name, "bf16")]
        dim = models[(name, "fp32")].output_dim
        relative = fp32 / speed[("GeM (zero-shot)", "fp32")]
        print(f"{name:<16} {dim:>6} {fp32:>8.1f} {bf16:>8.1f} {bf16 / fp32:>8.2f}x {relative:>10.2f}x")


if __name__ == "__main__":
    main()
