"""The demo: a synthetic place dataset, a head trained on a random ViT-S/14, evaluation; no downloads.

``python -m dinov2_vpr.run.demo [--output-dir demo_output]`` takes about two minutes on 2 CPU cores.
With a random backbone the numbers only show that the pipeline works; with real weights pass
``--pretrained-weights dinov2_vits14_pretrain.pth`` (see the README).

``--trainable-blocks N`` fine-tunes the backbone's last N blocks with the head (on the trunk-token
cache) and evaluates that model with ``--model``.

``--method salad|boq`` fine-tunes that place model instead (its recipe, on small images and a small
aggregator) on generated GSV-style places and prints Recall@1/5/10 on a generated benchmark before
and after training.
"""

import argparse
import logging
from pathlib import Path

import numpy as np

from dinov2_vpr.data.synthetic import make_pair_dataset, make_place_dataset, make_retrieval_dataset
from dinov2_vpr.models.build import METHOD_AGGREGATORS
from dinov2_vpr.run import eval as eval_command
from dinov2_vpr.run import train as train_command

logger = logging.getLogger("dinov2")

CONFIG_FILE = Path(__file__).resolve().parents[2] / "dinov2" / "configs" / "eval" / "vits14_pretrain.yaml"
# --method: a small setting of the recipe that trains in minutes on 2 CPU cores.
PLACE_IMAGE_SIZE = 70
PLACE_OPTS = [
    f"vpr.data.image_size=[{PLACE_IMAGE_SIZE},{PLACE_IMAGE_SIZE}]",
    f"vpr.data.val_image_size=[{PLACE_IMAGE_SIZE},{PLACE_IMAGE_SIZE}]",
    "vpr.data.num_workers=0",
    "vpr.train.places_per_batch=10",
    "vpr.train.lr=0.0005",
    "vpr.train.warmup_steps=0",
    "vpr.train.linear_steps=0",
    "vpr.train.milestones=[]",
    "vpr.model.aggregator.salad.num_clusters=16",
    "vpr.model.aggregator.salad.cluster_dim=32",
    "vpr.model.aggregator.boq.proj_channels=128",
    "vpr.model.aggregator.boq.num_queries=16",
]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="DINOv2-VPR demo on generated data")
    parser.add_argument("--output-dir", default="demo_output", help="Where the data, the run and the evaluation go")
    parser.add_argument(
        "--num-places", type=int, help="Places in the generated dataset (default 120; with --method 96)"
    )
    parser.add_argument("--epochs", type=int, help="Training epochs (default 30; with --method 6)")
    parser.add_argument("--pretrained-weights", help="A real ViT-S/14 checkpoint instead of the random backbone")
    parser.add_argument(
        "--trainable-blocks",
        type=int,
        help="The backbone's last N blocks train (vpr.model.trainable_blocks): on pair lists with the head "
        "(default 0: the head alone), with --method with the aggregator (default 2)",
    )
    parser.add_argument(
        "--method",
        choices=sorted(METHOD_AGGREGATORS),
        help="Fine-tune this place model on generated places instead of training a head on pair lists",
    )
    return parser


def place_demo(args: argparse.Namespace) -> dict:
    """Generate places and a benchmark, fine-tune ``args.method``'s model; returns the training metrics."""
    output = Path(args.output_dir).resolve()
    size = (PLACE_IMAGE_SIZE, PLACE_IMAGE_SIZE)
    places = make_place_dataset(output / "data" / "places", num_places=args.num_places or 96, image_size=size, seed=0)
    val = make_retrieval_dataset(output / "data" / "val", num_places=30, queries_per_place=2, image_size=size, seed=1)
    print(
        f"Generated {places['num_images']} training images of {places['num_places']} places and a benchmark "
        f"of {val['num_database']} database images and {val['num_queries']} queries under {output / 'data'}"
    )
    backbone = ["--pretrained-weights", args.pretrained_weights] if args.pretrained_weights else ["--random-backbone"]
    argv = ["--config-file", str(CONFIG_FILE), *backbone, "--method", args.method]
    argv += ["--places-root", str(places["root"]), "--val-folder", str(output / "data" / "val")]
    argv += ["--output-dir", str(output / f"train_{args.method}"), "--opts", *PLACE_OPTS]
    argv += [
        f"vpr.train.epochs={args.epochs or 6}",
        f"vpr.model.trainable_blocks={2 if args.trainable_blocks is None else args.trainable_blocks}",
    ]
    metrics = train_command.main(train_command.get_args_parser().parse_args(argv))
    trained = {name.removeprefix("val_"): value for name, value in metrics.items() if name.startswith("val_R@")}
    print(f"\n{args.method} on the generated benchmark (Recall@K, %):")
    print("model       " + "  ".join(f"{name:>6}" for name in trained))
    for label, recalls in (("zero-shot", metrics["zero_shot"]), ("fine-tuned", trained)):
        print(f"{label:<10}  " + "  ".join(f"{100 * recalls[name]:6.1f}" for name in trained))
    print(
        f"R@1 {100 * (trained['R@1'] - metrics['zero_shot']['R@1']):+.1f} points with fine-tuning "
        f"(best epoch {metrics['best_epoch'] + 1}); the model is {output / f'train_{args.method}' / 'model.pth'}"
    )
    return metrics


def main(args: argparse.Namespace) -> dict:
    """Generate, train, evaluate; returns the evaluation results (with ``--method``: the training metrics)."""
    if args.method:
        return place_demo(args)
    output = Path(args.output_dir).resolve()
    data = make_pair_dataset(output / "data", num_places=args.num_places or 120, seed=0)
    print(f"Generated {data['num_images']} images and pair lists under {output / 'data'}")
    backbone = ["--pretrained-weights", args.pretrained_weights] if args.pretrained_weights else ["--random-backbone"]
    common = ["--config-file", str(CONFIG_FILE), *backbone, "--cache-dir", str(output / "feature_cache")]
    train_args = train_command.get_args_parser().parse_args(
        [
            *common,
            "--train-path",
            str(data["train_dir"]),
            "--image-root",
            str(data["image_root"]),
            "--split",
            "--output-dir",
            str(output / "train"),
            "--batch-size",
            "32",
            "--opts",
            f"vpr.train.epochs={args.epochs or 30}",
            f"vpr.model.trainable_blocks={args.trainable_blocks or 0}",
        ]
    )
    train_command.main(train_args)
    trained_model = ["--model", str(output / "train")] if args.trainable_blocks else ["--head", str(output / "train")]
    described = f"the last {args.trainable_blocks} blocks and the head" if args.trainable_blocks else "the trained head"
    lists = ["--pair-lists", *map(str, data["test_lists"]), str(data["final_list"])]
    evaluate = ["--dataset-root", str(data["image_root"]), *lists]
    print(f"\nWith {described}:")
    results = eval_command.main(
        eval_command.get_args_parser().parse_args(
            [*common, *evaluate, *trained_model, "--output-dir", str(output / "eval")]
        )
    )
    print("\nZero-shot baseline (raw class-token cosine; its threshold only sets the answers):")
    baseline = eval_command.main(
        eval_command.get_args_parser().parse_args(
            [*common, *evaluate, "--threshold", "0.5", "--output-dir", str(output / "eval_zero_shot")]
        )
    )
    for trained, zero_shot in zip(results["lists"], baseline["lists"]):
        if trained["labelled"]:
            print(
                f"{trained['name']}: average precision {zero_shot['average_precision']:.3f} zero-shot "
                f"-> {trained['average_precision']:.3f} with {described}"
            )
    answers = np.loadtxt(output / "eval" / f"{data['final_list'].stem}_result.txt", dtype=int)
    truth = np.loadtxt(data["final_labels"], dtype=int)
    print(
        f"\nFinal list answered in {output / 'eval' / (data['final_list'].stem + '_result.txt')}: "
        f"accuracy {np.mean(answers == truth):.3f} against the hidden labels"
    )
    print(
        f"Everything is under {output}: train/ ({'model' if args.trainable_blocks else 'head'}.pth, checkpoints, "
        "tensorboard), eval/ and eval_zero_shot/ "
        "(answers, scores, metrics, curves)"
    )
    if not args.pretrained_weights:
        print(
            "The backbone was random: these numbers only show that the pipeline runs. Use real weights for real results."
        )
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
